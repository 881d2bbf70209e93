//! diffusers' `AutoencoderKL`: the VAE that maps images to the diffusion latent space and back.
//!
//! The architecture is built from the component's own `vae/config.json`, as diffusers builds it:
//! an encoder (`conv_in`, `DownEncoderBlock2D`s, a mid block of resnet / self-attention / resnet,
//! group norm + SiLU + `conv_out`) followed by `quant_conv`, and a decoder (`post_quant_conv`,
//! `conv_in`, mid block, `UpDecoderBlock2D`s, group norm + SiLU + `conv_out`). Weight names are
//! diffusers' own, so the checkpoint files of a Hub repository load unchanged; the legacy
//! attention names (`query`/`key`/`value`/`proj_attn`) that diffusers renames on load are
//! accepted too.
//!
//! Scaling by `scaling_factor` / `shift_factor` / `latents_mean` is the pipelines' business, as
//! in diffusers: `encode` returns the raw posterior and `decode` takes unscaled latents.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use crate::error::{read_json, Error, Result};
use crate::ops::{self, Conv2d, ConvGeometry, GroupNorm};
use crate::unet::resnet::{ResnetBlock, ResnetSpec};
use crate::weights::{load_component, var_builder};

/// The encoder's stride-2 downsampling conv. It has no padding of its own: diffusers pads one
/// zero row at the bottom and one column at the right only, so the windows stay aligned to the
/// top-left corner (symmetric padding would shift every latent by half a pixel).
const DOWNSAMPLE: ConvGeometry = ConvGeometry {
    kernel: 3,
    stride: 2,
    pad_before: 0,
    pad_after: 1,
};

/// diffusers builds every VAE resnet and attention norm with this epsilon.
const NORM_EPS: f64 = 1e-6;

/// The `vae/config.json` keys the model is built from. Defaults are those of diffusers'
/// `AutoencoderKL.__init__`, so a config that omits a key means what it means there; keys that
/// do not change the computation (`sample_size`, `_class_name`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub act_fn: String,
    /// Latents are `scaling_factor * (z - shift_factor)` for the diffusion model.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics (SDXL-style pipelines use them instead of
    /// `scaling_factor` alone when both are set).
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// The pipelines run this VAE in f32 even when the rest of the model is in f16.
    pub force_upcast: bool,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![64],
            layers_per_block: 1,
            norm_num_groups: 32,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            act_fn: "silu".into(),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
        }
    }
}

impl VaeConfig {
    /// Reads and checks a `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        config
            .validate()
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Refuses what this implementation cannot build, naming the offending value, rather than
    /// building a model that would silently compute something else.
    fn validate(&self) -> std::result::Result<(), String> {
        use crate::error::config_bounds::{at_most, BLOCKS, LAYERS, WIDTH};
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err("block_out_channels is empty".into());
        }
        at_most("the number of blocks", blocks, BLOCKS)?;
        at_most("layers_per_block", self.layers_per_block, LAYERS)?;
        for (key, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            at_most(key, value, WIDTH)?;
        }
        for c in &self.block_out_channels {
            at_most("block_out_channels", *c, WIDTH)?;
        }
        for (key, types, expected) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != blocks {
                return Err(format!(
                    "{key} has {} entries, block_out_channels {blocks}",
                    types.len()
                ));
            }
            // diffusers strips a "UNetRes" prefix before dispatching on the block name.
            if let Some(bad) = types
                .iter()
                .find(|t| t.strip_prefix("UNetRes").unwrap_or(t) != expected)
            {
                return Err(format!(
                    "unsupported VAE block type '{bad}' in {key} (supported: {expected})"
                ));
            }
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(format!(
                "unsupported VAE act_fn '{}' (supported: silu)",
                self.act_fn
            ));
        }
        let groups = self.norm_num_groups;
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| groups == 0 || c % groups != 0)
        {
            return Err(format!(
                "norm_num_groups {groups} does not divide block channel count {c}"
            ));
        }
        Ok(())
    }

    /// diffusers' `vae_scale_factor`: each block but the last halves the resolution.
    fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// The latent posterior `N(mean, exp(logvar))` of an encoded image.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does, so `exp` neither underflows nor overflows.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits the encoder's `2 * latent_channels` moments into mean and log-variance.
    fn from_moments(moments: &Tensor) -> Result<Self> {
        let half = moments.dim(1)? / 2;
        Ok(Self {
            mean: moments.narrow(1, 0, half)?,
            logvar: moments.narrow(1, half, half)?.clamp(-30f32, 20f32)?,
        })
    }

    /// The most likely latent (what InstructPix2Pix conditions on).
    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }

    /// mean + std * noise; the caller draws `noise` (shape of mean) from its NoiseSource.
    /// The noise is moved to the posterior's device and dtype first, since noise sources
    /// draw f32 on the CPU.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(Error::InvalidInput(format!(
                "VAE posterior noise has shape {:?}, the latents {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        let noise = noise
            .to_device(self.mean.device())?
            .to_dtype(self.mean.dtype())?;
        let std = (&self.logvar * 0.5)?.exp()?;
        Ok((&self.mean + std.mul(&noise)?)?)
    }
}

