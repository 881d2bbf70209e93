//! The CLIP vision tower of the safety checker: transformers' `CLIPVisionModel` up to its
//! pooled output, built from the checker's `vision_config`.
//!
//! Patches are embedded by a bias-free convolution with stride = kernel = `patch_size`, a
//! learned class token is prepended, learned absolute positions are added, then a layer
//! norm (`pre_layrnorm`, transformers' spelling), pre-norm encoder layers with full
//! (non-causal) self-attention, and the class token's final state through
//! `post_layernorm` is the pooled output. Position embeddings are never interpolated, so
//! the input must be exactly `image_size` square, as transformers requires by default.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::clip::{Activation, EncoderLayer, LayerShape};
use crate::error::{Error, Result};

/// transformers' `CLIPVisionConfig`, the keys the vision model reads; missing keys take its
/// defaults (the ViT-B/32 shape), unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::num_channels")]
    pub num_channels: usize,
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// transformers 5.24's `CLIPVisionConfig` defaults.
mod defaults {
    use super::Activation;

    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn num_channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        32
    }
    pub fn hidden_act() -> Activation {
        Activation::QuickGelu
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
}

impl ClipVisionConfig {
    /// Checks the shapes fit together; the message names the offending keys.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use crate::error::config_bounds::{at_most, HEADS, IMAGE_SIDE, LAYERS, WIDTH};
        at_most("vision num_hidden_layers", self.num_hidden_layers, LAYERS)?;
        at_most(
            "vision num_attention_heads",
            self.num_attention_heads,
            HEADS,
        )?;
        at_most("vision image_size", self.image_size, IMAGE_SIDE)?;
        for (key, value) in [
            ("vision hidden_size", self.hidden_size),
            ("vision intermediate_size", self.intermediate_size),
            ("vision num_channels", self.num_channels),
        ] {
            at_most(key, value, WIDTH)?;
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(format!(
                "vision image_size {} and patch_size {} do not give any patch",
                self.image_size, self.patch_size
            ));
        }
        Ok(())
    }

    fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
        }
    }

    /// Patches per image (the class token not counted).
    fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

#[derive(Debug)]
struct Embeddings {
    patch: Conv2d,
    class: Tensor,
    positions: Tensor,
}

impl Embeddings {
    fn new(vb: VarBuilder, c: &ClipVisionConfig) -> Result<Self> {
        let conv = Conv2dConfig {
            stride: c.patch_size,
            ..Default::default()
        };
        Ok(Self {
            patch: candle_nn::conv2d_no_bias(
                c.num_channels,
                c.hidden_size,
                c.patch_size,
                conv,
                vb.pp("patch_embedding"),
            )?,
            class: vb.get(c.hidden_size, "class_embedding")?,
            positions: vb.get(
                (c.num_patches() + 1, c.hidden_size),
                "position_embedding.weight",
            )?,
        })
    }

    /// [batch, channels, size, size] -> [batch, 1 + patches, hidden].
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let batch = pixels.dim(0)?;
        let patches = self
            .patch
            .forward(pixels)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let hidden = self.class.dim(0)?;
        let class = self.class.reshape((1, 1, hidden))?.repeat((batch, 1, 1))?;
        let tokens = Tensor::cat(&[&class, &patches], 1)?;
        Ok(tokens.broadcast_add(&self.positions)?)
    }
}

/// `CLIPVisionModel`, computing its pooled output.
#[derive(Debug)]
pub struct ClipVisionModel {
    config: ClipVisionConfig,
    embeddings: Embeddings,
    pre_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_norm: LayerNorm,
}

impl ClipVisionModel {
    /// Builds the model with `vb` at the vision model's root (where `embeddings.`,
    /// `pre_layrnorm.`, `encoder.layers.N.` and `post_layernorm.` sit).
    pub fn new(vb: VarBuilder, config: ClipVisionConfig) -> Result<Self> {
        config.validate().map_err(Error::Model)?;
        let c = &config;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder.layers").pp(i), &c.layer_shape()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(vb.pp("embeddings"), c)?,
            pre_norm: candle_nn::layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("pre_layrnorm"),
            )?,
            layers,
            post_norm: candle_nn::layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
            config,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// pixels: [batch, num_channels, image_size, image_size] in the model's dtype ->
    /// pooled output [batch, hidden].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, channels, height, width) = pixels.dims4()?;
        let (c, size) = (self.config.num_channels, self.config.image_size);
        if channels != c || height != size || width != size {
            return Err(Error::InvalidInput(format!(
                "the CLIP vision model takes {c}x{size}x{size} inputs, got {channels}x{height}x{width}"
            )));
        }
        let mut xs = self.pre_norm.forward(&self.embeddings.forward(pixels)?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, None)?;
        }
        let class_state = xs.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.post_norm.forward(&class_state.contiguous()?)?)
    }
}
