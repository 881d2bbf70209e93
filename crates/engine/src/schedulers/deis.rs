//! diffusers' `DEISMultistepScheduler` (diffusion exponential integrator sampler, Zhang & Chen
//! 2022) with its only algorithm, `deis` / `logrho`: multistep updates in rho = sigma / alpha
//! whose coefficients integrate the Lagrange polynomials through the previous noise
//! predictions in log rho. Integer timesteps as DPM-Solver's; the final sigma is never 0.
//!
//! The history lives in the scheduler, counted from the first step the caller takes.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::dpm_multistep::{alpha_sigma, lambda};
use super::schedule::{alphas_cumprod, check_steps, solver_timesteps};
use super::sigmas::{beta, exponential, karras, sigma_to_t, train_sigmas};
use super::{check_index, div, f32_tensor, mul, threshold, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct DeisMultistep {
    timesteps: Vec<f64>,
    /// One more than the timesteps: the last repeated (respaced) or the smallest training one.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    solver_order: usize,
    lower_order_final: bool,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    thresholding: Option<(f64, f64)>,
}

fn schedule(config: &SchedulerConfig, n: usize) -> (Vec<i64>, Vec<f32>) {
    let train = train_sigmas(&alphas_cumprod(config, SchedulerKind::DeisMultistep));
    let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
    // Read from the config although no `__init__` argument (diffusers keeps the file's keys).
    let min = config.sigma_min.unwrap_or(train[0] as f64);
    let max = config.sigma_max.unwrap_or(train[train.len() - 1] as f64);
    // Karras timesteps are rounded whatever the beta schedule (unlike DPM-Solver's).
    let (timesteps, sigmas) =
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
            let mut sigmas = sigmas;
            sigmas.push(sigmas[sigmas.len() - 1]);
            (timesteps, sigmas)
        } else {
            let timesteps = solver_timesteps(config, n, config.num_train_timesteps);
            let mut sigmas: Vec<f64> = timesteps
                .iter()
                .map(|&t| train[t.clamp(0, train.len() as i64 - 1) as usize] as f64)
                .collect();
            sigmas.push(train[0] as f64);
            (timesteps, sigmas)
        };
    let sigmas = sigmas.into_iter().map(|s| s as f32).collect();
    (timesteps, sigmas)
}

/// The second-order integral of the Lagrange basis in log rho (diffusers' `ind_fn`), float32.
fn ind2(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// The third-order one.
fn ind3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lc, ld, lb) = (t.ln(), c.ln(), d.ln(), b.ln());
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    let denominator = (lb - lc) * (lb - ld);
    numerator / denominator
}

impl DeisMultistep {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let (timesteps, sigmas) = schedule(config, num_inference_steps);
        Ok(DeisMultistep {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas,
            prediction_type: config.prediction_type,
            solver_order: config.solver_order,
            lower_order_final: config.lower_order_final,
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            thresholding: config.threshold_options(),
        })
    }

    /// The noise level at each timestep, followed by the final one (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The noise the model's output implies (through the clean sample, as diffusers does).
    fn convert(&self, model_output: &Tensor, sample: &Tensor, index: usize) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index]);
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => div(&(sample - mul(model_output, sigma_t)?)?, alpha_t)?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => (mul(sample, alpha_t)? - mul(model_output, sigma_t)?)?,
        };
        let x0 = match self.thresholding {
            Some((ratio, max)) => threshold(&x0, ratio, max)?,
            None => x0,
        };
        div(&(sample - mul(&x0, alpha_t)?)?, sigma_t)
    }

    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - back]
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidInput("scheduler history is shorter than its order".into())
            })
    }

    /// rho = sigma / alpha at sigma index `i`, and alpha.
    fn rho(&self, i: usize) -> (f32, f32) {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        (sigma / alpha, alpha)
    }
}

impl Scheduler for DeisMultistep {
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
        let (model_output, sample) = (f32_tensor(model_output)?, f32_tensor(sample)?);
        let len = self.timesteps.len();
        let short = self.lower_order_final && len < 15;
        let lower_order_final = index == len - 1 && short;
        let lower_order_second = index + 2 == len && short;
        let converted = self.convert(&model_output, &sample, index)?;
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        let order = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        if index + 1 < order {
            return Err(Error::InvalidInput(format!(
                "scheduler step {index}: a multistep scheduler steps in order"
            )));
        }
        let prev = match order {
            1 => {
                let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
                let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[index]);
                let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
                (mul(&sample, alpha_t / alpha_s)?
                    - mul(self.history(1)?, sigma_t * (h.exp() - 1.0))?)?
            }
            2 => {
                let (rho_t, alpha_t) = self.rho(index + 1);
                let (rho_s0, alpha_s0) = self.rho(index);
                let (rho_s1, _) = self.rho(index - 1);
                let coef1 = ind2(rho_t, rho_s0, rho_s1) - ind2(rho_s0, rho_s0, rho_s1);
                let coef2 = ind2(rho_t, rho_s1, rho_s0) - ind2(rho_s0, rho_s1, rho_s0);
                let inner = ((div(&sample, alpha_s0)? + mul(self.history(1)?, coef1)?)?
                    + mul(self.history(2)?, coef2)?)?;
                mul(&inner, alpha_t)?
            }
            _ => {
                let (rho_t, alpha_t) = self.rho(index + 1);
                let (rho_s0, alpha_s0) = self.rho(index);
                let (rho_s1, _) = self.rho(index - 1);
                let (rho_s2, _) = self.rho(index - 2);
                let coef1 =
                    ind3(rho_t, rho_s0, rho_s1, rho_s2) - ind3(rho_s0, rho_s0, rho_s1, rho_s2);
                let coef2 =
                    ind3(rho_t, rho_s1, rho_s2, rho_s0) - ind3(rho_s0, rho_s1, rho_s2, rho_s0);
                let coef3 =
                    ind3(rho_t, rho_s2, rho_s0, rho_s1) - ind3(rho_s0, rho_s2, rho_s0, rho_s1);
                let inner = (((div(&sample, alpha_s0)? + mul(self.history(1)?, coef1)?)?
                    + mul(self.history(2)?, coef2)?)?
                    + mul(self.history(3)?, coef3)?)?;
                mul(&inner, alpha_t)?
            }
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
