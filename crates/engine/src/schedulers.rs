//! Noise schedulers, computing what diffusers' `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler` and `DDIMScheduler` compute, configured from a
//! repository's `scheduler/scheduler_config.json`.
//!
//! The arithmetic repeats diffusers' own, operation by operation: the training schedule and
//! the timesteps follow torch's and numpy's float32/float64 steps (bit-identical, down to
//! torch's fused multiply-add in `linspace`), and `step` works on float32 scalars and tensors
//! in diffusers' order. What remains is rounding we cannot portably reproduce: torch's CPU
//! `sqrt` (Intel MKL) is not correctly rounded, so sigmas and square-root coefficients can
//! differ from ours by an ulp, and numpy's vectorised `log`/`pow` move Karras and exponential
//! timesteps by less than 1e-6 relative.
//!
//! diffusers keeps a step counter (`step_index` / `begin_index`) inside the scheduler; here
//! the caller passes the index into [`Scheduler::timesteps`] instead (img2img starts at
//! `t_start` and passes `t_start + i`), which is what `set_begin_index` achieves there.

mod config;
mod ddim;
mod euler;
mod euler_ancestral;
mod schedule;
mod sigmas;
#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};

pub use config::{
    BetaSchedule, FinalSigmasType, InterpolationType, PredictionType, SchedulerConfig,
    SchedulerKind, TimestepSpacing, TimestepType,
};
pub use ddim::Ddim;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;

use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub trait Scheduler: Send {
    /// diffusers' `scheduler.timesteps` after `set_timesteps(num_inference_steps)`.
    fn timesteps(&self) -> &[f64];
    fn init_noise_sigma(&self) -> f64;
    fn order(&self) -> usize {
        1
    }
    /// `scale_model_input` for the sample at `timesteps()[index]`.
    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor>;
    /// `step` from `timesteps()[index]` to the next one; ancestral schedulers draw their noise
    /// (shape of the sample) from `noise` with tag "scheduler_step", exactly when diffusers draws.
    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor>;
    /// `add_noise(original, noise, timesteps()[index])` as img2img uses it at its start step.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor>;
}

/// The scheduler `config` describes, with its timesteps set for `num_inference_steps`.
/// `num_inference_steps` = 0 or > num_train_timesteps is `Error::InvalidInput`; an unsupported
/// class or option is `Error::Model`.
pub fn build(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(match config.kind()? {
        SchedulerKind::EulerDiscrete => Box::new(EulerDiscrete::new(config, num_inference_steps)?),
        SchedulerKind::EulerAncestralDiscrete => {
            Box::new(EulerAncestralDiscrete::new(config, num_inference_steps)?)
        }
        SchedulerKind::Ddim => Box::new(Ddim::new(config, num_inference_steps)?),
    })
}

/// Checks that `index` names a timestep of a schedule of `len` timesteps.
fn check_index(index: usize, len: usize) -> Result<()> {
    if index >= len {
        return Err(Error::InvalidInput(format!(
            "scheduler index {index} is past the end of the schedule ({len} timesteps)"
        )));
    }
    Ok(())
}

/// The tensor as float32, the dtype diffusers does its scheduler arithmetic in.
fn f32_tensor(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// A float32 scalar on `like`'s device. diffusers' per-step coefficients are 0-dim float32
/// tensors, so every product and quotient with them is one float32 operation per element:
/// multiplying by a scalar this way (not `affine`, which would turn a division into a
/// multiplication by the reciprocal) keeps the results bit-identical.
fn scalar(like: &Tensor, value: f32) -> Result<Tensor> {
    Ok(Tensor::new(value, like.device())?)
}

fn mul(t: &Tensor, value: f32) -> Result<Tensor> {
    Ok(t.broadcast_mul(&scalar(t, value)?)?)
}

fn div(t: &Tensor, value: f32) -> Result<Tensor> {
    Ok(t.broadcast_div(&scalar(t, value)?)?)
}
