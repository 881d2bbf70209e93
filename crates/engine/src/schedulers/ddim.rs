//! diffusers' `DDIMScheduler` with `eta = 0` (what every pipeline here passes): deterministic
//! steps in alpha space, integer timesteps, no input scaling, and no noise drawn.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::schedule::{alphas_cumprod, check_steps, integer_timesteps};
use super::{check_index, div, f32_tensor, mul, threshold, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct Ddim {
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    /// The alpha product "before" the first training timestep, used by the last step.
    final_alpha_cumprod: f32,
    /// diffusers steps from timestep t to t - num_train_timesteps // num_inference_steps,
    /// whatever the spacing.
    step_ratio: i64,
    prediction_type: PredictionType,
    clip_sample_range: Option<f32>,
    thresholding: Option<(f64, f64)>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let alphas_cumprod = alphas_cumprod(config, SchedulerKind::Ddim);
        let timesteps = integer_timesteps(config, num_inference_steps);
        Ok(Ddim {
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            step_ratio: (config.num_train_timesteps / num_inference_steps) as i64,
            prediction_type: config.prediction_type,
            clip_sample_range: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            thresholding: config.threshold_options(),
        })
    }

    /// The training schedule's cumulative alpha products (diffusers' `alphas_cumprod`).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `alphas_cumprod[t]` with Python's indexing, as diffusers indexes it: trailing spacing
    /// can produce timestep -1, which reads the last entry. A timestep past the schedule (e.g.
    /// leading spacing with `steps_offset` and every training step) fails there too.
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

    /// The clean sample and the noise the model's output implies, given alpha_prod_t.
    fn predict(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        alpha_prod: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (sqrt_alpha, sqrt_beta) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
        Ok(match self.prediction_type {
            PredictionType::Epsilon => {
                let original = div(&(sample - mul(model_output, sqrt_beta)?)?, sqrt_alpha)?;
                (original, model_output.clone())
            }
            PredictionType::Sample => {
                let epsilon = div(&(sample - mul(model_output, sqrt_alpha)?)?, sqrt_beta)?;
                (model_output.clone(), epsilon)
            }
            PredictionType::VPrediction => {
                let original = (mul(sample, sqrt_alpha)? - mul(model_output, sqrt_beta)?)?;
                let epsilon = (mul(model_output, sqrt_alpha)? + mul(sample, sqrt_beta)?)?;
                (original, epsilon)
            }
        })
    }
}

impl Scheduler for Ddim {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let t = self.timesteps[index];
        let prev_t = t - self.step_ratio;
        let alpha_prod = self.alpha_at(t)?;
        let alpha_prod_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)?
        } else {
            self.final_alpha_cumprod
        };

        let (original, epsilon) = self.predict(&model_output, &sample, alpha_prod)?;
        let original = match (self.thresholding, self.clip_sample_range) {
            (Some((ratio, max)), _) => threshold(&original, ratio, max)?,
            (None, Some(range)) => original.clamp(-range, range)?,
            (None, None) => original,
        };
        // With eta = 0 the noise term std_dev_t is 0, leaving sqrt(1 - alpha_prod_prev) for
        // the direction pointing to x_t.
        let direction = mul(&epsilon, (1.0 - alpha_prod_prev).sqrt())?;
        Ok((mul(&original, alpha_prod_prev.sqrt())? + direction)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let alpha_prod = self.alpha_at(self.timesteps[index])?;
        let signal = mul(&f32_tensor(original)?, alpha_prod.sqrt())?;
        Ok((signal + mul(&f32_tensor(noise)?, (1.0 - alpha_prod).sqrt())?)?)
    }
}
