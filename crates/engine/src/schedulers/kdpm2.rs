//! diffusers' `KDPM2DiscreteScheduler` (DPM-Solver-2 in Karras et al.'s sigma formulation,
//! from k-diffusion): each step from sigma_i to sigma_{i+1} evaluates the model at sigma_i and
//! at the geometric midpoint of the two. Like Heun, diffusers lays this out as a doubled
//! schedule (`order` = 2): `[t_0, t_mid_1, t_1, t_mid_2, t_2, ...]`, the midpoints' timesteps
//! mapped back from their sigmas; img2img starts at `t_start * 2`.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::euler::{add_sigma_noise, init_noise_sigma, predict_original, scale_by_sigma};
use super::heun::karras_family_schedule;
use super::schedule::{alphas_cumprod, check_steps};
use super::sigmas::{geometric_midpoints, sigma_to_t_f32, train_sigmas};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::Result;
use crate::noise::NoiseSource;

/// KDPM2's doubled schedule.
struct MidpointSchedule {
    timesteps: Vec<f64>,
    /// `[s_0, s_1, s_1, ..., s_{n-1}, s_{n-1}, 0, 0, 0]` (diffusers' `sigmas`).
    sigmas: Vec<f32>,
    /// The midpoints, laid out the same way (diffusers' `sigmas_interpol`).
    sigmas_interpol: Vec<f32>,
}

/// `[x0, x1, x1, ..., xn, xn, xn]`: `x[:1]`, every later element twice, then the last again.
pub(super) fn layout(values: &[f32]) -> Vec<f32> {
    let mut out = vec![values[0]];
    for &v in &values[1..] {
        out.extend([v, v]);
    }
    out.push(values[values.len() - 1]);
    out
}

fn midpoint_schedule(config: &SchedulerConfig, kind: SchedulerKind, n: usize) -> MidpointSchedule {
    let (mut timesteps, sigmas) = karras_family_schedule(config, kind, n);
    // Karras timesteps are rounded here (not for Heun); mapped-back timesteps stay float64,
    // the spacing's are float32 (and exact in float64).
    if config.use_karras_sigmas {
        for t in &mut timesteps {
            *t = t.round_ties_even();
        }
    }
    let mut base: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
    base.push(0.0);
    let midpoints = geometric_midpoints(&base);
    let log_sigmas: Vec<f32> = train_sigmas(&alphas_cumprod(config, kind))
        .iter()
        .map(|s| s.ln())
        .collect();
    let mut all = vec![timesteps[0]];
    for k in 1..timesteps.len() {
        all.push(sigma_to_t_f32(midpoints[k], &log_sigmas) as f64);
        all.push(timesteps[k]);
    }
    MidpointSchedule {
        timesteps: all,
        sigmas: layout(&base),
        sigmas_interpol: layout(&midpoints),
    }
}

pub struct KDpm2Discrete {
    schedule: MidpointSchedule,
    prediction_type: PredictionType,
    init_noise_sigma: f32,
    /// The sample of the first half, until the midpoint evaluation.
    first_sample: Option<Tensor>,
}

impl KDpm2Discrete {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let schedule = midpoint_schedule(config, SchedulerKind::KDpm2Discrete, num_inference_steps);
        Ok(KDpm2Discrete {
            init_noise_sigma: init_noise_sigma(&schedule.sigmas, config.timestep_spacing),
            schedule,
            prediction_type: config.prediction_type,
            first_sample: None,
        })
    }

    /// diffusers' `sigmas` (with the doubling).
    pub fn sigmas(&self) -> &[f32] {
        &self.schedule.sigmas
    }
}

impl Scheduler for KDpm2Discrete {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.schedule.timesteps.len())?;
        let sigma = if self.first_sample.is_none() {
            self.schedule.sigmas[index]
        } else {
            self.schedule.sigmas_interpol[index]
        };
        scale_by_sigma(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(index, self.schedule.timesteps.len())?;
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let s = &self.schedule;
        match self.first_sample.take() {
            None => {
                let (sigma, mid) = (s.sigmas[index], s.sigmas_interpol[index + 1]);
                let original =
                    predict_original(self.prediction_type, &model_output, &sample, sigma)?;
                let derivative = div(&(&sample - original)?, sigma)?;
                let prev = (&sample + mul(&derivative, mid - sigma)?)?;
                self.first_sample = Some(sample);
                Ok(prev)
            }
            Some(first) => {
                let (sigma, mid, next) = (
                    s.sigmas[index - 1],
                    s.sigmas_interpol[index],
                    s.sigmas[index],
                );
                let original = predict_original(self.prediction_type, &model_output, &sample, mid)?;
                let derivative = div(&(&sample - original)?, mid)?;
                Ok((first + mul(&derivative, next - sigma)?)?)
            }
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.schedule.timesteps.len())?;
        add_sigma_noise(original, noise, self.schedule.sigmas[index])
    }
}
