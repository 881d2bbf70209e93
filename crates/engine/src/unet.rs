//! diffusers' `UNet2DConditionModel`, built from the checkpoint's `unet/config.json`: SD 1.x/2.x
//! (4 input channels), instruct-pix2pix (8), and SDXL with its `text_time` added conditioning.

mod blocks;
pub mod config;
mod embeddings;
pub(crate) mod resnet;
mod transformer;

use std::path::Path;

use candle_core::{DType, Device, Result as TResult, Tensor};
use candle_nn::VarBuilder;

pub use config::UNetConfig;

use crate::error::{Error, Result};
use crate::ops::{Conv2d, GroupNorm};
use crate::weights;
use blocks::{Common, DownBlock, MidBlock, UpBlock, UpChannels};
use embeddings::TimestepEmbedding;

/// SDXL's extra conditioning: the pooled, projected text embedding of the second encoder and
/// the six size/crop numbers (original h, w, crop top, left, target h, w) per batch item.
pub struct AddedConditioning {
    pub text_embeds: Tensor,
    pub time_ids: Tensor,
}

/// The `text_time` embedding: time ids through sinusoids, concatenated with the text embeds,
/// through an MLP, added to the timestep embedding.
#[derive(Debug)]
struct TextTimeEmbedding {
    time_dim: usize,
    add_embedding: TimestepEmbedding,
}

#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbedding>,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    dtype: DType,
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, config: UNetConfig) -> Result<Self> {
        Self::build(vb, config).map_err(|e| Error::Model(format!("unet: {e}")))
    }

    /// A folder with `config.json` and the weights (`diffusion_pytorch_model[.variant]`).
    pub fn load(dir: &Path, variant: Option<&str>, dtype: DType, device: &Device) -> Result<Self> {
        let config = UNetConfig::from_file(&dir.join("config.json"))?;
        let map = weights::load_component(dir, "diffusion_pytorch_model", variant, device)?;
        Self::from_weights(config, map, dtype, device)
    }

    /// The model from a tensor map named as diffusers saves it (what LoRA patches).
    pub fn from_weights(
        config: UNetConfig,
        weights: weights::TensorMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::new(weights::var_builder(weights, dtype, device), config)
    }

    fn build(vb: VarBuilder, cfg: UNetConfig) -> TResult<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb = cfg.time_embed_dim();
        let (kin, kout) = (cfg.conv_in_kernel, cfg.conv_out_kernel);
        let conv_in = Conv2d::new(vb.pp("conv_in"), cfg.in_channels, ch[0], kin, 1, kin / 2)?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let text_time = match (
            cfg.addition_time_embed_dim,
            cfg.projection_class_embeddings_input_dim,
        ) {
            (Some(time_dim), Some(input))
                if cfg.addition_embed_type.as_deref() == Some("text_time") =>
            {
                Some(TextTimeEmbedding {
                    time_dim,
                    add_embedding: TimestepEmbedding::new(vb.pp("add_embedding"), input, temb)?,
                })
            }
            _ => None,
        };
        let c = Common { cfg: &cfg, temb };
        let down_specs = cfg.down_specs().map_err(candle_core::Error::msg)?;
        let mut down = Vec::with_capacity(n);
        let mut cin = ch[0];
        for (i, spec) in down_specs.iter().enumerate() {
            down.push(DownBlock::new(
                &c,
                vb.pp("down_blocks").pp(i),
                spec,
                cin,
                ch[i],
                i == n - 1,
            )?);
            cin = ch[i];
        }
        let mid = match cfg.mid_block_type {
            Some(_) => Some(MidBlock::new(&c, vb.pp("mid_block"), ch[n - 1])?),
            None => None,
        };
        let up_specs = cfg.up_specs().map_err(candle_core::Error::msg)?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut prev = rev[0];
        for (i, spec) in up_specs.iter().enumerate() {
            let chans = UpChannels {
                prev,
                cout: rev[i],
                skip_in: rev[(i + 1).min(n - 1)],
            };
            up.push(UpBlock::new(
                &c,
                vb.pp("up_blocks").pp(i),
                spec,
                &chans,
                i == n - 1,
            )?);
            prev = rev[i];
        }
        let norm_out = GroupNorm::new(
            vb.pp("conv_norm_out"),
            cfg.norm_num_groups,
            ch[0],
            cfg.norm_eps,
        )?;
        let conv_out = Conv2d::new(
            vb.pp("conv_out"),
            ch[0],
            cfg.out_channels,
            kout,
            1,
            kout / 2,
        )?;
        Ok(Self {
            conv_in,
            time_embedding,
            text_time,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            dtype: vb.dtype(),
            config: cfg,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Predicts the noise (or v) of `sample` `[B, in_channels, h, w]` at `timestep`, conditioned
    /// on `context` `[B, 77, cross_attention_dim]` (and SDXL's added conditioning).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        Ok(self.forward_inner(sample, timestep, context, added)?)
    }

    fn forward_inner(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> TResult<Tensor> {
        let cfg = &self.config;
        let device = sample.device();
        let batch = sample.dim(0)?;
        let t = embeddings::sinusoidal(
            &[timestep],
            cfg.block_out_channels[0],
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
            device,
        )?;
        let mut emb = self
            .time_embedding
            .forward(&t)?
            .broadcast_as((batch, cfg.time_embed_dim()))?;
        match (&self.text_time, added) {
            (Some(tt), Some(a)) => {
                let ids: Vec<f64> = a.time_ids.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
                let time_embeds = embeddings::sinusoidal(
                    &ids,
                    tt.time_dim,
                    cfg.flip_sin_to_cos,
                    cfg.freq_shift,
                    device,
                )?
                .reshape((batch, ()))?;
                let text = a.text_embeds.to_dtype(DType::F32)?;
                let aug = tt
                    .add_embedding
                    .forward(&Tensor::cat(&[&text, &time_embeds], 1)?)?;
                emb = (emb + aug)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this UNet needs text_embeds and time_ids (SDXL conditioning)")
            }
            (None, _) => emb = emb.contiguous()?,
        }
        let temb = emb.silu()?;
        let context = context.to_dtype(self.dtype)?;

        let mut h = self.conv_in.forward(&sample.to_dtype(self.dtype)?)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            h = block.forward(&h, &temb, &context, &mut skips)?;
        }
        if let Some(mid) = &self.mid {
            h = mid.forward(&h, &temb, &context)?;
        }
        for block in &self.up {
            h = block.forward(&h, &temb, &context, &mut skips)?;
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}
