//! diffusers' `UniPCMultistepScheduler` (UniPC, Zhao et al. 2023): a multistep predictor
//! (UniP) and, once the next model output is known, a corrector (UniC) of the previous step,
//! both in lambda = log(alpha / sigma), with the B(h) of `solver_type` bh1 or bh2. Integer
//! timesteps as DPM-Solver's, no input scaling, no noise.
//!
//! The history (converted outputs, the last sample and order) lives in the scheduler, counted
//! from the first step the caller takes, as diffusers counts it from `set_begin_index`.
//! diffusers solves the small linear systems for the coefficients with `torch.linalg.solve`
//! (LAPACK); [`solve`] is LAPACK's LU with partial pivoting in float32.

use candle_core::Tensor;

use super::config::{FinalSigmasType, PredictionType, SchedulerConfig, SchedulerKind, SolverType};
use super::dpm_multistep::{alpha_sigma, lambda};
use super::schedule::{alphas_cumprod, check_steps, solver_timesteps};
use super::sigmas::{beta, exponential, karras, sigma_to_t, train_sigmas};
use super::{check_index, div, f32_tensor, mul, threshold, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct UniPcMultistep {
    timesteps: Vec<f64>,
    /// One more than the timesteps, ending on the final sigma.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    predict_x0: bool,
    bh2: bool,
    solver_order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// The converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    last_sample: Option<Tensor>,
    this_order: usize,
    thresholding: Option<(f64, f64)>,
}

/// UniPC's timesteps and sigmas (with the final one): DPM-Solver's spacing over the whole
/// training range, or Karras sigmas (timesteps always rounded) / exponential ones (not),
/// whose `sigma_min` final sigma is the last of the respaced ones.
fn schedule(config: &SchedulerConfig, n: usize) -> (Vec<i64>, Vec<f32>) {
    let train = train_sigmas(&alphas_cumprod(config, SchedulerKind::UniPcMultistep));
    let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
    let min = config.sigma_min.unwrap_or(train[0] as f64);
    let max = config.sigma_max.unwrap_or(train[train.len() - 1] as f64);
    let (timesteps, mut sigmas, last) =
        if config.use_karras_sigmas || config.use_exponential_sigmas || config.use_beta_sigmas {
            let sigmas = if config.use_karras_sigmas {
                karras(min, max, n)
            } else if config.use_beta_sigmas {
                beta(min, max, n)
            } else {
                exponential(min, max, n)
            };
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    (if config.use_karras_sigmas {
                        t.round_ties_even()
                    } else {
                        t
                    }) as i64
                })
                .collect();
            let last = sigmas[sigmas.len() - 1];
            (timesteps, sigmas, last)
        } else {
            let timesteps = solver_timesteps(config, n, config.num_train_timesteps);
            let sigmas = timesteps
                .iter()
                .map(|&t| train[t.clamp(0, train.len() as i64 - 1) as usize] as f64)
                .collect();
            (timesteps, sigmas, train[0] as f64)
        };
    sigmas.push(match config.final_sigmas_type {
        FinalSigmasType::Zero => 0.0,
        FinalSigmasType::SigmaMin => last,
    });
    (timesteps, sigmas.into_iter().map(|s| s as f32).collect())
}

