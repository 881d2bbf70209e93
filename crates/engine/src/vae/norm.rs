//! Group normalisation, optionally fused with the SiLU that follows it almost everywhere in
//! the VAE.
//!
//! On the CPU in f32 (the reference path) it runs as one custom kernel: per (batch, group) a
//! mean pass, a variance pass and one pass writing `silu(gamma * x_hat + beta)`, instead of the
//! eight full-size tensor ops (each allocating its output) that the composed version costs. The
//! statistics are accumulated in f64, so the kernel is at least as accurate as torch's. Other
//! devices and dtypes use candle's composed group norm.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Module, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::error::Result;

#[derive(Debug)]
pub(super) struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub(super) fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self {
            inner,
            weight,
            bias,
            groups,
            eps,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `silu(group_norm(x))`.
    pub(super) fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            let op = FusedGroupNorm {
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            return Ok(x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight, &self.bias, &op)?);
        }
        self.run_composed(x, silu)
    }

    /// The same from candle's generic ops (any device and dtype).
    fn run_composed(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let y = self.inner.forward(x)?;
        Ok(if silu { y.silu()? } else { y })
    }
}

/// The CPU kernel: inputs x (B, C, ...) contiguous, gamma (C), beta (C).
struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "vae-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        gamma: &CpuStorage,
        gamma_layout: &Layout,
        beta: &CpuStorage,
        beta_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout)?;
        let gamma = contiguous_f32(gamma, gamma_layout)?;
        let beta = contiguous_f32(beta, beta_layout)?;
        let dims = x_layout.dims();
        let channels = dims[1];
        if gamma.len() != channels
            || beta.len() != channels
            || !channels.is_multiple_of(self.groups)
        {
            candle_core::bail!(
                "group norm: {channels} channels, {} groups, {} weights",
                self.groups,
                gamma.len()
            )
        }
        let per_channel: usize = dims[2..].iter().product();
        let per_group = per_channel * channels / self.groups;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(per_group.max(1))
            .zip(x.par_chunks(per_group.max(1)))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let first_channel = (i % self.groups) * (channels / self.groups);
                self.normalise_group(
                    x,
                    out,
                    per_channel,
                    &gamma[first_channel..],
                    &beta[first_channel..],
                );
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

impl FusedGroupNorm {
    /// Normalises one group: `x` holds its channels one after the other, `per_channel`
    /// values each; `gamma`/`beta` start at the group's first channel.
    fn normalise_group(
        &self,
        x: &[f32],
        out: &mut [f32],
        per_channel: usize,
        gamma: &[f32],
        beta: &[f32],
    ) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv_std = 1.0 / (var + self.eps).sqrt();
        for (c, (out, x)) in out
            .chunks_mut(per_channel)
            .zip(x.chunks(per_channel))
            .enumerate()
        {
            // y = x * scale + shift, with the normalisation and the affine folded together.
            let scale = (gamma[c] as f64 * inv_std) as f32;
            let shift = (beta[c] as f64 - mean * gamma[c] as f64 * inv_std) as f32;
            if self.silu {
                for (o, &v) in out.iter_mut().zip(x) {
                    let y = v * scale + shift;
                    *o = y / (1.0 + (-y).exp());
                }
            } else {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * scale + shift;
                }
            }
        }
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("group norm: input is not contiguous"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_candle_group_norm() {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 1f32, 6, &device).unwrap();
        let bias = Tensor::randn(0f32, 1f32, 6, &device).unwrap();
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), 6, 3, 1e-6).unwrap();
        let norm = GroupNorm {
            inner,
            weight,
            bias,
            groups: 3,
            eps: 1e-6,
        };
        // An offset mean checks that the statistics do not lose precision to it.
        let x = (Tensor::randn(0f32, 2f32, (2, 6, 5, 7), &device).unwrap() + 3.0).unwrap();
        for silu in [false, true] {
            let fast = norm.run(&x, silu).unwrap();
            let reference = norm.run_composed(&x, silu).unwrap();
            let diff: f32 = (fast - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-5, "silu {silu}: {diff}");
        }
    }
}
