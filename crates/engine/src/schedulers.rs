//! Noise schedulers, computing what diffusers' schedulers compute, configured from a
//! repository's `scheduler/scheduler_config.json` and chosen by its `_class_name`:
//! `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`, `DDIMScheduler`,
//! `DPMSolverMultistepScheduler`, `DPMSolverSinglestepScheduler`, `UniPCMultistepScheduler`,
//! `DEISMultistepScheduler`, `PNDMScheduler`, `DDPMScheduler`, `LCMScheduler`, `TCDScheduler`,
//! `HeunDiscreteScheduler`, `KDPM2DiscreteScheduler`, `KDPM2AncestralDiscreteScheduler` and
//! `LMSDiscreteScheduler` (one file each). An option value a class reads but tessera does not
//! implement is an `Error::Model` naming the key and the value, never different numbers.
//!
//! The arithmetic repeats diffusers' own, operation by operation: the training schedule and
//! the timesteps follow torch's and numpy's float32/float64 steps (bit-identical, down to
//! torch's fused multiply-add in `linspace`), and `step` works on float32 scalars and tensors
//! in diffusers' order. What remains is rounding we cannot portably reproduce: torch's CPU
//! `sqrt` (Intel MKL) is not correctly rounded, so sigmas and square-root coefficients can
//! differ from ours by an ulp, numpy's vectorised `log`/`pow` move Karras and exponential
//! timesteps by less than 1e-6 relative, and torch's and numpy's float32 `log`/`exp` (an ulp
//! off in a few percent of cases) move the multistep solvers' lambda-based coefficients, which
//! their higher orders amplify to ~1e-5 of a step's magnitude (see the tests' tolerances).
//!
//! diffusers keeps a step counter (`step_index` / `begin_index`) inside the scheduler; here
//! the caller passes the index into [`Scheduler::timesteps`] instead (img2img starts at
//! `t_start * order()` and passes each index in turn), which is what `set_begin_index`
//! achieves there. The state a step leaves for the next (multistep histories, PNDM's counter,
//! the second-order schedulers' first halves) lives in the scheduler and counts from the first
//! step taken, as diffusers' does after `set_begin_index`: steps must be taken in order, each
//! index once. Heun and KDPM2 (`order()` = 2) list every timestep but the first twice, the
//! first of each pair the predictor and the second the corrector.

mod config;
mod ddim;
mod ddpm;
mod deis;
mod dpm_multistep;
mod dpm_singlestep;
mod euler;
mod euler_ancestral;
mod heun;
mod kdpm2;
mod kdpm2_ancestral;
mod lcm;
mod lms;
mod pndm;
mod schedule;
mod sigmas;
mod tcd;
#[cfg(test)]
mod tests;
mod unipc;

use candle_core::{DType, Tensor};

pub use config::{
    AlgorithmType, BetaSchedule, FinalSigmasType, InterpolationType, PredictionType,
    SchedulerConfig, SchedulerKind, SolverType, TimestepSpacing, TimestepType, VarianceType,
};
pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use deis::DeisMultistep;
pub use dpm_multistep::DpmSolverMultistep;
pub use dpm_singlestep::DpmSolverSinglestep;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;
pub use heun::HeunDiscrete;
pub use kdpm2::KDpm2Discrete;
pub use kdpm2_ancestral::KDpm2AncestralDiscrete;
pub use lcm::Lcm;
pub use lms::LmsDiscrete;
pub use pndm::Pndm;
pub use tcd::Tcd;
pub use unipc::UniPcMultistep;

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
        SchedulerKind::DpmSolverMultistep => {
            Box::new(DpmSolverMultistep::new(config, num_inference_steps)?)
        }
        SchedulerKind::Pndm => Box::new(Pndm::new(config, num_inference_steps)?),
        SchedulerKind::Ddpm => Box::new(Ddpm::new(config, num_inference_steps)?),
        SchedulerKind::Lcm => Box::new(Lcm::new(config, num_inference_steps)?),
        SchedulerKind::Tcd => Box::new(Tcd::new(config, num_inference_steps)?),
        SchedulerKind::HeunDiscrete => Box::new(HeunDiscrete::new(config, num_inference_steps)?),
        SchedulerKind::KDpm2Discrete => Box::new(KDpm2Discrete::new(config, num_inference_steps)?),
        SchedulerKind::KDpm2AncestralDiscrete => {
            Box::new(KDpm2AncestralDiscrete::new(config, num_inference_steps)?)
        }
        SchedulerKind::LmsDiscrete => Box::new(LmsDiscrete::new(config, num_inference_steps)?),
        SchedulerKind::UniPcMultistep => {
            Box::new(UniPcMultistep::new(config, num_inference_steps)?)
        }
        SchedulerKind::DeisMultistep => Box::new(DeisMultistep::new(config, num_inference_steps)?),
        SchedulerKind::DpmSolverSinglestep => {
            Box::new(DpmSolverSinglestep::new(config, num_inference_steps)?)
        }
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

/// diffusers' `_threshold_sample` (dynamic thresholding, Saharia et al. 2022): per batch item,
/// s = the `ratio` quantile of |x| (torch's `quantile`, linear interpolation between the
/// sorted values, the rank in float32) clamped to [1, `max_value`], then x clamped to ±s and
/// divided by s.
fn threshold(sample: &Tensor, ratio: f64, max_value: f64) -> Result<Tensor> {
    let dims = sample.dims().to_vec();
    let rows: Vec<Vec<f32>> = f32_tensor(sample)?.flatten_from(1)?.to_vec2()?;
    let n = rows.first().map_or(0, Vec::len);
    if n == 0 {
        return Ok(sample.clone());
    }
    let rank = ratio as f32 * (n - 1) as f32;
    let (below, above) = (rank as usize, rank.ceil() as usize);
    let weight = rank - below as f32;
    let mut out = Vec::with_capacity(rows.len() * n);
    for row in rows {
        let mut sorted: Vec<f32> = row.iter().map(|v| v.abs()).collect();
        sorted.sort_by(f32::total_cmp);
        let (start, end) = (sorted[below.min(n - 1)], sorted[above.min(n - 1)]);
        let diff = end - start;
        // torch's lerp: from the nearer end.
        let s = if weight.abs() < 0.5 {
            start + weight * diff
        } else {
            end - diff * (1.0 - weight)
        };
        let s = s.max(1.0).min(max_value as f32);
        out.extend(row.iter().map(|&v| v.max(-s).min(s) / s));
    }
    Ok(Tensor::from_vec(out, dims, sample.device())?)
}
