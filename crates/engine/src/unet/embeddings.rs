//! Sinusoidal timestep embeddings and the MLP that widens them (diffusers' `Timesteps` and
//! `TimestepEmbedding`), computed in f32 like diffusers.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// Sinusoidal embedding of `values` (any float, e.g. 981.0 or an SDXL size 1024) of width
/// `dim`: frequencies exp(-ln(10000) * i / (half - shift)), sin then cos (cos first when
/// `flip_sin_to_cos`). Returns f32 `[len(values), dim]`.
pub fn sinusoidal(
    values: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(values.len() * dim);
    // diffusers computes exponent and products in float32; keep that rounding.
    let log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_period * i as f32 / (half as f32 - shift as f32)).exp())
        .collect();
    for &v in values {
        let args: Vec<f32> = freqs.iter().map(|f| v as f32 * f).collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        let (first, second) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        out.extend(first);
        out.extend(second);
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (values.len(), dim), device)
}

/// linear -> SiLU -> linear.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, cin: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(cin, dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = self.linear_1.weight().dtype();
        self.linear_2
            .forward(&self.linear_1.forward(&x.to_dtype(dtype)?)?.silu()?)
    }
}