/// `torch.linalg.solve(a, b)` for a small float32 system: LAPACK's `sgesv` (LU with partial
/// pivoting, the column scaled by the pivot's reciprocal, then the two triangular solves).
pub(super) fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Result<Vec<f32>> {
    let n = b.len();
    for j in 0..n {
        // The first row with the largest magnitude in column j (isamax).
        let mut p = j;
        for i in j + 1..n {
            if a[i][j].abs() > a[p][j].abs() {
                p = i;
            }
        }
        if a[p][j] == 0.0 {
            return Err(Error::InvalidInput(
                "UniPCMultistepScheduler: singular coefficient system".into(),
            ));
        }
        a.swap(j, p);
        b.swap(j, p);
        let pivot = a[j][j];
        let reciprocal = 1.0 / pivot;
        let pivot_row = a[j].clone();
        for row in a.iter_mut().skip(j + 1) {
            if pivot.abs() >= f32::MIN_POSITIVE {
                row[j] *= reciprocal;
            } else {
                row[j] /= pivot;
            }
            // The rank-1 update (sger with alpha = -1).
            let l = row[j];
            for (x, &u) in row.iter_mut().zip(&pivot_row).skip(j + 1) {
                *x += l * -u;
            }
        }
    }
    // L y = b (unit diagonal), then U x = y.
    for k in 0..n {
        if b[k] != 0.0 {
            for i in k + 1..n {
                b[i] -= b[k] * a[i][k];
            }
        }
    }
    for k in (0..n).rev() {
        if b[k] != 0.0 {
            b[k] /= a[k][k];
            for i in 0..k {
                b[i] -= b[k] * a[i][k];
            }
        }
    }
    Ok(b)
}

/// The coefficient quantities shared by the predictor and the corrector.
struct Coefficients {
    h_phi_1: f32,
    b_h: f32,
    /// `R` rows: the ratios r_k to the powers 0..order.
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

impl UniPcMultistep {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let (timesteps, sigmas) = schedule(config, num_inference_steps);
        Ok(UniPcMultistep {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas,
            prediction_type: config.prediction_type,
            predict_x0: config.predict_x0,
            // diffusers reads midpoint, heun and logrho as bh2.
            bh2: config.solver_type != SolverType::Bh1,
            solver_order: config.solver_order,
            lower_order_final: config.lower_order_final,
            disable_corrector: config.disable_corrector.clone(),
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            last_sample: None,
            this_order: 0,
            thresholding: config.threshold_options(),
        })
    }

