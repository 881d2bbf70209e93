//! diffusers' `KDPM2AncestralDiscreteScheduler`: KDPM2's two evaluations per step, aimed at the
//! ancestral target sigma_down below the next sigma, with fresh noise of size sigma_up added
//! after the second (one noise tensor per full step). Doubled schedule as KDPM2 (`order` = 2).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::euler::{add_sigma_noise, init_noise_sigma, predict_original, scale_by_sigma};
use super::heun::karras_family_schedule;
use super::kdpm2::layout;
use super::schedule::{alphas_cumprod, check_steps};
use super::sigmas::{sigma_to_t_f32, train_sigmas};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::Result;
use crate::noise::NoiseSource;

pub struct KDpm2AncestralDiscrete {
    timesteps: Vec<f64>,
    /// Each laid out `[x_0, x_1, x_1, ..., x_n, x_n, x_n]` as diffusers does.
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f32,
    /// The sample of the first half, until the midpoint evaluation.
    first_sample: Option<Tensor>,
}

impl KDpm2AncestralDiscrete {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let kind = SchedulerKind::KDpm2AncestralDiscrete;
        let (mut timesteps, sigmas) = karras_family_schedule(config, kind, num_inference_steps);
        if config.use_karras_sigmas {
            for t in &mut timesteps {
                *t = t.round_ties_even();
            }
        }
        let mut s: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        s.push(0.0);
        let n = s.len();
        // Float32 tensor arithmetic in diffusers' order; up is NaN at the final 0 (unused).
        let next: Vec<f32> = (0..n)
            .map(|k| if k + 1 < n { s[k + 1] } else { 0.0 })
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|k| {
                let (a, b) = (s[k] * s[k], next[k] * next[k]);
                (b * (a - b) / a).sqrt()
            })
            .collect();
        let mut down: Vec<f32> = (0..n)
            .map(|k| (next[k] * next[k] - up[k] * up[k]).sqrt())
            .collect();
        down[n - 1] = 0.0;
        let mut interpol: Vec<f32> = (0..n)
            .map(|k| {
                let (start, end) = (s[k].ln(), down[k].ln());
                // torch's lerp for weight >= 0.5: end - (end - start) * (1 - weight).
                (end - (end - start) * 0.5).exp()
            })
            .collect();
        interpol[n - 2] = 0.0;
        interpol[n - 1] = 0.0;
        let log_sigmas: Vec<f32> = train_sigmas(&alphas_cumprod(config, kind))
            .iter()
            .map(|s| s.ln())
            .collect();
        // [t_0, t_mid_0, t_1, t_mid_1, t_2, ...]
        let mut all = vec![timesteps[0]];
        for k in 1..timesteps.len() {
            all.push(sigma_to_t_f32(interpol[k - 1], &log_sigmas) as f64);
            all.push(timesteps[k]);
        }
        let sigmas = layout(&s);
        Ok(KDpm2AncestralDiscrete {
            timesteps: all,
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            sigmas_interpol: layout(&interpol),
            sigmas_up: layout(&up),
            sigmas_down: layout(&down),
            prediction_type: config.prediction_type,
            first_sample: None,
        })
    }

    /// diffusers' `sigmas` (with the doubling).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for KDpm2AncestralDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let sigma = match (&self.first_sample, index) {
            (None, _) | (Some(_), 0) => self.sigmas[index],
            (Some(_), _) => self.sigmas_interpol[index - 1],
        };
        scale_by_sigma(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        match self.first_sample.take() {
            Some(first) if index > 0 => {
                let k = index - 1;
                let (sigma, mid) = (self.sigmas[k], self.sigmas_interpol[k]);
                let (up, down) = (self.sigmas_up[k], self.sigmas_down[k]);
                let original = predict_original(self.prediction_type, &model_output, &sample, mid)?;
                let derivative = div(&(&sample - original)?, mid)?;
                let prev = (first + mul(&derivative, down - sigma)?)?;
                let fresh = noise.randn(model_output.dims(), "scheduler_step")?;
                let fresh = f32_tensor(&fresh.to_device(sample.device())?)?;
                Ok((prev + mul(&fresh, up)?)?)
            }
            _ => {
                let (sigma, mid) = (self.sigmas[index], self.sigmas_interpol[index]);
                let original =
                    predict_original(self.prediction_type, &model_output, &sample, sigma)?;
                let derivative = div(&(&sample - original)?, sigma)?;
                let prev = (&sample + mul(&derivative, mid - sigma)?)?;
                self.first_sample = Some(sample);
                Ok(prev)
            }
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        add_sigma_noise(original, noise, self.sigmas[index])
    }
}
