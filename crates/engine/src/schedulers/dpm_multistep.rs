//! diffusers' `DPMSolverMultistepScheduler` (DPM-Solver and DPM-Solver++, Lu et al. 2022):
//! integer timesteps, no input scaling, and steps of order 1 to 3 in lambda = log(alpha / sigma)
//! that reuse the converted model outputs of the previous steps. The SDE variants draw one
//! noise tensor per step.
//!
//! The history (the last `solver_order` converted outputs and how many steps have been taken)
//! lives in the scheduler, counted from the first step the caller takes, as diffusers counts
//! it from `set_begin_index`: img2img's first step is first order whatever its index.

use candle_core::Tensor;

use super::config::{
    AlgorithmType, BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, SchedulerKind,
    SolverType,
};
use super::schedule::{alphas_cumprod, check_steps, numpy_linspace, solver_timesteps};
use super::sigmas::{beta, exponential, karras, sigma_to_t, train_sigmas};
use super::{check_index, div, f32_tensor, mul, threshold, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    /// One more than the timesteps: the final sigma (0 or the smallest training sigma).
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    algorithm: AlgorithmType,
    solver_type: SolverType,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_type: FinalSigmasType,
    /// The converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    thresholding: Option<(f64, f64)>,
}

/// The training schedule's lambda = log(sqrt(a)) - log(sqrt(1 - a)), in float32 as torch.
fn train_lambdas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .collect()
}

/// `num_train_timesteps - searchsorted(flip(lambda_t), lambda_min_clipped)`: the timesteps stop
/// where lambda falls below `lambda_min_clipped` (all of them for the default -inf).
pub(super) fn last_timestep(config: &SchedulerConfig, alphas_cumprod: &[f32]) -> usize {
    let clipped = train_lambdas(alphas_cumprod)
        .iter()
        .filter(|&&l| (l as f64) < config.lambda_min_clipped)
        .count();
    config.num_train_timesteps - clipped
}

/// Timesteps and sigmas (without the final one) for the DPM-Solver family: the spacing's
/// integer timesteps with their training sigmas, or Karras / Lu / exponential sigmas over the
/// whole training range with the timesteps mapped back through the log-sigmas.
pub(super) fn solver_schedule(
    config: &SchedulerConfig,
    train: &[f32],
    n: usize,
    last_timestep: usize,
) -> (Vec<i64>, Vec<f64>) {
    let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
    // `sigma_min` / `sigma_max` are no `__init__` arguments, but diffusers keeps every key of
    // the file in `config` and its Karras / exponential conversions read them from there.
    let min = config.sigma_min.unwrap_or(train[0] as f64);
    let max = config.sigma_max.unwrap_or(train[train.len() - 1] as f64);
    // Karras and Lu timesteps are rounded (except for the cosine schedule); every float
    // timestep then becomes int64 by truncation.
    let rounded = config.beta_schedule != BetaSchedule::SquaredCosCapV2;
    let back_to_t = |sigmas: &[f64], round: bool| -> Vec<i64> {
        sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, &log_sigmas);
                (if round { t.round_ties_even() } else { t }) as i64
            })
            .collect()
    };
    if config.use_karras_sigmas {
        let sigmas = karras(min, max, n);
        (back_to_t(&sigmas, rounded), sigmas)
    } else if config.use_lu_lambdas {
        // Evenly spaced in log-sigma between the training ends (rho = 1).
        let (lo, hi) = (
            log_sigmas[0] as f64,
            log_sigmas[log_sigmas.len() - 1] as f64,
        );
        let sigmas: Vec<f64> = numpy_linspace(0.0, 1.0, n)
            .into_iter()
            .map(|r| (hi + r * (lo - hi)).exp())
            .collect();
        (back_to_t(&sigmas, rounded), sigmas)
    } else if config.use_exponential_sigmas {
        let sigmas = exponential(min, max, n);
        (back_to_t(&sigmas, false), sigmas)
    } else if config.use_beta_sigmas {
        let sigmas = beta(min, max, n);
        (back_to_t(&sigmas, false), sigmas)
    } else {
        let timesteps = solver_timesteps(config, n, last_timestep);
        let sigmas = timesteps
            .iter()
            .map(|&t| train_at(train, t) as f64)
            .collect();
        (timesteps, sigmas)
    }
}

/// `np.interp` of the training sigmas at an integer timestep: the value itself, clamped to
/// the ends.
fn train_at(train: &[f32], t: i64) -> f32 {
    train[t.clamp(0, train.len() as i64 - 1) as usize]
}

