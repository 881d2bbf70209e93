//! `unet/config.json` of a diffusers `UNet2DConditionModel`, with diffusers' defaults, and the
//! per-block values derived from it the way diffusers derives them.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{read_json, Error, Result};

/// An int for every block, or one int for all of them (diffusers accepts both).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn expand(&self, blocks: usize, key: &str) -> Result<Vec<usize>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Model(format!(
                "unet config: {key} has {} entries for {blocks} down blocks",
                v.len()
            ))),
        }
    }
}

/// `transformer_layers_per_block`: an int, one per block, or (SDXL refiners) one list per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LayersPerBlock {
    One(usize),
    Each(Vec<usize>),
    Nested(Vec<Vec<usize>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_out")]
    pub out_channels: usize,
    #[serde(default = "d_flip")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_onef")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    pub transformer_layers_per_block: Option<LayersPerBlock>,
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<usize>>>,
    #[serde(default = "d_head")]
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Softmax in f32 for half-precision models (SD 2.1). Real configs also say `null`.
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    #[serde(default = "d_onef")]
    pub resnet_out_scale_factor: f64,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "d_three")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_three")]
    pub conv_out_kernel: usize,
    /// Everything else, kept to refuse features we do not implement instead of ignoring them.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

fn d_in() -> usize {
    4
}
fn d_out() -> usize {
    4
}
fn d_flip() -> bool {
    true
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> usize {
    2
}
fn d_one() -> usize {
    1
}
fn d_onef() -> f64 {
    1.0
}
fn d_act() -> String {
    "silu".into()
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> usize {
    1280
}
fn d_head() -> PerBlock {
    PerBlock::One(8)
}
fn d_three() -> usize {
    3
}

/// Settings of one down or up block, resolved from the config.
#[derive(Debug, Clone)]
pub struct BlockSpec {
    pub kind: BlockKind,
    pub heads: usize,
    /// Transformer layers per attention of the block (per resnet for up blocks of refiners).
    pub transformer_layers: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Plain,
    CrossAttn,
}

impl UNetConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.check()
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Refuses options that change the computation and that this engine does not implement.
    fn check(&self) -> std::result::Result<(), String> {
        use crate::error::config_bounds::{at_most, BLOCKS, HEADS, KERNEL, LAYERS, WIDTH};
        let n = self.block_out_channels.len();
        at_most("the number of blocks", n, BLOCKS)?;
        at_most("layers_per_block", self.layers_per_block, LAYERS)?;
        for (key, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("norm_num_groups", self.norm_num_groups),
            ("cross_attention_dim", self.cross_attention_dim),
            (
                "addition_time_embed_dim",
                self.addition_time_embed_dim.unwrap_or(0),
            ),
            (
                "projection_class_embeddings_input_dim",
                self.projection_class_embeddings_input_dim.unwrap_or(0),
            ),
        ] {
            at_most(key, value, WIDTH)?;
        }
        for c in &self.block_out_channels {
            at_most("block_out_channels", *c, WIDTH)?;
        }
        at_most("conv_in_kernel", self.conv_in_kernel, KERNEL)?;
        at_most("conv_out_kernel", self.conv_out_kernel, KERNEL)?;
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{} block_out_channels, {} down blocks, {} up blocks: they must match",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self.act_fn != "silu" {
            return Err(format!(
                "act_fn '{}' is not supported (only silu)",
                self.act_fn
            ));
        }
        for key in [
            "class_embed_type",
            "encoder_hid_dim",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "time_embedding_act_fn",
            "timestep_post_act",
            "num_class_embeds",
            "mid_block_only_cross_attention",
            "cross_attention_norm",
        ] {
            if let Some(v) = self.other.get(key) {
                if !v.is_null() {
                    return Err(format!("{key} = {v} is not supported"));
                }
            }
        }
        let expect = |key: &str, ok: &dyn Fn(&Value) -> bool| match self.other.get(key) {
            Some(v) if !ok(v) => Err(format!("{key} = {v} is not supported")),
            _ => Ok(()),
        };
        expect("time_embedding_type", &|v| v == "positional")?;
        expect("resnet_time_scale_shift", &|v| v == "default")?;
        expect("only_cross_attention", &|v| v == false)?;
        expect("dual_cross_attention", &|v| v == false)?;
        expect("center_input_sample", &|v| v == false)?;
        expect("class_embeddings_concat", &|v| v == false)?;
        expect("resnet_skip_time_act", &|v| v == false)?;
        expect("attention_type", &|v| v == "default")?;
        expect("time_embedding_dim", &|v| v.is_null())?;
        if let Some(Value::Number(n)) = self.other.get("dropout") {
            let _ = n; // inference: dropout is the identity
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if block_kind(t).is_none() {
                return Err(format!("block type '{t}' is not supported"));
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(t) => return Err(format!("mid_block_type '{t}' is not supported")),
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if (self.addition_time_embed_dim.is_none()
                    || self.projection_class_embeddings_input_dim.is_none()) =>
            {
                return Err(
                        "addition_embed_type text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim"
                            .into(),
                    );
            }
            Some("text_time") => {}
            Some(t) => return Err(format!("addition_embed_type '{t}' is not supported")),
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return Err("conv_in_kernel and conv_out_kernel must be odd".into());
        }
        for spec in self.down_specs()?.iter().chain(&self.up_specs()?) {
            at_most("attention heads", spec.heads, HEADS)?;
            for layers in &spec.transformer_layers {
                at_most("transformer_layers_per_block", *layers, LAYERS)?;
            }
        }
        Ok(())
    }

    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Heads per block. diffusers' historical naming: when `num_attention_heads` is absent,
    /// `attention_head_dim` holds the number of heads (not their width).
    fn heads(&self) -> std::result::Result<Vec<usize>, String> {
        let n = self.block_out_channels.len();
        let src = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        src.expand(n, "attention heads").map_err(|e| e.to_string())
    }

    fn transformer_layers(&self) -> std::result::Result<Vec<Vec<usize>>, String> {
        let n = self.block_out_channels.len();
        let per = |v: usize| vec![v; self.layers_per_block];
        Ok(match &self.transformer_layers_per_block {
            None => vec![per(1); n],
            Some(LayersPerBlock::One(v)) => vec![per(*v); n],
            Some(LayersPerBlock::Each(v)) if v.len() == n => v.iter().map(|v| per(*v)).collect(),
            Some(LayersPerBlock::Nested(v)) if v.len() == n => v.clone(),
            Some(_) => {
                return Err("transformer_layers_per_block does not have one entry per block".into())
            }
        })
    }

    pub fn down_specs(&self) -> std::result::Result<Vec<BlockSpec>, String> {
        let heads = self.heads()?;
        let layers = self.transformer_layers()?;
        self.down_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let kind = block_kind_down(t)
                    .ok_or_else(|| format!("down block type '{t}' is not supported"))?;
                Ok(BlockSpec {
                    kind,
                    heads: heads[i],
                    transformer_layers: layers[i].clone(),
                })
            })
            .collect()
    }

    /// Up blocks mirror the down blocks: heads and transformer layers reversed, one more
    /// resnet per block than the down blocks have.
    pub fn up_specs(&self) -> std::result::Result<Vec<BlockSpec>, String> {
        let mut heads = self.heads()?;
        heads.reverse();
        let layers: Vec<Vec<usize>> = match &self.reverse_transformer_layers_per_block {
            Some(rev) => rev.clone(),
            None if matches!(self.transformer_layers_per_block, Some(LayersPerBlock::Nested(_))) => {
                return Err("a nested transformer_layers_per_block needs reverse_transformer_layers_per_block".into())
            }
            None => {
                let mut l = self.transformer_layers()?;
                l.reverse();
                // One more resnet (and attention) per up block, with the block's layer count.
                l.into_iter().map(|v| vec![v[0]; self.layers_per_block + 1]).collect()
            }
        };
        self.up_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let kind = block_kind_up(t)
                    .ok_or_else(|| format!("up block type '{t}' is not supported"))?;
                Ok(BlockSpec {
                    kind,
                    heads: heads[i],
                    transformer_layers: layers[i].clone(),
                })
            })
            .collect()
    }

    /// Mid block: the last block's heads and transformer layers.
    pub fn mid_spec(&self) -> std::result::Result<(usize, usize), String> {
        let heads = *self.heads()?.last().unwrap_or(&8);
        let layers = *self
            .transformer_layers()?
            .last()
            .and_then(|v| v.last())
            .unwrap_or(&1);
        Ok((heads, layers))
    }
}

