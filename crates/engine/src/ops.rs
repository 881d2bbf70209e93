//! Building blocks shared by the UNet, the VAE and the text encoders: convolution, group
//! normalisation (optionally fused with SiLU), multi-head attention, GEGLU.
//!
//! Each has one entry point here. On the CPU in f32 they run the fused kernels of
//! `cpu_kernels`; elsewhere (CUDA, f16/bf16) the same maths as plain candle ops.

mod conv;
mod cpu_kernels;
pub mod fast_math;

pub use conv::{Conv2d, ConvGeometry, ConvKernel};

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

fn fused_cpu(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// GroupNorm over `[N, C, ...]`, statistics in f32 or better whatever the input dtype.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    /// weight and bias stacked `[2, C]` in f32, for the fused CPU kernel.
    packed: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "group norm {}: {groups} groups do not divide {channels} channels",
                vb.prefix()
            );
        }
        let (weight, bias) = (vb.get(channels, "weight")?, vb.get(channels, "bias")?);
        let packed = Tensor::stack(&[&weight, &bias], 0)?.to_dtype(DType::F32)?;
        Ok(Self {
            weight,
            bias,
            packed,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.norm(x, false)
    }

    /// `silu(group_norm(x))`, the pair every resnet block starts with.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.norm(x, true)
    }

    fn norm(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if fused_cpu(x) {
            let op = cpu_kernels::GroupNormOp {
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            return x
                .contiguous()?
                .apply_op2_no_bwd(&self.packed.to_device(x.device())?, &op);
        }
        let dims = x.dims();
        let (b, c) = (dims[0], dims[1]);
        let per_group = x.elem_count() / (b * self.groups);
        let dtype = x.dtype();
        // Half-precision inputs are normalised in f32; f64 stays f64.
        let work = match dtype {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let xg = x.to_dtype(work)?.reshape((b, self.groups, per_group))?;
        let mean = xg.mean_keepdim(2)?;
        let centred = xg.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut shape = vec![1; dims.len()];
        shape[1] = c;
        let w = self.weight.to_dtype(work)?.reshape(shape.as_slice())?;
        let bias = self.bias.to_dtype(work)?.reshape(shape.as_slice())?;
        let y = normed
            .reshape(dims)?
            .broadcast_mul(&w)?
            .broadcast_add(&bias)?;
        let y = if silu { y.silu()? } else { y };
        y.to_dtype(dtype)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        GroupNorm::forward(self, x)
    }
}

/// Query rows per step of the generic path, so that the score matrix of a long sequence
/// (4096 x 4096 per head at 512 px) is never materialised whole.
const QUERY_CHUNK: usize = 1024;

/// Multi-head scaled dot-product attention: q `[B, Sq, H*D]`, k and v `[B, Sk, H*D]` ->
/// `[B, Sq, H*D]`, softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, sq, c) = q.dims3()?;
    let sk = k.dim(1)?;
    let d = c / heads;
    let scale = 1.0 / (d as f64).sqrt();
    if fused_cpu(q) {
        let op = cpu_kernels::Attention {
            heads,
            scale: scale as f32,
        };
        return q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op);
    }
    let split = |t: &Tensor, s: usize| t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous();
    // The scale goes on q rather than on the scores: Sq x D products instead of Sq x Sk, and
    // in half precision the unscaled q.k sums of wide heads (D = 512 in the VAE) could
    // overflow f16 before the scale brought them back.
    let (q, k, v) = (split(&(q * scale)?, sq)?, split(k, sk)?, split(v, sk)?);
    let kt = k.transpose(2, 3)?.contiguous()?;
    let mut outs = Vec::with_capacity(sq.div_ceil(QUERY_CHUNK));
    let mut start = 0;
    while start < sq {
        let len = QUERY_CHUNK.min(sq - start);
        let scores = q.narrow(2, start, len)?.matmul(&kt)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    Tensor::cat(&outs, 2)?.transpose(1, 2)?.reshape((b, sq, c))
}

/// GEGLU's gate: `[.., 2n]` -> `[.., n]`, the first half times the exact GELU of the second.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    if fused_cpu(x) {
        return x.contiguous()?.apply_op1_no_bwd(&cpu_kernels::Geglu);
    }
    let half = x.dim(D::Minus1)? / 2;
    x.narrow(D::Minus1, 0, half)? * gelu(&x.narrow(D::Minus1, half, half)?)?
}

/// Exact (erf) GELU, as PyTorch's default `gelu` — not the tanh approximation.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// Reshapes NCHW to `[N, H*W, C]` (tokens) and back.
pub fn to_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

pub fn from_tokens(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    x.transpose(1, 2)?.reshape((b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_testkit::max_abs_diff;

    /// The fused CPU kernels against the generic candle path (run in f64 as the reference).
    #[test]
    fn fused_kernels_match_generic_ops() {
        let dev = Device::Cpu;
        let w = crate::weights::RandomWeights::new();
        let vb = w.var_builder(DType::F32, &dev);
        let x = (Tensor::randn(0f32, 1.0, (2, 64, 9, 7), &dev).unwrap() + 3.0).unwrap();

        let gn = GroupNorm::new(vb.pp("gn"), 8, 64, 1e-5).unwrap();
        let gn64 = GroupNorm::new(w.var_builder(DType::F64, &dev).pp("gn"), 8, 64, 1e-5).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        for silu in [false, true] {
            let (a, b) = (
                gn.norm(&x, silu).unwrap(),
                gn64.norm(&x64, silu).unwrap().to_dtype(DType::F32).unwrap(),
            );
            assert!(
                max_abs_diff(&a, &b) < 1e-5,
                "group norm silu={silu}: {}",
                max_abs_diff(&a, &b)
            );
        }

        let q = Tensor::randn(0f32, 1.0, (2, 130, 64), &dev).unwrap();
        let kv = Tensor::randn(0f32, 1.0, (2, 77, 64), &dev).unwrap();
        let fused = attention(&q, &kv, &kv, 4).unwrap();
        let (q64, kv64) = (
            q.to_dtype(DType::F64).unwrap(),
            kv.to_dtype(DType::F64).unwrap(),
        );
        let plain = attention(&q64, &kv64, &kv64, 4)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(
            max_abs_diff(&fused, &plain) < 1e-5,
            "attention: {}",
            max_abs_diff(&fused, &plain)
        );

        let g = Tensor::randn(0f32, 2.0, (3, 5, 40), &dev).unwrap();
        let fused = geglu(&g).unwrap();
        let plain = geglu(&g.to_dtype(DType::F64).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(
            max_abs_diff(&fused, &plain) < 1e-5,
            "geglu: {}",
            max_abs_diff(&fused, &plain)
        );
    }

    /// One head (the VAE's mid block) over more query rows than the generic path takes per
    /// chunk: the fused kernel against the chunked generic path in f64.
    #[test]
    fn single_head_attention_over_query_chunks() {
        let dev = Device::Cpu;
        let tokens = QUERY_CHUNK + 37;
        let qkv: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (2, tokens, 16), &dev).unwrap())
            .collect();
        let fused = attention(&qkv[0], &qkv[1], &qkv[2], 1).unwrap();
        let wide: Vec<Tensor> = qkv
            .iter()
            .map(|t| t.to_dtype(DType::F64).unwrap())
            .collect();
        let plain = attention(&wide[0], &wide[1], &wide[2], 1)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let diff = max_abs_diff(&fused, &plain);
        assert!(diff < 1e-5, "attention: {diff}");
    }
}