/// diffusers' `_sigma_to_alpha_sigma_t` in float32: alpha = 1 / sqrt(sigma^2 + 1) and the
/// noise scale sigma * alpha.
pub(super) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// lambda = log(alpha) - log(sigma) (inf at sigma 0).
pub(super) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// `convert_model_output` of the DPM-Solver schedulers: the clean sample (DPM-Solver++) or the
/// noise (DPM-Solver) the model's output implies at noise level `sigma`, with the clean sample
/// dynamically thresholded when `thresholding` is on.
pub(super) fn convert(
    plus_plus: bool,
    prediction_type: PredictionType,
    thresholding: Option<(f64, f64)>,
    sigma: f32,
    model_output: &Tensor,
    sample: &Tensor,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    if plus_plus {
        let x0 = match prediction_type {
            PredictionType::Epsilon => div(&(sample - mul(model_output, sigma_t)?)?, alpha_t)?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => (mul(sample, alpha_t)? - mul(model_output, sigma_t)?)?,
        };
        return match thresholding {
            Some((ratio, max)) => threshold(&x0, ratio, max),
            None => Ok(x0),
        };
    }
    let epsilon = match prediction_type {
        PredictionType::Epsilon => model_output.clone(),
        PredictionType::Sample => div(&(sample - mul(model_output, alpha_t)?)?, sigma_t)?,
        PredictionType::VPrediction => (mul(model_output, alpha_t)? + mul(sample, sigma_t)?)?,
    };
    Ok(match thresholding {
        Some((ratio, max)) => {
            let x0 = div(&(sample - mul(&epsilon, sigma_t)?)?, alpha_t)?;
            let x0 = threshold(&x0, ratio, max)?;
            div(&(sample - mul(&x0, alpha_t)?)?, sigma_t)?
        }
        None => epsilon,
    })
}

