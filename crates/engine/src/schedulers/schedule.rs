//! The training noise schedule (betas, `alphas_cumprod`) and the inference timesteps, computed
//! with the same float32/float64 operations, in the same order, as diffusers' torch and numpy
//! code, so that they agree bit for bit rather than approximately.

use super::config::{BetaSchedule, SchedulerConfig, SchedulerKind, TimestepSpacing};
use crate::error::{Error, Result};

/// `num_inference_steps` must be in 1..=num_train_timesteps.
pub(crate) fn check_steps(config: &SchedulerConfig, num_inference_steps: usize) -> Result<()> {
    if num_inference_steps == 0 || num_inference_steps > config.num_train_timesteps {
        return Err(Error::InvalidInput(format!(
            "num_inference_steps must be between 1 and {} (the scheduler's num_train_timesteps), got {}",
            config.num_train_timesteps, num_inference_steps
        )));
    }
    Ok(())
}

/// `alphas_cumprod` as the scheduler's `__init__` leaves it (float32).
pub(crate) fn alphas_cumprod(config: &SchedulerConfig, kind: SchedulerKind) -> Vec<f32> {
    let mut betas = betas(config);
    if config.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut alphas_cumprod = cumprod(&one_minus(&betas));
    if config.rescale_betas_zero_snr && kind.clamps_zero_snr() {
        // The Euler schedulers divide by it (sigma = sqrt((1 - a) / a)), so diffusers moves
        // the final zero to float16's smallest subnormal, making the first sigma 4096, not inf.
        if let Some(last) = alphas_cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    alphas_cumprod
}

fn betas(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    if let Some(trained) = &config.trained_betas {
        return trained.iter().map(|&b| b as f32).collect();
    }
    match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        BetaSchedule::SquaredCosCapV2 => squaredcos_cap_v2(n),
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU: float32 arithmetic,
/// the first half counted up from `start` and the second half down from `end`. torch's
/// x86-64 (AVX2/AVX-512) and ARM builds compile `start + step * i` into a fused multiply-add,
/// so `mul_add` here reproduces them to the bit.
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine ("Glide") alpha bar, in Python floats.
fn squaredcos_cap_v2(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        (((t + 0.008) / 1.008 * std::f64::consts::PI) / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (Lin et al. 2023, algorithm 1), in float32 as torch.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut sqrt_ab: Vec<f32> = cumprod(&one_minus(betas))
        .into_iter()
        .map(f32::sqrt)
        .collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let scale = first / (first - last);
    for v in &mut sqrt_ab {
        *v -= last;
        *v *= scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let alphas = std::iter::once(ab[0]).chain(ab.windows(2).map(|w| w[1] / w[0]));
    alphas.map(|a| 1.0 - a).collect()
}

fn one_minus(values: &[f32]) -> Vec<f32> {
    values.iter().map(|v| 1.0 - v).collect()
}

/// `torch.cumprod` of a float32 CPU tensor: torch accumulates in float64 and rounds each output.
fn cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// The Euler schedulers' timesteps (float32), from `timestep_spacing` alone.
pub(crate) fn float_timesteps(config: &SchedulerConfig, n: usize) -> Vec<f32> {
    let train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => numpy_linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => leading(train, n)
            .map(|t| t as f32 + config.steps_offset as f32)
            .collect(),
        TimestepSpacing::Trailing => trailing(train, n).map(|t| t as f32).collect(),
    }
}

/// DDIM's timesteps (integers), from `timestep_spacing` alone. Trailing spacing can end on
/// -1 (see [`trailing`]).
pub(crate) fn integer_timesteps(config: &SchedulerConfig, n: usize) -> Vec<i64> {
    let train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => numpy_linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => leading(train, n)
            .map(|t| t + config.steps_offset as i64)
            .collect(),
        TimestepSpacing::Trailing => trailing(train, n).collect(),
    }
}

/// `arange(0, n) * (train // n)`, descending.
fn leading(train: usize, n: usize) -> impl Iterator<Item = i64> {
    let ratio = (train / n) as i64;
    (0..n as i64).rev().map(move |i| i * ratio)
}

/// `round(arange(train, 0, -train / n)) - 1`. numpy's float `arange` sometimes yields one
/// value more than `n` (e.g. 62 for 61 steps out of 1000), which rounds to 0 and so becomes
/// timestep -1; diffusers keeps it, and so do we.
fn trailing(train: usize, n: usize) -> impl Iterator<Item = i64> {
    let ratio = train as f64 / n as f64;
    numpy_arange(train as f64, 0.0, -ratio)
        .into_iter()
        .map(|t| t.round_ties_even() as i64 - 1)
}

/// `numpy.arange(start, stop, step)` for floats: the length is `ceil((stop - start) / step)`
/// and the values are `start + i * delta`, where `delta` is the second value minus the first
/// (not `step` itself, which can differ in the last bit).
fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let next = start + step;
    let delta = next - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => next,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` in float64: `i * step + start`, the last value exactly
/// `stop`.
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    (0..num)
        .map(|i| {
            if i == num - 1 {
                stop
            } else if step == 0.0 {
                // numpy's path for a zero (or denormal-underflowing) step.
                i as f64 / div * delta + start
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// The DPM-Solver family's integer timesteps (also UniPC's and DEIS's): `n + 1` points of the
/// spacing over `0..last_timestep` with the last (smallest) dropped, so that the schedule never
/// reaches timestep 0 except through its final sigma. Trailing spacing steps by
/// `num_train_timesteps / n` from `last_timestep` down, as diffusers does.
pub(crate) fn solver_timesteps(
    config: &SchedulerConfig,
    n: usize,
    last_timestep: usize,
) -> Vec<i64> {
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut points = numpy_linspace(0.0, last_timestep as f64 - 1.0, n + 1);
            points.reverse();
            points.pop();
            // numpy rounds, then `astype(int64)` truncates what is left (nothing, or -0.0).
            points
                .into_iter()
                .map(|t| t.round_ties_even() as i64)
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|i| i * ratio + config.steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = config.num_train_timesteps as f64 / n as f64;
            numpy_arange(last_timestep as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// `numpy.linspace(start, stop, num, endpoint=False)` in float64.
pub(crate) fn numpy_linspace_open(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = num as f64;
    let delta = stop - start;
    let step = delta / div;
    (0..num)
        .map(|i| {
            if step == 0.0 {
                i as f64 / div * delta + start
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}
