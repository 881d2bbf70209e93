//! diffusers' `LCMScheduler` (latent consistency models, Luo et al. 2023): each step maps the
//! sample to the consistency function's clean estimate, then noises it afresh to the next
//! timestep (one noise tensor per step, none on the last). The timesteps are a subset of the
//! `original_inference_steps`-step schedule the model was distilled on.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::schedule::{alphas_cumprod, check_steps, numpy_linspace_open};
use super::{check_index, div, f32_tensor, mul, threshold, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct Lcm {
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    clip_sample_range: Option<f32>,
    thresholding: Option<(f64, f64)>,
    timestep_scaling: f32,
}

/// LCM's and TCD's timesteps: `num_inference_steps` evenly picked (floored indices) from the
/// distillation schedule `k - 1, 2k - 1, ..., original_steps * k - 1` (k = train // original),
/// largest first.
pub(super) fn distilled_timesteps(
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Vec<i64>> {
    let original = config.original_inference_steps;
    let class = &config.class_name;
    if original == 0 || original > config.num_train_timesteps {
        return Err(Error::Model(format!(
            "{class}: original_inference_steps = {original} must be between 1 and num_train_timesteps ({})",
            config.num_train_timesteps
        )));
    }
    if num_inference_steps > original {
        return Err(Error::InvalidInput(format!(
            "{class}: num_inference_steps ({num_inference_steps}) cannot be larger than original_inference_steps ({original})"
        )));
    }
    let k = (config.num_train_timesteps / original) as i64;
    let origin: Vec<i64> = (1..=original as i64).rev().map(|i| i * k - 1).collect();
    Ok(
        numpy_linspace_open(0.0, origin.len() as f64, num_inference_steps)
            .into_iter()
            .map(|i| origin[i.floor() as usize])
            .collect(),
    )
}

/// `alphas_cumprod[t]` with Python's indexing.
pub(super) fn alpha_at(alphas_cumprod: &[f32], t: i64) -> Result<f32> {
    let len = alphas_cumprod.len() as i64;
    let i = if t < 0 { t + len } else { t };
    if !(0..len).contains(&i) {
        return Err(Error::InvalidInput(format!(
            "timestep {t} is outside the scheduler's {len} training timesteps"
        )));
    }
    Ok(alphas_cumprod[i as usize])
}

impl Lcm {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let timesteps = distilled_timesteps(config, num_inference_steps)?;
        let alphas_cumprod = alphas_cumprod(config, SchedulerKind::Lcm);
        Ok(Lcm {
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            prediction_type: config.prediction_type,
            clip_sample_range: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            thresholding: config.threshold_options(),
            timestep_scaling: config.timestep_scaling as f32,
        })
    }

    /// The consistency model's boundary-condition scalings at timestep `t` (sigma_data 0.5),
    /// in float32: the scaled timestep is a float32 tensor in diffusers.
    fn scalings(&self, t: i64) -> (f32, f32) {
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for Lcm {
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
        let prev_t = if last { t } else { self.timesteps[index + 1] };
        let alpha_t = alpha_at(&self.alphas_cumprod, t)?;
        let alpha_prev = if prev_t >= 0 {
            alpha_at(&self.alphas_cumprod, prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let (c_skip, c_out) = self.scalings(t);
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
        let denoised = (mul(&original, c_out)? + mul(&sample, c_skip)?)?;
        if last {
            return Ok(denoised);
        }
        let fresh = noise.randn(model_output.dims(), "scheduler_step")?;
        let fresh = f32_tensor(&fresh.to_device(sample.device())?)?;
        Ok((mul(&denoised, alpha_prev.sqrt())? + mul(&fresh, beta_prev.sqrt())?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let alpha = alpha_at(&self.alphas_cumprod, self.timesteps[index])?;
        let signal = mul(&f32_tensor(original)?, alpha.sqrt())?;
        Ok((signal + mul(&f32_tensor(noise)?, (1.0 - alpha).sqrt())?)?)
    }
}
