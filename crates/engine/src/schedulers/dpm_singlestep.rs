//! diffusers' `DPMSolverSinglestepScheduler`: DPM-Solver(++) in groups of `solver_order`
//! steps, each group an order-1, order-2, ... ladder from the sample at its start (the order of
//! each step is fixed by `get_order_list`). Integer linspace timesteps (the class takes no
//! spacing), no input scaling; the SDE variant draws one noise tensor per step.
//!
//! The group's start sample and the converted outputs live in the scheduler. A step whose
//! order needs history that the run has not produced (img2img starting inside a group) falls
//! back to a lower order, as diffusers does.

use candle_core::Tensor;

use super::config::{
    AlgorithmType, FinalSigmasType, PredictionType, SchedulerConfig, SchedulerKind, SolverType,
};
use super::dpm_multistep::{alpha_sigma, convert, lambda, last_timestep};
use super::schedule::{alphas_cumprod, check_steps, solver_timesteps};
use super::sigmas::{beta, exponential, karras, sigma_to_t, train_sigmas};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct DpmSolverSinglestep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    algorithm: AlgorithmType,
    heun: bool,
    solver_order: usize,
    orders: Vec<usize>,
    model_outputs: Vec<Option<Tensor>>,
    /// The sample at the start of the current group.
    group_sample: Option<Tensor>,
    thresholding: Option<(f64, f64)>,
}

