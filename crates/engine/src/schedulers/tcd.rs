//! diffusers' `TCDScheduler` (trajectory consistency distillation, Zheng et al. 2024): LCM's
//! timesteps, with each step landing on an intermediate timestep s = floor((1 - eta) * t_prev)
//! and, for eta > 0, noised forward from there to the next timestep (one noise tensor per step,
//! none on the last).
//!
//! `eta` ("gamma") is an argument of diffusers' `step`, not a config key. The img2img and
//! instruct-pix2pix pipelines pass their own `eta`, whose default is 0, so that is what
//! [`Tcd::new`] uses; [`Tcd::with_eta`] sets another.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::lcm::{alpha_at, distilled_timesteps};
use super::schedule::{alphas_cumprod, check_steps};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct Tcd {
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    eta: f64,
}

impl Tcd {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let timesteps = distilled_timesteps(config, num_inference_steps)?;
        let alphas_cumprod = alphas_cumprod(config, SchedulerKind::Tcd);
        Ok(Tcd {
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            prediction_type: config.prediction_type,
            eta: 0.0,
        })
    }

    /// The same scheduler stepping with `eta` in 0..=1 (diffusers' `step(..., eta=...)`).
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::InvalidInput(format!(
                "TCDScheduler: eta must be between 0 and 1, got {eta}"
            )));
        }
        self.eta = eta;
        Ok(self)
    }
}

impl Scheduler for Tcd {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps_f64
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        f32_tensor(sample)
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
        let t = self.timesteps[index];
        let last = index + 1 == self.timesteps.len();
        let prev_t = if last { 0 } else { self.timesteps[index + 1] };
        // (1 - eta) * prev_t is a float32 tensor in diffusers, floored to an integer.
        let s = ((1.0 - self.eta) as f32 * prev_t as f32).floor() as i64;
        let alpha_t = alpha_at(&self.alphas_cumprod, t)?;
        let beta_t = 1.0 - alpha_t;
        let alpha_prev = if prev_t >= 0 {
            alpha_at(&self.alphas_cumprod, prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let alpha_s = alpha_at(&self.alphas_cumprod, s)?;
        let beta_s = 1.0 - alpha_s;
        let (original, epsilon) = match self.prediction_type {
            PredictionType::Epsilon => {
                let original = div(
                    &(&sample - mul(&model_output, beta_t.sqrt())?)?,
                    alpha_t.sqrt(),
                )?;
                (original, model_output.clone())
            }
            PredictionType::Sample => {
                let epsilon = div(
                    &(&sample - mul(&model_output, alpha_t.sqrt())?)?,
                    beta_t.sqrt(),
                )?;
                (model_output.clone(), epsilon)
            }
            PredictionType::VPrediction => {
                let original =
                    (mul(&sample, alpha_t.sqrt())? - mul(&model_output, beta_t.sqrt())?)?;
                let epsilon = (mul(&model_output, alpha_t.sqrt())? + mul(&sample, beta_t.sqrt())?)?;
                (original, epsilon)
            }
        };
        let noised = (mul(&original, alpha_s.sqrt())? + mul(&epsilon, beta_s.sqrt())?)?;
        if self.eta <= 0.0 || last {
            return Ok(noised);
        }
        let fresh = noise.randn(model_output.dims(), "scheduler_step")?;
        let fresh = f32_tensor(&fresh.to_device(sample.device())?)?;
        let ratio = alpha_prev / alpha_s;
        Ok((mul(&noised, ratio.sqrt())? + mul(&fresh, (1.0 - ratio).sqrt())?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let alpha = alpha_at(&self.alphas_cumprod, self.timesteps[index])?;
        let signal = mul(&f32_tensor(original)?, alpha.sqrt())?;
        Ok((signal + mul(&f32_tensor(noise)?, (1.0 - alpha).sqrt())?)?)
    }
}