impl DpmSolverMultistep {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let alphas_cumprod = alphas_cumprod(config, SchedulerKind::DpmSolverMultistep);
        let train = train_sigmas(&alphas_cumprod);
        let last = last_timestep(config, &alphas_cumprod);
        let (timesteps, mut sigmas) = solver_schedule(config, &train, num_inference_steps, last);
        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => train[0] as f64,
        });
        Ok(DpmSolverMultistep {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            prediction_type: config.prediction_type,
            algorithm: config.dpm_algorithm(),
            solver_type: config.dpm_solver_type(),
            solver_order: config.solver_order,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_sigmas_type: config.final_sigmas_type,
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            thresholding: config.threshold_options(),
        })
    }

    /// The noise level at each timestep, followed by the final one (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sde(&self) -> bool {
        matches!(
            self.algorithm,
            AlgorithmType::SdeDpmSolver | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }

    fn plus_plus(&self) -> bool {
        matches!(
            self.algorithm,
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
        )
    }

    fn convert(&self, model_output: &Tensor, sample: &Tensor, index: usize) -> Result<Tensor> {
        convert(
            self.plus_plus(),
            self.prediction_type,
            self.thresholding,
            self.sigmas[index],
            model_output,
            sample,
        )
    }

    /// The alpha, sigma and lambda of `sigmas[i]`.
    fn point(&self, i: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        (alpha, sigma, lambda(alpha, sigma))
    }

    fn first_order(
        &self,
        index: usize,
        m0: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.point(index + 1);
        let (alpha_s, sigma_s, lambda_s) = self.point(index);
        let h = lambda_t - lambda_s;
        Ok(match self.algorithm {
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::Deis => {
                (mul(sample, sigma_t / sigma_s)? - mul(m0, alpha_t * ((-h).exp() - 1.0))?)?
            }
            AlgorithmType::DpmSolver => {
                (mul(sample, alpha_t / alpha_s)? - mul(m0, sigma_t * (h.exp() - 1.0))?)?
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let e2 = (-2.0 * h).exp();
                let x = (mul(sample, sigma_t / sigma_s * (-h).exp())?
                    + mul(m0, alpha_t * (1.0 - e2))?)?;
                (x + mul(need(noise)?, sigma_t * (1.0 - e2).sqrt())?)?
            }
            AlgorithmType::SdeDpmSolver => {
                let x = (mul(sample, alpha_t / alpha_s)?
                    - mul(m0, 2.0 * (sigma_t * (h.exp() - 1.0)))?)?;
                (x + mul(need(noise)?, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
            }
        })
    }

    fn second_order(
        &self,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (m0, m1) = (self.history(1)?, self.history(2)?);
        let (alpha_t, sigma_t, lambda_t) = self.point(index + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.point(index);
        let (_, _, lambda_s1) = self.point(index - 1);
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d0 = m0;
        let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let heun = self.solver_type == SolverType::Heun;
        Ok(match self.algorithm {
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::Deis => {
                let em1 = (-h).exp() - 1.0;
                let x = (mul(sample, sigma_t / sigma_s0)? - mul(d0, alpha_t * em1)?)?;
                if heun {
                    (x + mul(&d1, alpha_t * (em1 / h + 1.0))?)?
                } else {
                    (x - mul(&d1, 0.5 * (alpha_t * em1))?)?
                }
            }
            AlgorithmType::DpmSolver => {
                let em1 = h.exp() - 1.0;
                let x = (mul(sample, alpha_t / alpha_s0)? - mul(d0, sigma_t * em1)?)?;
                if heun {
                    (x - mul(&d1, sigma_t * (em1 / h - 1.0))?)?
                } else {
                    (x - mul(&d1, 0.5 * (sigma_t * em1))?)?
                }
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let one_m_e2 = 1.0 - (-2.0 * h).exp();
                let x =
                    (mul(sample, sigma_t / sigma_s0 * (-h).exp())? + mul(d0, alpha_t * one_m_e2)?)?;
                let x = if heun {
                    (x + mul(&d1, alpha_t * (one_m_e2 / (-2.0 * h) + 1.0))?)?
                } else {
                    (x + mul(&d1, 0.5 * (alpha_t * one_m_e2))?)?
                };
                (x + mul(need(noise)?, sigma_t * one_m_e2.sqrt())?)?
            }
            AlgorithmType::SdeDpmSolver => {
                let em1 = h.exp() - 1.0;
                let x = (mul(sample, alpha_t / alpha_s0)? - mul(d0, 2.0 * (sigma_t * em1))?)?;
                let x = if heun {
                    (x - mul(&d1, 2.0 * (sigma_t * (em1 / h - 1.0)))?)?
                } else {
                    (x - mul(&d1, sigma_t * em1)?)?
                };
                (x + mul(need(noise)?, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
            }
        })
    }

    fn third_order(&self, index: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1, m2) = (self.history(1)?, self.history(2)?, self.history(3)?);
        let (alpha_t, sigma_t, lambda_t) = self.point(index + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.point(index);
        let (_, _, lambda_s1) = self.point(index - 1);
        let (_, _, lambda_s2) = self.point(index - 2);
        let (h, h_0, h_1) = (
            lambda_t - lambda_s0,
            lambda_s0 - lambda_s1,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m0;
        let d1_0 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul(&diff, r0 / (r0 + r1))?)?;
        let d2 = mul(&diff, 1.0 / (r0 + r1))?;
        Ok(match self.algorithm {
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::Deis => {
                let em1 = (-h).exp() - 1.0;
                let x = (mul(sample, sigma_t / sigma_s0)? - mul(d0, alpha_t * em1)?)?;
                let x = (x + mul(&d1, alpha_t * (em1 / h + 1.0))?)?;
                (x - mul(&d2, alpha_t * ((em1 + h) / (h * h) - 0.5))?)?
            }
            AlgorithmType::DpmSolver => {
                let em1 = h.exp() - 1.0;
                let x = (mul(sample, alpha_t / alpha_s0)? - mul(d0, sigma_t * em1)?)?;
                let x = (x - mul(&d1, sigma_t * (em1 / h - 1.0))?)?;
                (x - mul(&d2, sigma_t * ((em1 - h) / (h * h) - 0.5))?)?
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let one_m_e2 = 1.0 - (-2.0 * h).exp();
                let x =
                    (mul(sample, sigma_t / sigma_s0 * (-h).exp())? + mul(d0, alpha_t * one_m_e2)?)?;
                let x = (x + mul(&d1, alpha_t * (one_m_e2 / (-2.0 * h) + 1.0))?)?;
                let two_h = 2.0 * h;
                let x = (x + mul(&d2, alpha_t * ((one_m_e2 - two_h) / (two_h * two_h) - 0.5))?)?;
                (x + mul(need(noise)?, sigma_t * one_m_e2.sqrt())?)?
            }
            AlgorithmType::SdeDpmSolver => {
                // diffusers has no third-order SDE-DPM-Solver update (its step fails there).
                return Err(Error::Model(
                    "DPMSolverMultistepScheduler: algorithm_type = 'sde-dpmsolver' has no third-order step; use solver_order 2 or 'sde-dpmsolver++'".into(),
                ));
            }
        })
    }

    /// The converted output `back` steps ago (1 = this step's).
    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - back]
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidInput("scheduler history is shorter than its order".into())
            })
    }
}

fn need(noise: Option<&Tensor>) -> Result<&Tensor> {
    noise.ok_or_else(|| Error::InvalidInput("SDE step without noise".into()))
}

impl Scheduler for DpmSolverMultistep {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let len = self.timesteps.len();
        let short = self.lower_order_final && len < 15;
        let lower_order_final = index == len - 1
            && (self.euler_at_final || short || self.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = index + 2 == len && short;

        let converted = self.convert(&model_output, &sample, index)?;
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));

        // Drawn after the conversion, before the update, as diffusers does.
        let fresh = if self.sde() {
            let drawn = noise.randn(model_output.dims(), "scheduler_step")?;
            Some(f32_tensor(&drawn.to_device(sample.device())?)?)
        } else {
            None
        };
        let fresh = fresh.as_ref();
        let order = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        if index + 1 < order {
            return Err(Error::InvalidInput(format!(
                "scheduler step {index} after {} steps: a multistep scheduler steps in order",
                self.lower_order_nums
            )));
        }
        let prev = if order == 1 {
            let m0 = self.history(1)?.clone();
            self.first_order(index, &m0, &sample, fresh)?
        } else if order == 2 {
            self.second_order(index, &sample, fresh)?
        } else {
            self.third_order(index, &sample, fresh)?
        };
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