fn conv3x3(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Conv2d> {
    Ok(Conv2d::with_geometry(
        vb,
        c_in,
        c_out,
        ConvGeometry::same(3),
    )?)
}

fn conv1x1(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Conv2d> {
    Ok(Conv2d::with_geometry(
        vb,
        c_in,
        c_out,
        ConvGeometry::same(1),
    )?)
}

fn group_norm(vb: VarBuilder, groups: usize, channels: usize) -> Result<GroupNorm> {
    Ok(GroupNorm::new(vb, groups, channels, NORM_EPS)?)
}

/// diffusers' `ResnetBlock2D` as the VAE builds it: the UNet's block, without a time
/// embedding (every VAE block has `output_scale_factor` 1 and the config's norm epsilon).
fn resnet_block(vb: VarBuilder, c_in: usize, c_out: usize, groups: usize) -> Result<ResnetBlock> {
    let spec = ResnetSpec {
        cin: c_in,
        cout: c_out,
        temb: None,
        groups,
        eps: NORM_EPS,
        output_scale_factor: 1.0,
    };
    Ok(ResnetBlock::new(vb, &spec)?)
}

/// The mid block's single-head self-attention over all H*W positions (diffusers' `Attention`
/// built from a deprecated attention block): group norm, q/k/v projections, softmax attention
/// scaled by 1/sqrt(C), output projection, residual. The attention itself is the shared
/// `ops::attention` with one head, which never holds the whole (H*W)^2 score matrix.
#[derive(Debug)]
struct MidAttention {
    norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

/// Attention weight names: diffusers' current ones, and those of checkpoints saved by older
/// diffusers versions (which diffusers renames on load).
const ATTENTION_NAMES: [[&str; 4]; 2] = [
    ["to_q", "to_k", "to_v", "to_out.0"],
    ["query", "key", "value", "proj_attn"],
];

impl MidAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let legacy = !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight");
        let [q, k, v, out] = ATTENTION_NAMES[usize::from(legacy)];
        let linear = |name: &str| candle_nn::linear(channels, channels, vb.pp(name));
        Ok(Self {
            norm: group_norm(vb.pp("group_norm"), groups, channels)?,
            to_q: linear(q)?,
            to_k: linear(k)?,
            to_v: linear(v)?,
            to_out: linear(out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let tokens = ops::to_tokens(&self.norm.forward(x)?)?;
        let attended = ops::attention(
            &self.to_q.forward(&tokens)?,
            &self.to_k.forward(&tokens)?,
            &self.to_v.forward(&tokens)?,
            1,
        )?;
        let out = ops::from_tokens(&self.to_out.forward(&attended)?, h, w)?;
        Ok((out + x)?)
    }
}

/// diffusers' `UNetMidBlock2D` as the VAE uses it: resnet, [attention], resnet.
#[derive(Debug)]
struct MidBlock {
    first: ResnetBlock,
    attention: Option<MidAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let attention = match add_attention {
            true => Some(MidAttention::new(vb.pp("attentions.0"), channels, groups)?),
            false => None,
        };
        Ok(Self {
            first: resnet_block(vb.pp("resnets.0"), channels, channels, groups)?,
            attention,
            second: resnet_block(vb.pp("resnets.1"), channels, channels, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x, None)?;
        if let Some(attention) = &self.attention {
            h = attention.forward(&h)?;
        }
        Ok(self.second.forward(&h, None)?)
    }
}

fn resnets(
    vb: VarBuilder,
    count: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock>> {
    let vb = vb.pp("resnets");
    (0..count)
        .map(|i| resnet_block(vb.pp(i), if i == 0 { c_in } else { c_out }, c_out, groups))
        .collect()
}

/// `DownEncoderBlock2D`: resnets, then (except in the last block) a stride-2 conv.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.downsample {
            Some(conv) => Ok(conv.forward(&h)?),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: resnets, then (except in the last block) a 2x nearest upsample + conv.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.upsample {
            Some(conv) => {
                let (_, _, height, width) = h.dims4()?;
                Ok(conv.forward(&h.upsample_nearest2d(2 * height, 2 * width)?)?)
            }
            None => Ok(h),
        }
    }
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = *ch
            .last()
            .expect("validated: block_out_channels is not empty");
        let down = ch
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let vb = vb.pp("down_blocks").pp(i);
                let c_in = ch[i.saturating_sub(1)];
                let downsample = match i + 1 < ch.len() {
                    true => Some(Conv2d::with_geometry(
                        vb.pp("downsamplers.0.conv"),
                        c_out,
                        c_out,
                        DOWNSAMPLE,
                    )?),
                    false => None,
                };
                Ok(DownBlock {
                    resnets: resnets(vb, cfg.layers_per_block, c_in, c_out, groups)?,
                    downsample,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cfg.in_channels, ch[0])?,
            down,
            mid: MidBlock::new(
                vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )?,
            norm_out: group_norm(vb.pp("conv_norm_out"), groups, last)?,
            conv_out: conv3x3(vb.pp("conv_out"), last, 2 * cfg.latent_channels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down {
            h = block.forward(&h)?;
        }
        let h = self.mid.forward(&h)?;
        Ok(self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let up = reversed
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let vb = vb.pp("up_blocks").pp(i);
                let c_in = reversed[i.saturating_sub(1)];
                let upsample = match i + 1 < reversed.len() {
                    true => Some(conv3x3(vb.pp("upsamplers.0.conv"), c_out, c_out)?),
                    false => None,
                };
                // Decoder blocks have one resnet more than encoder blocks.
                let resnets = resnets(vb, cfg.layers_per_block + 1, c_in, c_out, groups)?;
                Ok(UpBlock { resnets, upsample })
            })
            .collect::<Result<Vec<_>>>()?;
        let (deepest, first) = (reversed[0], cfg.block_out_channels[0]);
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cfg.latent_channels, deepest)?,
            mid: MidBlock::new(
                vb.pp("mid_block"),
                deepest,
                groups,
                cfg.mid_block_add_attention,
            )?,
            up,
            norm_out: group_norm(vb.pp("conv_norm_out"), groups, first)?,
            conv_out: conv3x3(vb.pp("conv_out"), first, cfg.out_channels)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let mut h = self.mid.forward(&h)?;
        for block in &self.up {
            h = block.forward(&h)?;
        }
        Ok(self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?)
    }
}

/// diffusers' `AutoencoderKL` (inference only, no tiling or slicing).
#[derive(Debug)]
pub struct AutoencoderKl {
    encoder: Encoder,
    quant_conv: Option<Conv2d>,
    decoder: Decoder,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
}

impl AutoencoderKl {
    /// Builds the model from weights named as in diffusers' checkpoints; a missing or
    /// mis-shaped tensor is an error naming it.
    pub fn new(vb: VarBuilder, config: VaeConfig) -> Result<Self> {
        config.validate().map_err(Error::Model)?;
        let moments = 2 * config.latent_channels;
        let latent = config.latent_channels;
        let quant_conv = match config.use_quant_conv {
            true => Some(conv1x1(vb.pp("quant_conv"), moments, moments)?),
            false => None,
        };
        let post_quant_conv = match config.use_post_quant_conv {
            true => Some(conv1x1(vb.pp("post_quant_conv"), latent, latent)?),
            false => None,
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &config)?,
            quant_conv,
            decoder: Decoder::new(vb.pp("decoder"), &config)?,
            post_quant_conv,
            config,
        })
    }

    /// Folder with config.json + weights; variant as weights::component_files.
    pub fn load(dir: &Path, variant: Option<&str>, dtype: DType, device: &Device) -> Result<Self> {
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        let weights = load_component(dir, "diffusion_pytorch_model", variant, device)?;
        Self::new(var_builder(weights, dtype, device), config)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// 2^(len(block_out_channels)-1), diffusers' vae_scale_factor.
    pub fn scale_factor(&self) -> usize {
        self.config.scale_factor()
    }

    /// image NCHW in [-1,1] -> the latent posterior.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.check_input(x, self.config.in_channels, "image")?;
        let mut moments = self.encoder.forward(x)?;
        if let Some(c) = &self.quant_conv {
            moments = c.forward(&moments)?;
        }
        DiagonalGaussian::from_moments(&moments)
    }

    /// latents (already divided by scaling_factor by the caller) -> image NCHW, about [-1,1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_input(z, self.config.latent_channels, "latents")?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }

    fn check_input(&self, x: &Tensor, channels: usize, what: &str) -> Result<()> {
        match x.dims() {
            [_, c, _, _] if *c == channels => Ok(()),
            dims => Err(Error::InvalidInput(format!(
                "VAE {what} must be (batch, {channels}, height, width), got {dims:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
