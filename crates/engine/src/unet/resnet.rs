//! `ResnetBlock2D` (the UNet's, and without a time embedding the VAE's) and the 2x
//! down/upsamplers of the UNet.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::ops::{Conv2d, GroupNorm};

/// norm1 -> silu -> conv1 -> + time embedding -> norm2 -> silu -> conv2, plus the (1x1
/// projected when channels change) input, divided by `output_scale_factor`.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

pub struct ResnetSpec {
    pub cin: usize,
    pub cout: usize,
    /// Width of the time embedding; None for blocks without one (the VAE's).
    pub temb: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, s: &ResnetSpec) -> Result<Self> {
        let shortcut = if s.cin != s.cout {
            Some(Conv2d::new(vb.pp("conv_shortcut"), s.cin, s.cout, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), s.groups, s.cin, s.eps)?,
            conv1: Conv2d::new(vb.pp("conv1"), s.cin, s.cout, 3, 1, 1)?,
            time_emb_proj: s
                .temb
                .map(|t| candle_nn::linear(t, s.cout, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: GroupNorm::new(vb.pp("norm2"), s.groups, s.cout, s.eps)?,
            conv2: Conv2d::new(vb.pp("conv2"), s.cout, s.cout, 3, 1, 1)?,
            shortcut,
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `temb` is the already SiLU-activated time embedding `[B, temb]` (shared by all blocks).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h = h.broadcast_add(&proj.forward(t)?.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// 3x3 stride-2 convolution (diffusers' `Downsample2D` with `use_conv`).
#[derive(Debug)]
pub struct Downsample(Conv2d);

impl Downsample {
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self(Conv2d::new(
            vb.pp("conv"),
            channels,
            channels,
            3,
            2,
            padding,
        )?))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

/// Nearest-neighbour upsampling to `size` (2x, or the skip connection's size when the input
/// was not a multiple of the total downsampling factor), then a 3x3 convolution.
#[derive(Debug)]
pub struct Upsample(Conv2d);

impl Upsample {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self(Conv2d::new(
            vb.pp("conv"),
            channels,
            channels,
            3,
            1,
            1,
        )?))
    }

    pub fn forward(&self, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        self.0.forward(&x.upsample_nearest2d(size.0, size.1)?)
    }
}
