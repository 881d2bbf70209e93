//! diffusers' `LMSDiscreteScheduler`: a linear multistep method in sigma (k-diffusion's
//! `sample_lms`), combining up to four past derivatives with the integrals of their Lagrange
//! basis polynomials over the step. The derivatives live in the scheduler.
//!
//! diffusers integrates each basis polynomial numerically (`scipy.integrate.quad`, with the
//! integrand evaluated in float32 because the sigmas are float32 tensors); the polynomial has
//! degree at most 3, so a 3-point Gauss-Legendre rule integrates it exactly here. The two
//! agree to about float32 precision of the integrand (~1e-7 relative).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::euler::{add_sigma_noise, init_noise_sigma, predict_original, scale_by_sigma};
use super::heun::karras_family_schedule;
use super::schedule::check_steps;
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::Result;
use crate::noise::NoiseSource;

/// The order diffusers' `step` uses by default (the pipelines pass none).
const ORDER: usize = 4;

pub struct LmsDiscrete {
    timesteps: Vec<f64>,
    /// One more than the timesteps, ending on 0.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f32,
    /// The last (up to) four derivatives, oldest first.
    derivatives: Vec<Tensor>,
}

impl LmsDiscrete {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        // LMS's Karras conversion, unlike the others', never reads sigma_min / sigma_max.
        let mut own = config.clone();
        if config.use_karras_sigmas {
            own.sigma_min = None;
            own.sigma_max = None;
        }
        let (timesteps, sigmas) =
            karras_family_schedule(&own, SchedulerKind::LmsDiscrete, num_inference_steps);
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        Ok(LmsDiscrete {
            // float32, as diffusers stores them.
            timesteps: timesteps.into_iter().map(|t| t as f32 as f64).collect(),
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            prediction_type: config.prediction_type,
            derivatives: Vec::new(),
        })
    }

    /// The noise level at each timestep, followed by 0 (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `get_lms_coefficient`: the integral over [sigma_t, sigma_{t+1}] of the Lagrange basis
    /// polynomial that is 1 at sigma_{t - current} and 0 at the other sigma_{t - k}, k < order.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = |i: usize| self.sigmas[i] as f64;
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(t - k)) / (s(t - current) - s(t - k)))
                .product::<f64>()
        };
        let (a, b) = (s(t), s(t + 1));
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let node = (0.6f64).sqrt();
        half * (5.0 * basis(mid - half * node) + 8.0 * basis(mid) + 5.0 * basis(mid + half * node))
            / 9.0
    }
}

impl Scheduler for LmsDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        scale_by_sigma(sample, self.sigmas[index])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let sigma = self.sigmas[index];
        let original = predict_original(self.prediction_type, &model_output, &sample, sigma)?;
        self.derivatives.push(div(&(&sample - original)?, sigma)?);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        // The order counts from index 0 even when img2img starts later (diffusers' quirk):
        // the coefficients then assume earlier sigmas, and only as many terms as there are
        // derivatives are summed.
        let order = (index + 1).min(ORDER);
        let mut prev = sample;
        let mut sum: Option<Tensor> = None;
        for (current, derivative) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = mul(derivative, self.coefficient(order, index, current) as f32)?;
            sum = Some(match sum {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        if let Some(sum) = sum {
            prev = (prev + sum)?;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        add_sigma_noise(original, noise, self.sigmas[index])
    }
}
