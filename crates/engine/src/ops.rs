//! Building blocks shared by the UNet, the VAE and the text encoders: group normalisation
//! (optionally fused with SiLU), multi-head scaled dot-product attention.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// GroupNorm over NCHW (or N, C, ...) tensors, statistics in f32 whatever the input dtype.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!("group norm {}: {groups} groups do not divide {channels} channels", vb.prefix());
        }
        Ok(Self { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.norm(x, false)
    }

    /// `silu(group_norm(x))`, the pair every resnet block starts with.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.norm(x, true)
    }

    fn norm(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = x.dims();
        let (b, c) = (dims[0], dims[1]);
        let per_group = x.elem_count() / (b * self.groups);
        let dtype = x.dtype();
        let xg = x.to_dtype(DType::F32)?.reshape((b, self.groups, per_group))?;
        let mean = xg.mean_keepdim(2)?;
        let centred = xg.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut shape = vec![1; dims.len()];
        shape[1] = c;
        let w = self.weight.to_dtype(DType::F32)?.reshape(shape.as_slice())?;
        let bias = self.bias.to_dtype(DType::F32)?.reshape(shape.as_slice())?;
        let y = normed.reshape(dims)?.broadcast_mul(&w)?.broadcast_add(&bias)?;
        let y = if silu { y.silu()? } else { y };
        y.to_dtype(dtype)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        GroupNorm::forward(self, x)
    }
}

/// Query rows processed at once, so that the score matrix of a long sequence
/// (4096 x 4096 per head at 512 px) is never materialised whole.
const QUERY_CHUNK: usize = 1024;

/// Multi-head scaled dot-product attention: q `[B, Sq, H*D]`, k and v `[B, Sk, H*D]` ->
/// `[B, Sq, H*D]`, softmax in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, sq, c) = q.dims3()?;
    let sk = k.dim(1)?;
    let d = c / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let split = |t: &Tensor, s: usize| t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (split(q, sq)?, split(k, sk)?, split(v, sk)?);
    let kt = k.transpose(2, 3)?.contiguous()?;
    let mut outs = Vec::with_capacity(sq.div_ceil(QUERY_CHUNK));
    let mut start = 0;
    while start < sq {
        let len = QUERY_CHUNK.min(sq - start);
        let qc = q.narrow(2, start, len)?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = Tensor::cat(&outs, 2)?;
    out.transpose(1, 2)?.reshape((b, sq, c))
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
