//! diffusers' `EulerDiscreteScheduler`: one Euler step of the probability-flow ODE per
//! timestep, in sigma space. The pipelines never pass `s_churn`, so the step is deterministic
//! and draws no noise.

use candle_core::Tensor;

use super::config::{
    FinalSigmasType, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing, TimestepType,
};
use super::schedule::{alphas_cumprod, check_steps, float_timesteps};
use super::sigmas::{beta, exponential, interp, karras, sigma_to_t, train_sigmas};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::Result;
use crate::noise::NoiseSource;

pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// One more than the timesteps: the sigma each step lands on comes last.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f32,
}

impl EulerDiscrete {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let train = train_sigmas(&alphas_cumprod(config, SchedulerKind::EulerDiscrete));
        let spaced = float_timesteps(config, num_inference_steps);
        let interpolated: Vec<f64> = spaced.iter().map(|&t| interp(t as f64, &train)).collect();

        let (timesteps, mut sigmas) = if config.use_karras_sigmas
            || config.use_exponential_sigmas
            || config.use_beta_sigmas
        {
            respaced(config, &train, &interpolated, num_inference_steps)
        } else {
            (spaced, interpolated)
        };
        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => train[0] as f64,
        });
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();

        let continuous = config.timestep_type == TimestepType::Continuous
            && config.prediction_type == PredictionType::VPrediction;
        let timesteps: Vec<f64> = if continuous {
            // EDM-style conditioning: the model sees 0.25 * ln(sigma) instead of a timestep.
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| (0.25 * s.ln()) as f64)
                .collect()
        } else {
            timesteps.into_iter().map(f64::from).collect()
        };
        Ok(EulerDiscrete {
            timesteps,
            init_noise_sigma: init_noise_sigma(&sigmas, config.timestep_spacing),
            sigmas,
            prediction_type: config.prediction_type,
        })
    }

    /// The noise level at each timestep, followed by the final one (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

/// Karras or exponential sigmas between the bounds (by default the interpolated schedule's
/// own ends, not the training range's), each mapped back to a fractional training timestep.
fn respaced(
    config: &SchedulerConfig,
    train: &[f32],
    interpolated: &[f64],
    n: usize,
) -> (Vec<f32>, Vec<f64>) {
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
    let timesteps = sigmas
        .iter()
        .map(|&s| sigma_to_t(s, &log_sigmas) as f32)
        .collect();
    (timesteps, sigmas)
}

/// The standard deviation of the pure noise a text-to-image run starts from: the largest
/// sigma, or for "leading" spacing (whose first timestep is below the last training one)
/// the norm sqrt(sigma^2 + 1) of noise added to a unit-variance sample.
pub(super) fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// The Euler schedulers' input scaling: the sample divided by sqrt(sigma^2 + 1).
pub(super) fn scale_by_sigma(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    div(&f32_tensor(sample)?, (sigma * sigma + 1.0).sqrt())
}

/// `original + noise * sigma`: the Euler schedulers' forward process.
pub(super) fn add_sigma_noise(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok((f32_tensor(original)? + mul(&f32_tensor(noise)?, sigma)?)?)
}

/// The denoised sample the model's output implies at noise level `sigma`.
pub(super) fn predict_original(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction_type {
        PredictionType::Epsilon => (sample - mul(model_output, sigma)?)?,
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            (mul(model_output, c_out)? + div(sample, sigma * sigma + 1.0)?)?
        }
        PredictionType::Sample => model_output.clone(),
    })
}

/// `sample + (sample - denoised) / sigma * dt`: an Euler step of the ODE from `sigma` by `dt`.
pub(super) fn euler_move(
    sample: &Tensor,
    denoised: &Tensor,
    sigma: f32,
    dt: f32,
) -> Result<Tensor> {
    let derivative = div(&(sample - denoised)?, sigma)?;
    Ok((sample + mul(&derivative, dt)?)?)
}

impl Scheduler for EulerDiscrete {
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
        let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
        let denoised = predict_original(self.prediction_type, &model_output, &sample, sigma)?;
        euler_move(&sample, &denoised, sigma, next - sigma)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        add_sigma_noise(original, noise, self.sigmas[index])
    }
}
