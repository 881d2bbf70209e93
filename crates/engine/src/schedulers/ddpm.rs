//! diffusers' `DDPMScheduler` (Ho et al. 2020): ancestral sampling from the posterior
//! q(x_{t-1} | x_t, x_0) between the inference timesteps, drawing one noise tensor per step
//! except at timestep 0.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind, VarianceType};
use super::schedule::{alphas_cumprod, check_steps, integer_timesteps};
use super::{check_index, div, f32_tensor, mul, threshold, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct Ddpm {
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    prediction_type: PredictionType,
    variance_type: VarianceType,
    clip_sample_range: Option<f32>,
    thresholding: Option<(f64, f64)>,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let timesteps = integer_timesteps(config, num_inference_steps);
        Ok(Ddpm {
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            alphas_cumprod: alphas_cumprod(config, SchedulerKind::Ddpm),
            prediction_type: config.prediction_type,
            variance_type: config.variance_type.unwrap_or(VarianceType::FixedSmall),
            clip_sample_range: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            thresholding: config.threshold_options(),
        })
    }

    /// `alphas_cumprod[t]` with Python's indexing (trailing spacing can end on -1).
    fn alpha_at(&self, t: i64) -> Result<f32> {
        let len = self.alphas_cumprod.len() as i64;
        let i = if t < 0 { t + len } else { t };
        if !(0..len).contains(&i) {
            return Err(Error::InvalidInput(format!(
                "timestep {t} is outside the scheduler's {len} training timesteps"
            )));
        }
        Ok(self.alphas_cumprod[i as usize])
    }
}

impl Scheduler for Ddpm {
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
        // The next timestep of the schedule, -1 after the last.
        let prev_t = self.timesteps.get(index + 1).copied().unwrap_or(-1);
        let alpha_t = self.alpha_at(t)?;
        let alpha_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)?
        } else {
            1.0
        };
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let current_alpha = alpha_t / alpha_prev;
        let current_beta = 1.0 - current_alpha;

        let original = match self.prediction_type {
            PredictionType::Epsilon => div(
                &(&sample - mul(&model_output, beta_t.sqrt())?)?,
                alpha_t.sqrt(),
            )?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                (mul(&sample, alpha_t.sqrt())? - mul(&model_output, beta_t.sqrt())?)?
            }
        };
        let original = match (self.thresholding, self.clip_sample_range) {
            (Some((ratio, max)), _) => threshold(&original, ratio, max)?,
            (None, Some(range)) => original.clamp(-range, range)?,
            (None, None) => original,
        };
        let original_coeff = alpha_prev.sqrt() * current_beta / beta_t;
        let current_coeff = current_alpha.sqrt() * beta_prev / beta_t;
        let prev = (mul(&original, original_coeff)? + mul(&sample, current_coeff)?)?;
        if t <= 0 {
            return Ok(prev);
        }
        let fresh = noise.randn(model_output.dims(), "scheduler_step")?;
        let fresh = f32_tensor(&fresh.to_device(sample.device())?)?;
        // `_get_variance`: the posterior variance, clamped away from 0.
        let variance = ((1.0 - alpha_prev) / (1.0 - alpha_t) * current_beta).max(1e-20);
        let scale = match self.variance_type {
            VarianceType::FixedSmall => variance.sqrt(),
            VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
            VarianceType::FixedLarge => current_beta.sqrt(),
            other => {
                return Err(Error::Model(format!(
                    "DDPMScheduler: variance_type = '{}' is not supported",
                    other.as_str()
                )))
            }
        };
        Ok((prev + mul(&fresh, scale)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let alpha = self.alpha_at(self.timesteps[index])?;
        let signal = mul(&f32_tensor(original)?, alpha.sqrt())?;
        Ok((signal + mul(&f32_tensor(noise)?, (1.0 - alpha).sqrt())?)?)
    }
}
