//! The UNet's spatial transformer (`Transformer2DModel`) and its `BasicTransformerBlock`:
//! self-attention, cross-attention on the text embeddings, GEGLU feed-forward.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::ops::{self, Conv2d, GroupNorm};

/// diffusers' `Attention` with separate q/k/v projections (no bias) and `to_out.0` (bias).
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    /// Self-attention when `context` is None.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(ctx)?;
        let v = self.to_v.forward(ctx)?;
        self.to_out
            .forward(&ops::attention(&q, &k, &v, self.heads)?)
    }
}

/// GEGLU feed-forward: project to twice the inner width, gate one half with the exact GELU of
/// the other, project back.
#[derive(Debug)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj_in: candle_nn::linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?,
            proj_out: candle_nn::linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj_out
            .forward(&ops::geglu(&self.proj_in.forward(x)?)?)
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
    ) -> Result<Self> {
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        Ok(Self {
            norm1: ln("norm1")?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: ln("norm2")?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: ln("norm3")?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// Input/output projections are 1x1 convolutions on NCHW in SD 1.x, linear layers on tokens
/// when the config says `use_linear_projection` (SD 2.x, SDXL).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

pub struct TransformerSpec {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl SpatialTransformer {
    pub fn new(vb: VarBuilder, s: &TransformerSpec) -> Result<Self> {
        let c = s.channels;
        let head_dim = c / s.heads;
        let proj = |name: &str| -> Result<Projection> {
            Ok(if s.linear_projection {
                Projection::Linear(candle_nn::linear(c, c, vb.pp(name))?)
            } else {
                Projection::Conv(Conv2d::new(vb.pp(name), c, c, 1, 1, 0)?)
            })
        };
        let blocks = (0..s.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    c,
                    s.heads,
                    head_dim,
                    s.context_dim,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), s.groups, c, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Projection::Conv(c) => ops::to_tokens(&c.forward(&normed)?)?,
            Projection::Linear(l) => l.forward(&ops::to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(&ops::from_tokens(&t, h, w)?)?,
            Projection::Linear(l) => ops::from_tokens(&l.forward(&t)?, h, w)?,
        };
        out + x
    }
}