fn block_kind(t: &str) -> Option<BlockKind> {
    block_kind_down(t).or_else(|| block_kind_up(t))
}

fn block_kind_down(t: &str) -> Option<BlockKind> {
    match t {
        "DownBlock2D" => Some(BlockKind::Plain),
        "CrossAttnDownBlock2D" => Some(BlockKind::CrossAttn),
        _ => None,
    }
}

fn block_kind_up(t: &str) -> Option<BlockKind> {
    match t {
        "UpBlock2D" => Some(BlockKind::Plain),
        "CrossAttnUpBlock2D" => Some(BlockKind::CrossAttn),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> std::result::Result<UNetConfig, String> {
        let text = format!(
            r#"{{"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                "block_out_channels": [32, 64] {extra}}}"#
        );
        let cfg: UNetConfig = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        cfg.check().map(|_| cfg)
    }

    #[test]
    fn real_config_values_parse() {
        // SDXL base ships `"upcast_attention": null`.
        assert!(parse(r#", "upcast_attention": null"#).is_ok());
        assert!(parse(r#", "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816"#).is_ok());
    }

    #[test]
    fn unsupported_options_are_named() {
        let e = parse(r#", "class_embed_type": "timestep""#).unwrap_err();
        assert!(e.contains("class_embed_type"), "{e}");
        let e = parse(r#", "addition_embed_type": "text_time""#).unwrap_err();
        assert!(e.contains("addition_time_embed_dim"), "{e}");
        let e = parse(r#", "addition_embed_type": "image""#).unwrap_err();
        assert!(e.contains("'image'"), "{e}");
        let e = parse(r#", "attention_head_dim": [8, 8, 8]"#).unwrap_err();
        assert!(e.contains("3 entries"), "{e}");
    }
}