/// diffusers' `get_order_list`.
fn order_list(steps: usize, order: usize, lower_order_final: bool, final_zero: bool) -> Vec<usize> {
    let repeat = |pattern: &[usize], times: usize| -> Vec<usize> {
        pattern
            .iter()
            .copied()
            .cycle()
            .take(pattern.len() * times)
            .collect()
    };
    let mut orders = if lower_order_final {
        match order {
            3 => match steps % 3 {
                0 => [
                    repeat(&[1, 2, 3], (steps / 3).saturating_sub(1)),
                    vec![1, 2, 1],
                ]
                .concat(),
                1 => [repeat(&[1, 2, 3], steps / 3), vec![1]].concat(),
                _ => [repeat(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
            },
            2 => {
                if steps.is_multiple_of(2) {
                    [repeat(&[1, 2], (steps / 2).saturating_sub(1)), vec![1, 1]].concat()
                } else {
                    [repeat(&[1, 2], steps / 2), vec![1]].concat()
                }
            }
            _ => vec![1; steps],
        }
    } else {
        match order {
            3 => repeat(&[1, 2, 3], steps / 3),
            2 => repeat(&[1, 2], steps / 2),
            _ => vec![1; steps],
        }
    };
    if final_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

impl DpmSolverSinglestep {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let n = num_inference_steps;
        let alphas_cumprod = alphas_cumprod(config, SchedulerKind::DpmSolverSinglestep);
        let train = train_sigmas(&alphas_cumprod);
        let log_sigmas: Vec<f32> = train.iter().map(|s| s.ln()).collect();
        let min = config.sigma_min.unwrap_or(train[0] as f64);
        let max = config.sigma_max.unwrap_or(train[train.len() - 1] as f64);
        let (timesteps, mut sigmas): (Vec<i64>, Vec<f64>) = if config.use_karras_sigmas
            || config.use_exponential_sigmas
            || config.use_beta_sigmas
        {
            let sigmas = if config.use_karras_sigmas {
                karras(min, max, n)
            } else if config.use_beta_sigmas {
                beta(min, max, n)
            } else {
                exponential(min, max, n)
            };
            // Karras timesteps rounded (whatever the schedule), exponential ones truncated.
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
            (timesteps, sigmas)
        } else {
            // The class takes no timestep_spacing: always linspace.
            let last = last_timestep(config, &alphas_cumprod);
            let timesteps = solver_timesteps(config, n, last);
            let sigmas = timesteps
                .iter()
                .map(|&t| train[t.clamp(0, train.len() as i64 - 1) as usize] as f64)
                .collect();
            (timesteps, sigmas)
        };
        let final_zero = config.final_sigmas_type == FinalSigmasType::Zero;
        sigmas.push(if final_zero { 0.0 } else { train[0] as f64 });
        // diffusers turns lower_order_final on for step counts the order does not divide
        // and for a final sigma of 0 (and keeps it on in its config afterwards).
        let lower_order_final =
            config.lower_order_final || !n.is_multiple_of(config.solver_order) || final_zero;
        Ok(DpmSolverSinglestep {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            prediction_type: config.prediction_type,
            algorithm: config.dpm_algorithm(),
            heun: config.dpm_solver_type() == SolverType::Heun,
            solver_order: config.solver_order,
            orders: order_list(n, config.solver_order, lower_order_final, final_zero),
            model_outputs: vec![None; config.solver_order],
            group_sample: None,
            thresholding: config.threshold_options(),
        })
    }

    /// The noise level at each timestep, followed by the final one (diffusers' `sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn point(&self, i: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        (alpha, sigma, lambda(alpha, sigma))
    }

    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - back]
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidInput("scheduler history is shorter than its order".into())
            })
    }

    /// The order-`order` update from the group's start sample `x` (at sigma index
    /// `index + 1 - order`) to `index + 1`.
    fn update(
        &self,
        index: usize,
        order: usize,
        x: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.point(index + 1);
        let (alpha_s, sigma_s, lambda_s) = self.point(index + 1 - order);
        let h = lambda_t - lambda_s;
        let pp = self.algorithm != AlgorithmType::DpmSolver;
        let sde = self.algorithm == AlgorithmType::SdeDpmSolverPlusPlus;
        let em1 = if pp { (-h).exp() - 1.0 } else { h.exp() - 1.0 };
        let one_m_e2 = 1.0 - (-2.0 * h).exp();
        // The part every order shares: the sample term and D0's.
        let d0 = self.history(order)?;
        let mut x_t = if sde {
            (mul(x, sigma_t / sigma_s * (-h).exp())? + mul(d0, alpha_t * one_m_e2)?)?
        } else if pp {
            (mul(x, sigma_t / sigma_s)? - mul(d0, alpha_t * em1)?)?
        } else {
            (mul(x, alpha_t / alpha_s)? - mul(d0, sigma_t * em1)?)?
        };
        // Higher-order terms: (D1 coefficient, D1), (D2 coefficient, D2).
        let mut terms: Vec<(f32, Tensor)> = Vec::new();
        let d1_coef = if sde {
            alpha_t * (one_m_e2 / (-2.0 * h) + 1.0)
        } else if pp {
            alpha_t * (em1 / h + 1.0)
        } else {
            -(sigma_t * (em1 / h - 1.0))
        };
        match order {
            1 => {}
            2 => {
                let (_, _, lambda_s0) = self.point(index);
                let r0 = (lambda_s0 - lambda_s) / h;
                let (m0, m1) = (self.history(1)?, self.history(2)?);
                let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
                let coef = match (self.heun, sde, pp) {
                    (true, _, _) => d1_coef,
                    (false, true, _) => 0.5 * (alpha_t * one_m_e2),
                    (false, false, true) => -(0.5 * (alpha_t * em1)),
                    (false, false, false) => -(0.5 * (sigma_t * em1)),
                };
                terms.push((coef, d1));
            }
            _ => {
                let (_, _, lambda_s0) = self.point(index);
                let (_, _, lambda_s1) = self.point(index - 1);
                let (r0, r1) = ((lambda_s0 - lambda_s) / h, (lambda_s1 - lambda_s) / h);
                let (m0, m1, m2) = (self.history(1)?, self.history(2)?, self.history(3)?);
                let d1_0 = mul(&(m1 - m2)?, 1.0 / r1)?;
                let d1_1 = mul(&(m0 - m2)?, 1.0 / r0)?;
                if self.heun {
                    let d1 = div(&(mul(&d1_0, r0)? - mul(&d1_1, r1)?)?, r0 - r1)?;
                    let d2 = div(&mul(&(&d1_1 - &d1_0)?, 2.0)?, r0 - r1)?;
                    let d2_coef = if sde {
                        let m2h = -2.0 * h;
                        alpha_t * ((one_m_e2 + m2h) / (m2h * m2h) - 0.5)
                    } else if pp {
                        -(alpha_t * ((em1 + h) / (h * h) - 0.5))
                    } else {
                        -(sigma_t * ((em1 - h) / (h * h) - 0.5))
                    };
                    terms.push((d1_coef, d1));
                    terms.push((d2_coef, d2));
                } else {
                    terms.push((d1_coef, d1_1));
                }
            }
        }
        // diffusers subtracts where the coefficient is written negated; x - c*D equals
        // x + (-c)*D exactly, so the sign is folded into the coefficient.
        for (coef, d) in terms {
            x_t = (x_t + mul(&d, coef)?)?;
        }
        if sde {
            let noise =
                noise.ok_or_else(|| Error::InvalidInput("SDE step without noise".into()))?;
            x_t = (x_t + mul(noise, sigma_t * one_m_e2.sqrt())?)?;
        }
        Ok(x_t)
    }
}

impl Scheduler for DpmSolverSinglestep {
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
        let plus_plus = self.algorithm != AlgorithmType::DpmSolver;
        let converted = convert(
            plus_plus,
            self.prediction_type,
            self.thresholding,
            self.sigmas[index],
            &model_output,
            &sample,
        )?;
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(converted));
        let fresh = if self.algorithm == AlgorithmType::SdeDpmSolverPlusPlus {
            let drawn = noise.randn(model_output.dims(), "scheduler_step")?;
            Some(f32_tensor(&drawn.to_device(sample.device())?)?)
        } else {
            None
        };
        let mut order = self.orders.get(index).copied().unwrap_or(1);
        while order > 1 && self.model_outputs[self.solver_order - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.group_sample = Some(sample);
        }
        if index + 1 < order {
            return Err(Error::InvalidInput(format!(
                "scheduler step {index}: a multistep scheduler steps in order"
            )));
        }
        let start = self
            .group_sample
            .clone()
            .ok_or_else(|| Error::InvalidInput("singlestep group without a start".into()))?;
        self.update(index, order, &start, fresh.as_ref())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index]);
        Ok((mul(&f32_tensor(original)?, alpha_t)? + mul(&f32_tensor(noise)?, sigma_t)?)?)
    }
}
