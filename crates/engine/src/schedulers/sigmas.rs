//! The Euler schedulers' noise levels: sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod),
//! interpolated at the inference timesteps as diffusers does it (numpy `interp` in float64
//! over the float32 training sigmas, then rounded to float32), and the Karras / exponential
//! alternatives with their timesteps mapped back through the log-sigmas.

use super::schedule::numpy_linspace;

/// The training sigmas, one per training timestep, in float32 as torch computes them.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `numpy.interp(t, arange(len(sigmas)), sigmas)`: linear between neighbouring training
/// timesteps, clamped to the ends, the exact value at whole timesteps.
pub(crate) fn interp(t: f64, sigmas: &[f32]) -> f64 {
    let last = sigmas.len() - 1;
    if t.is_nan() {
        return t;
    }
    if t <= 0.0 {
        return sigmas[0] as f64;
    }
    if t >= last as f64 {
        return sigmas[last] as f64;
    }
    let j = t.floor() as usize;
    let (lo, hi) = (sigmas[j] as f64, sigmas[j + 1] as f64);
    if t == j as f64 {
        return lo;
    }
    // numpy's slope form: slope * (x - x_j) + y_j, with x_{j+1} - x_j = 1.
    (hi - lo) * (t - j as f64) + lo
}

/// Karras et al. (2022) sigmas: evenly spaced in sigma^(1/7) from `max` down to `min`.
pub(crate) fn karras(min: f64, max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (min_inv_rho, max_inv_rho) = (min.powf(1.0 / RHO), max.powf(1.0 / RHO));
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// Sigmas evenly spaced in log space from `max` down to `min`.
pub(crate) fn exponential(min: f64, max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(max.ln(), min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep whose sigma is `sigma`,
/// interpolating linearly in log-sigma between the two training timesteps around it.
/// `log_sigmas` are float32 (numpy keeps the training sigmas' dtype), and so is the gap
/// between the two neighbours; the rest is float64.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    if log_sigmas.len() < 2 {
        return 0.0; // a single training timestep: nothing to interpolate
    }
    let log_sigma = sigma.max(1e-10).ln();
    // The last training timestep whose log-sigma is <= log_sigma (0 if none), leaving room
    // for a neighbour above it.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// `_sigma_to_t` as KDPM2 calls it for its interpolated sigmas: with a float32 torch scalar
/// and the float32 log-sigmas, so numpy and torch compute every step in float32.
pub(crate) fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    if log_sigmas.len() < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    if log_sigma.is_nan() {
        return f32::NAN;
    }
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f32 + w * (low_idx + 1) as f32
}

/// KDPM2's midpoint sigmas: the geometric mean of each sigma and the one before it,
/// `exp(lerp(log s, log roll(s, 1), 0.5))` in float32 as torch computes it (the first is NaN,
/// the last 0; neither is used).
pub(crate) fn geometric_midpoints(sigmas: &[f32]) -> Vec<f32> {
    let logs: Vec<f32> = sigmas.iter().map(|s| s.ln()).collect();
    (0..logs.len())
        .map(|k| {
            let (start, end) = (logs[k], logs[(k + logs.len() - 1) % logs.len()]);
            // torch's lerp for weight >= 0.5: end - (end - start) * (1 - weight).
            (end - (end - start) * 0.5).exp()
        })
        .collect()
}

/// "Beta sampling is all you need" (Lee et al. 2024) sigmas, diffusers' `_convert_to_beta`:
/// `min + ppf(1 - r) * (max - min)` over r in linspace(0, 1, n), with ppf the quantile function
/// of the Beta(0.6, 0.6) distribution (scipy's `beta.ppf`, here inverted to float64 precision).
pub(crate) fn beta(min: f64, max: f64, n: usize) -> Vec<f64> {
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| min + beta_ppf(1.0 - r) * (max - min))
        .collect()
}

/// ln B(0.6, 0.6) = 2 ln Γ(0.6) - ln Γ(1.2).
const LN_BETA_06_06: f64 = 0.881_841_806_141_785_8;
const BETA_A: f64 = 0.6;

/// The regularised incomplete beta function I_x(0.6, 0.6), by its continued fraction (modified
/// Lentz), using the symmetry I_x(a, a) = 1 - I_{1-x}(a, a) where it converges slowly.
fn beta_cdf(x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > 0.5 {
        return 1.0 - beta_cdf(1.0 - x);
    }
    let (a, b) = (BETA_A, BETA_A);
    let front = (a * x.ln() + b * (1.0 - x).ln() - LN_BETA_06_06).exp() / a;
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        // Even step.
        let num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 + num * d;
        d = if d.abs() < TINY { 1.0 / TINY } else { 1.0 / d };
        c = 1.0 + num / c;
        if c.abs() < TINY {
            c = TINY;
        }
        h *= d * c;
        // Odd step.
        let num = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 + num * d;
        d = if d.abs() < TINY { 1.0 / TINY } else { 1.0 / d };
        c = 1.0 + num / c;
        if c.abs() < TINY {
            c = TINY;
        }
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    front * h
}

/// The Beta(0.6, 0.6) quantile: bisection to the last bit (the cdf is monotone).
fn beta_ppf(q: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}