    /// The noise level at each timestep, followed by the final one (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn convert(&self, model_output: &Tensor, sample: &Tensor, index: usize) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index]);
        if self.predict_x0 {
            let x0 = match self.prediction_type {
                PredictionType::Epsilon => div(&(sample - mul(model_output, sigma_t)?)?, alpha_t)?,
                PredictionType::Sample => model_output.clone(),
                PredictionType::VPrediction => {
                    (mul(sample, alpha_t)? - mul(model_output, sigma_t)?)?
                }
            };
            return match self.thresholding {
                Some((ratio, max)) => threshold(&x0, ratio, max),
                None => Ok(x0),
            };
        }
        Ok(match self.prediction_type {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::Sample => div(&(sample - mul(model_output, alpha_t)?)?, sigma_t)?,
            PredictionType::VPrediction => (mul(model_output, alpha_t)? + mul(sample, sigma_t)?)?,
        })
    }

    fn lambda_at(&self, i: usize) -> f32 {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        lambda(alpha, sigma)
    }

    /// The converted output `back` steps ago (1 = the newest in the history).
    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - back]
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidInput("scheduler history is shorter than its order".into())
            })
    }

    /// h, the ratios r_k and the differences D1_k for the update from sigma index `s0` to
    /// `t`, the k-th history entry sitting at sigma index `s0 - k`.
    fn coefficients(
        &self,
        t: usize,
        s0: usize,
        order: usize,
    ) -> Result<(Coefficients, Vec<Tensor>)> {
        let (lambda_t, lambda_s0) = (self.lambda_at(t), self.lambda_at(s0));
        let h = lambda_t - lambda_s0;
        let m0 = self.history(1)?;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let rk = (self.lambda_at(s0 - k) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(div(&(self.history(k + 1)? - m0)?, rk)?);
        }
        rks.push(1.0);
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial: u64 = 1;
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let mut r = Vec::new();
        let mut b = Vec::new();
        for i in 1..=order {
            r.push(rks.iter().map(|&x| powi(x, i - 1)).collect());
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        Ok((Coefficients { h_phi_1, b_h, r, b }, d1s))
    }

    /// `sum_k rho_k D1_k` (diffusers' einsum), or `None` without differences.
    fn weighted(rhos: &[f32], d1s: &[Tensor]) -> Result<Option<Tensor>> {
        let mut acc: Option<Tensor> = None;
        for (rho, d) in rhos.iter().zip(d1s) {
            let term = mul(d, *rho)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
        Ok(acc)
    }

    /// The base step from `x` at sigma index `s0` to `t` with the newest history entry.
    fn base(&self, x: &Tensor, t: usize, s0: usize, h_phi_1: f32) -> Result<(Tensor, f32)> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[t]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[s0]);
        let m0 = self.history(1)?;
        Ok(if self.predict_x0 {
            let x = (mul(x, sigma_t / sigma_s0)? - mul(m0, alpha_t * h_phi_1)?)?;
            (x, alpha_t)
        } else {
            let x = (mul(x, alpha_t / alpha_s0)? - mul(m0, sigma_t * h_phi_1)?)?;
            (x, sigma_t)
        })
    }

    /// UniP: from `sample` at index `i` to `i + 1`.
    fn predict(&self, sample: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let (c, d1s) = self.coefficients(i + 1, i, order)?;
        let rhos = match order {
            1 => Vec::new(),
            2 => vec![0.5],
            _ => {
                let k = order - 1;
                let a = c.r[..k].iter().map(|row| row[..k].to_vec()).collect();
                solve(a, c.b[..k].to_vec())?
            }
        };
        let (x, scale) = self.base(sample, i + 1, i, c.h_phi_1)?;
        Ok(match Self::weighted(&rhos, &d1s)? {
            Some(res) => (x - mul(&res, scale * c.b_h)?)?,
            // `x_t_ - alpha_t * B_h * 0`
            None => (x - mul(&sample.zeros_like()?, scale * c.b_h)?)?,
        })
    }

    /// UniC: corrects the previous step (from `last` at `i - 1` to `i`) with this step's
    /// converted output.
    fn correct(&self, model_t: &Tensor, last: &Tensor, i: usize, order: usize) -> Result<Tensor> {
        let (c, d1s) = self.coefficients(i, i - 1, order)?;
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            solve(c.r.clone(), c.b.clone())?
        };
        let (x, scale) = self.base(last, i, i - 1, c.h_phi_1)?;
        let d1_t = (model_t - self.history(1)?)?;
        let last_term = mul(&d1_t, rhos[rhos.len() - 1])?;
        let inner = match Self::weighted(&rhos[..rhos.len() - 1], &d1s)? {
            Some(res) => (res + last_term)?,
            None => last_term,
        };
        Ok((x - mul(&inner, scale * c.b_h)?)?)
    }
}

/// `torch.pow(x, n)` for the small integer powers UniPC uses (torch multiplies them out).
fn powi(x: f32, n: usize) -> f32 {
    match n {
        0 => 1.0,
        1 => x,
        2 => x * x,
        3 => x * x * x,
        _ => x.powi(n as i32),
    }
}

impl Scheduler for UniPcMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        let (model_output, mut sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let converted = self.convert(&model_output, &sample, index)?;
        let use_corrector = index > 0
            && !self.disable_corrector.contains(&(index - 1))
            && self.last_sample.is_some();
        if use_corrector {
            let last = self.last_sample.clone().expect("checked above");
            if index < self.this_order {
                return Err(Error::InvalidInput(format!(
                    "scheduler step {index}: a multistep scheduler steps in order"
                )));
            }
            sample = self.correct(&converted, &last, index, self.this_order)?;
        }
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        let order = if self.lower_order_final {
            self.solver_order.min(self.timesteps.len() - index)
        } else {
            self.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        if index + 1 < self.this_order {
            return Err(Error::InvalidInput(format!(
                "scheduler step {index}: a multistep scheduler steps in order"
            )));
        }
        self.last_sample = Some(sample.clone());
        let prev = self.predict(&sample, index, self.this_order)?;
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index]);
        Ok((mul(&f32_tensor(original)?, alpha_t)? + mul(&f32_tensor(noise)?, sigma_t)?)?)
    }
}
