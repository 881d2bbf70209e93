//! diffusers' `HeunDiscreteScheduler` (Karras et al. 2022, algorithm 2 without churn): each
//! step from sigma_i to sigma_{i+1} takes two model evaluations, an Euler step and a
//! correction at its end. diffusers lays this out as a doubled schedule: every timestep but the
//! first appears twice (`order` = 2), the first of each pair the Euler half, the second the
//! correction, and img2img starts at `t_start * 2`. The last step is a plain Euler step to 0.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::euler::{add_sigma_noise, init_noise_sigma, predict_original, scale_by_sigma};
use super::schedule::{alphas_cumprod, check_steps, float_timesteps};
use super::sigmas::{beta, exponential, interp, karras, sigma_to_t, train_sigmas};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::Result;
use crate::noise::NoiseSource;

pub struct HeunDiscrete {
    timesteps: Vec<f64>,
    /// One more than the timesteps: sigma_0, each later sigma twice, then 0.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    clip_sample_range: Option<f32>,
    init_noise_sigma: f32,
    /// The Euler half's derivative, step and sample, until its correction.
    first_half: Option<(Tensor, f32, Tensor)>,
}

/// The Euler-style schedule of the Karras-family discrete schedulers (Heun, KDPM2, LMS):
/// float32 timesteps of the spacing with their interpolated sigmas, or Karras / exponential
/// sigmas between the interpolated ends with float64 timesteps mapped back (not rounded).
/// Returns timesteps and sigmas without the final 0.
pub(super) fn karras_family_schedule(
    config: &SchedulerConfig,
    kind: SchedulerKind,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let train = train_sigmas(&alphas_cumprod(config, kind));
    let spaced = float_timesteps(config, n);
    let interpolated: Vec<f64> = spaced.iter().map(|&t| interp(t as f64, &train)).collect();
    if !(config.use_karras_sigmas || config.use_exponential_sigmas || config.use_beta_sigmas) {
        return (spaced.into_iter().map(f64::from).collect(), interpolated);
    }
    // `sigma_min` / `sigma_max` are no `__init__` arguments of these classes, but diffusers
    // keeps every key of the file in `config` and reads them from there.
    let min = config
        .sigma_min
        .unwrap_or(interpolated[interpolated.len() - 1]);
    let max = config.sigma_max.unwrap_or(interpolated[0]);
    let sigmas = if config.use_karras_sigmas {
        karras(min, max, n)
    } else if config.use_beta_sigmas {
        beta(min, max, n)
    } else {
        exponential(min, max, n)
    };
    let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
    let timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
    (timesteps, sigmas)
}

/// `[x0, x1, x1, x2, x2, ...]`: every element after the first twice.
pub(super) fn doubled<T: Copy>(values: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len() * 2);
    if let Some((&first, rest)) = values.split_first() {
        out.push(first);
        for &v in rest {
            out.extend([v, v]);
        }
    }
    out
}

impl HeunDiscrete {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let (timesteps, sigmas) =
            karras_family_schedule(config, SchedulerKind::HeunDiscrete, num_inference_steps);
        // float32, as diffusers stores them.
        let timesteps: Vec<f32> = timesteps.into_iter().map(|t| t as f32).collect();
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        // sigmas[:1], sigmas[1:] twice each, then the final 0.
        let mut all = doubled(&sigmas);
        all.push(0.0);
        Ok(HeunDiscrete {
            timesteps: doubled(&timesteps).into_iter().map(f64::from).collect(),
            init_noise_sigma: init_noise_sigma(&all, config.timestep_spacing),
            sigmas: all,
            prediction_type: config.prediction_type,
            clip_sample_range: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            first_half: None,
        })
    }

    /// diffusers' `sigmas` (with the doubling).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for HeunDiscrete {
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
        let clip = |x: Tensor| -> Result<Tensor> {
            Ok(match self.clip_sample_range {
                Some(range) => x.clamp(-range, range)?,
                None => x,
            })
        };
        match self.first_half.take() {
            None => {
                let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
                let original = clip(predict_original(
                    self.prediction_type,
                    &model_output,
                    &sample,
                    sigma,
                )?)?;
                let derivative = div(&(&sample - original)?, sigma)?;
                let dt = next - sigma;
                let prev = (&sample + mul(&derivative, dt)?)?;
                self.first_half = Some((derivative, dt, sample));
                Ok(prev)
            }
            Some((first_derivative, dt, first_sample)) => {
                let next = self.sigmas[index];
                let original = clip(predict_original(
                    self.prediction_type,
                    &model_output,
                    &sample,
                    next,
                )?)?;
                let derivative = div(&(&sample - original)?, next)?;
                let derivative = div(&(first_derivative + derivative)?, 2.0)?;
                Ok((first_sample + mul(&derivative, dt)?)?)
            }
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        add_sigma_noise(original, noise, self.sigmas[index])
    }
}
