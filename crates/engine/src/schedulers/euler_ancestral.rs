//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step down to `sigma_down`, then fresh
//! noise of size `sigma_up` added back, so that each step lands on the next sigma with some of
//! its noise new. It draws one noise tensor per step, the last step included.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::euler::{
    add_sigma_noise, euler_move, init_noise_sigma, predict_original, scale_by_sigma,
};
use super::schedule::{alphas_cumprod, check_steps, float_timesteps};
use super::sigmas::{interp, train_sigmas};
use super::{check_index, f32_tensor, mul, Scheduler};
use crate::error::Result;
use crate::noise::NoiseSource;

pub struct EulerAncestralDiscrete {
    timesteps: Vec<f64>,
    /// One more than the timesteps, ending on 0.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f32,
}

impl EulerAncestralDiscrete {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let train = train_sigmas(&alphas_cumprod(
            config,
            SchedulerKind::EulerAncestralDiscrete,
        ));
        let timesteps = float_timesteps(config, num_inference_steps);
        let sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| interp(t as f64, &train) as f32)
            .chain(std::iter::once(0.0))
            .collect();
        Ok(EulerAncestralDiscrete {
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            prediction_type: config.prediction_type,
        })
    }

    /// The noise level at each timestep, followed by 0 (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

/// Splits the move from `from` to `to` into a deterministic part down to `sigma_down` and
/// fresh noise `sigma_up`, with sigma_down^2 + sigma_up^2 = to^2 (float32, diffusers' order).
fn ancestral_sigmas(from: f32, to: f32) -> (f32, f32) {
    let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
    let down = (to * to - up * up).sqrt();
    (down, up)
}

impl Scheduler for EulerAncestralDiscrete {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
        let denoised = predict_original(self.prediction_type, &model_output, &sample, sigma)?;
        let (sigma_down, sigma_up) = ancestral_sigmas(sigma, next);
        let moved = euler_move(&sample, &denoised, sigma, sigma_down - sigma)?;
        let fresh = noise
            .randn(model_output.dims(), "scheduler_step")?
            .to_device(sample.device())?;
        Ok((moved + mul(&f32_tensor(&fresh)?, sigma_up)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        add_sigma_noise(original, noise, self.sigmas[index])
    }
}
