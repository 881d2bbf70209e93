//! diffusers' `PNDMScheduler` (pseudo numerical methods, Liu et al. 2022): a Runge-Kutta
//! warm-up (`prk`, three extra model evaluations per step over the last four timesteps) then
//! linear multistep (`plms`) steps on the remembered model outputs. With `skip_prk_steps`
//! (Stable Diffusion's setting) the warm-up is replaced by a second evaluation at the first
//! timestep, so the schedule has one timestep more than asked.
//!
//! The warm-up and multistep state advance with a counter of the steps taken, not with the
//! index, exactly as diffusers' `counter` does: img2img starting at index k still begins with
//! the warm-up phase's first sub-step.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing};
use super::schedule::{alphas_cumprod, check_steps, numpy_linspace};
use super::{check_index, div, f32_tensor, mul, Scheduler};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;

pub struct Pndm {
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    /// How many of the timesteps are Runge-Kutta sub-steps (0 with `skip_prk_steps`).
    prk_len: usize,
    skip_prk_steps: bool,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// `num_train_timesteps // num_inference_steps`.
    step_ratio: i64,
    prediction_type: PredictionType,
    counter: usize,
    /// The model outputs remembered for the multistep formula.
    ets: Vec<Tensor>,
    /// The Runge-Kutta weighted sum in progress (diffusers starts it as the integer 0).
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

/// The ascending timesteps of the spacing (diffusers' `_timesteps`).
fn base_timesteps(config: &SchedulerConfig, n: usize) -> Vec<i64> {
    let train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => numpy_linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (train / n) as i64;
            (0..n as i64)
                .map(|i| i * ratio + config.steps_offset as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // The trailing timesteps of the other schedulers, in ascending order.
            let mut ts = super::schedule::integer_timesteps(config, n);
            ts.reverse();
            ts
        }
    }
}

impl Pndm {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.kind()?;
        check_steps(config, num_inference_steps)?;
        let n = num_inference_steps;
        let base = base_timesteps(config, n);
        let step_ratio = (config.num_train_timesteps / n) as i64;
        let (prk, plms): (Vec<i64>, Vec<i64>) = if config.skip_prk_steps {
            // _timesteps[:-1], _timesteps[-2:-1], _timesteps[-1:], reversed: the
            // second-to-last timestep twice.
            let len = base.len();
            let mut plms: Vec<i64> = base[..len - 1].to_vec();
            plms.extend_from_slice(&base[len.saturating_sub(2)..len - 1]);
            plms.push(base[len - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            // The warm-up runs over the last four timesteps with half-steps between them.
            if base.len() < 4 {
                return Err(Error::InvalidInput(format!(
                    "PNDMScheduler without skip_prk_steps needs at least 4 inference steps, got {n}"
                )));
            }
            let half = step_ratio / 2;
            let last4 = &base[base.len() - 4..];
            let mut points: Vec<i64> = last4.iter().flat_map(|&t| [t, t + half]).collect();
            points.pop();
            let doubled: Vec<i64> = points.iter().flat_map(|&t| [t, t]).collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..base.len() - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let prk_len = prk.len();
        let timesteps: Vec<i64> = prk.into_iter().chain(plms).collect();
        let alphas_cumprod = alphas_cumprod(config, SchedulerKind::Pndm);
        Ok(Pndm {
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
            prk_len,
            skip_prk_steps: config.skip_prk_steps,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            step_ratio,
            prediction_type: config.prediction_type,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
    }

    /// `alphas_cumprod[t]` with Python's indexing (trailing spacing can reach -1).
    fn alpha_at(&self, t: i64) -> Result<f32> {
        let len = self.alphas_cumprod.len() as i64;
        let i = if t < 0 { t + len } else { t };
        if !(0..len).contains(&i) {
            return Err(Error::InvalidInput(format!(
                "timestep {t} is outside the scheduler's {len} training timesteps"
            )));
        }
        Ok(self.alphas_cumprod[i as usize])
    }

    /// diffusers' `_get_prev_sample` (formula (9) of the PNDM paper), float32 in its order.
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let alpha_t = self.alpha_at(timestep)?;
        let alpha_prev = if prev_timestep >= 0 {
            self.alpha_at(prev_timestep)?
        } else {
            self.final_alpha_cumprod
        };
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let model_output = match self.prediction_type {
            PredictionType::VPrediction => {
                (mul(model_output, alpha_t.sqrt())? + mul(sample, beta_t.sqrt())?)?
            }
            _ => model_output.clone(),
        };
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let moved = div(&mul(&model_output, alpha_prev - alpha_t)?, denom)?;
        Ok((mul(sample, sample_coeff)? - moved)?)
    }

    fn step_prk(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.step_ratio / 2
        };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.timesteps[self.counter / 4 * 4];
        let add = |acc: &Option<Tensor>, term: Tensor| -> Result<Tensor> {
            Ok(match acc {
                Some(acc) => (acc + term)?,
                None => term,
            })
        };
        let mut model_output = model_output.clone();
        match self.counter % 4 {
            0 => {
                let term = mul(&model_output, (1.0f64 / 6.0) as f32)?;
                self.cur_model_output = Some(add(&self.cur_model_output, term)?);
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
            }
            1 | 2 => {
                let term = mul(&model_output, (1.0f64 / 3.0) as f32)?;
                self.cur_model_output = Some(add(&self.cur_model_output, term)?);
            }
            _ => {
                let term = mul(&model_output, (1.0f64 / 6.0) as f32)?;
                model_output = add(&self.cur_model_output, term)?;
                self.cur_model_output = None;
            }
        }
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev = self.prev_sample(&cur_sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        if !self.skip_prk_steps && self.ets.len() < 3 {
            return Err(Error::InvalidInput(
                "PNDMScheduler: a PLMS step needs the Runge-Kutta warm-up's 12 steps first".into(),
            ));
        }
        let (mut timestep, mut prev_timestep) = (timestep, timestep - self.step_ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += self.step_ratio;
        }
        let e = |back: usize| &self.ets[self.ets.len() - back];
        let mut sample = sample.clone();
        let model_output = match self.ets.len() {
            1 if self.counter == 0 => {
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 if self.counter == 1 => {
                let averaged = div(&(model_output + e(1))?, 2.0)?;
                sample = self.cur_sample.take().ok_or_else(|| {
                    Error::InvalidInput("PNDMScheduler: second step without a first".into())
                })?;
                averaged
            }
            2 => div(&(mul(e(1), 3.0)? - e(2))?, 2.0)?,
            3 => {
                let sum = ((mul(e(1), 23.0)? - mul(e(2), 16.0)?)? + mul(e(3), 5.0)?)?;
                div(&sum, 12.0)?
            }
            _ => {
                let sum = (((mul(e(1), 55.0)? - mul(e(2), 59.0)?)? + mul(e(3), 37.0)?)?
                    - mul(e(4), 9.0)?)?;
                mul(&sum, (1.0f64 / 24.0) as f32)?
            }
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps_f64
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
        let timestep = self.timesteps[index];
        if self.counter < self.prk_len && !self.skip_prk_steps {
            self.step_prk(&model_output, timestep, &sample)
        } else {
            self.step_plms(&model_output, timestep, &sample)
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        check_index(index, self.timesteps.len())?;
        let alpha = self.alpha_at(self.timesteps[index])?;
        let signal = mul(&f32_tensor(original)?, alpha.sqrt())?;
        Ok((signal + mul(&f32_tensor(noise)?, (1.0 - alpha).sqrt())?)?)
    }
}
