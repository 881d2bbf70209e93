//! How a prompt conditions an img2img UNet: SD's one text encoder, or SDXL's two with the
//! pooled projection and size `time_ids` as added conditioning.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::text::TextEncoder;
use super::EditParams;
use crate::error::{read_json, Error, Result};
use crate::lora::LoraAdapter;
use crate::unet::{AddedConditioning, UNetConfig};
use crate::weights::TensorMap;

/// The UNet's conditioning inputs for one generation; with guidance the batch is
/// [unconditional, text], as diffusers orders it.
pub struct Conditioning {
    pub context: Tensor,
    pub added: Option<AddedConditioning>,
}

pub enum Conditioner {
    Sd(Box<TextEncoder>),
    Sdxl(Box<Sdxl>),
}

/// SDXL's text side. The first encoder is absent in refiner-style repositories, which
/// condition on the second alone (and on an aesthetic score instead of the target size).
pub struct Sdxl {
    first: Option<TextEncoder>,
    second: TextEncoder,
    /// `force_zeros_for_empty_prompt`: an empty negative prompt conditions on zeros rather
    /// than on the encoding of "".
    force_zeros: bool,
    requires_aesthetics_score: bool,
}

/// The pipeline-level flags SDXL reads from `model_index.json`.
#[derive(serde::Deserialize)]
struct SdxlIndex {
    #[serde(default = "yes")]
    force_zeros_for_empty_prompt: bool,
    #[serde(default)]
    requires_aesthetics_score: bool,
    #[serde(default)]
    text_encoder: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// diffusers' default aesthetic scores for refiner-style models (positive, negative).
const AESTHETIC_SCORES: (f64, f64) = (6.0, 2.5);

impl Conditioner {
    pub fn load_sd(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self::Sd(Box::new(TextEncoder::load(
            dir,
            "tokenizer",
            "text_encoder",
            device,
            dtype,
        )?)))
    }

    pub fn load_sdxl(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index: SdxlIndex = read_json(&dir.join("model_index.json"))?;
        // `"text_encoder": [null, null]` marks a pipeline without the first encoder.
        let has_first = match &index.text_encoder {
            Some(serde_json::Value::Array(v)) => v.iter().any(|x| !x.is_null()),
            Some(serde_json::Value::Null) => false,
            _ => dir.join("text_encoder").is_dir(),
        };
        let first = if has_first {
            Some(TextEncoder::load(
                dir,
                "tokenizer",
                "text_encoder",
                device,
                dtype,
            )?)
        } else {
            None
        };
        let second = TextEncoder::load(dir, "tokenizer_2", "text_encoder_2", device, dtype)?;
        if !second.has_projection() {
            return Err(Error::Model(format!(
                "{}: text_encoder_2 has no projection for SDXL's pooled text embeds",
                dir.display()
            )));
        }
        Ok(Self::Sdxl(Box::new(Sdxl {
            first,
            second,
            force_zeros: index.force_zeros_for_empty_prompt,
            requires_aesthetics_score: index.requires_aesthetics_score,
        })))
    }

    /// The text encoders' (LoRA name, base weights).
    pub fn lora_targets(&self) -> Vec<(&'static str, &TensorMap)> {
        match self {
            Self::Sd(t) => vec![t.base()],
            Self::Sdxl(x) => x
                .first
                .iter()
                .chain([&x.second])
                .map(|t| t.base())
                .collect(),
        }
    }

    pub fn set_loras(&mut self, adapters: &[(Arc<LoraAdapter>, f64)]) -> Result<()> {
        match self {
            Self::Sd(t) => t.set_loras(adapters),
            Self::Sdxl(x) => {
                if let Some(first) = &mut x.first {
                    first.set_loras(adapters)?;
                }
                x.second.set_loras(adapters)
            }
        }
    }

    /// Fails at load time, naming the folder, when the UNet expects other conditioning than
    /// the text encoders give (mixed-up repositories, an SD UNet in an SDXL pipeline).
    pub fn check_unet(&self, unet: &UNetConfig, dir: &Path) -> Result<()> {
        let mismatch = |what: String| Err(Error::Model(format!("{}: {what}", dir.display())));
        let context = match self {
            Self::Sd(t) => t.config().hidden_size,
            Self::Sdxl(x) => {
                x.first.as_ref().map_or(0, |t| t.config().hidden_size)
                    + x.second.config().hidden_size
            }
        };
        if unet.cross_attention_dim != context {
            return mismatch(format!(
                "the UNet attends to {}-dim text states, the text encoders give {context}",
                unet.cross_attention_dim
            ));
        }
        if let Self::Sdxl(x) = self {
            let expected = unet
                .addition_time_embed_dim
                .map(|d| d * x.time_id_count() + x.second.config().projection_dim);
            if unet.addition_embed_type.as_deref() != Some("text_time")
                || expected != unet.projection_class_embeddings_input_dim
            {
                return mismatch(format!(
                    "the UNet's added conditioning ({:?}, {:?} inputs) does not take SDXL's \
                     pooled text embeds and {} time ids (expected {:?})",
                    unet.addition_embed_type,
                    unet.projection_class_embeddings_input_dim,
                    x.time_id_count(),
                    expected
                ));
            }
        }
        Ok(())
    }

    /// The conditioning for `p`, with the unconditional half when `guided`. `target` is the
    /// (height, width) of the preprocessed input image, SDXL's original and target size.
    pub fn encode(
        &self,
        p: &EditParams,
        guided: bool,
        target: (usize, usize),
    ) -> Result<Conditioning> {
        match self {
            Self::Sd(text) => {
                let prompts: Vec<&str> = if guided {
                    vec![&p.negative_prompt, &p.prompt]
                } else {
                    vec![&p.prompt]
                };
                Ok(Conditioning {
                    context: text.encode(&prompts)?.last_hidden_state,
                    added: None,
                })
            }
            Self::Sdxl(x) => x.encode(p, guided, target),
        }
    }
}

impl Sdxl {
    fn time_id_count(&self) -> usize {
        if self.requires_aesthetics_score {
            5
        } else {
            6
        }
    }

    /// (context, pooled) for `prompts` as one batch: every encoder's penultimate hidden
    /// states side by side, and the second encoder's projected pooled output.
    fn encode_prompts(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let mut states = Vec::with_capacity(2);
        if let Some(first) = &self.first {
            states.push(penultimate(first.encode(prompts)?.hidden_states)?);
        }
        let second = self.second.encode(prompts)?;
        let pooled = second
            .text_embeds
            .clone()
            .ok_or_else(|| Error::Model("text_encoder_2 gave no projected pooled output".into()))?;
        states.push(penultimate(second.hidden_states)?);
        Ok((Tensor::cat(&states, 2)?, pooled))
    }

    fn encode(&self, p: &EditParams, guided: bool, target: (usize, usize)) -> Result<Conditioning> {
        // diffusers zeroes the negative side only when no negative prompt is given at all;
        // callers here cannot tell "absent" from "", so an empty one counts as absent.
        let zero_negative = guided && self.force_zeros && p.negative_prompt.is_empty();
        let (context, pooled) = if guided && !zero_negative {
            self.encode_prompts(&[&p.negative_prompt, &p.prompt])?
        } else {
            let (c, pooled) = self.encode_prompts(&[&p.prompt])?;
            if zero_negative {
                (
                    Tensor::cat(&[&c.zeros_like()?, &c], 0)?,
                    Tensor::cat(&[&pooled.zeros_like()?, &pooled], 0)?,
                )
            } else {
                (c, pooled)
            }
        };
        let (h, w) = (target.0 as f32, target.1 as f32);
        let ids = |score: f64| -> Vec<f32> {
            if self.requires_aesthetics_score {
                vec![h, w, 0.0, 0.0, score as f32]
            } else {
                vec![h, w, 0.0, 0.0, h, w]
            }
        };
        let (pos, neg) = AESTHETIC_SCORES;
        let rows = if guided {
            [ids(neg), ids(pos)].concat()
        } else {
            ids(pos)
        };
        let n = self.time_id_count();
        let time_ids = Tensor::from_vec(rows, (context.dim(0)?, n), context.device())?
            .to_dtype(context.dtype())?;
        Ok(Conditioning {
            context,
            added: Some(AddedConditioning {
                text_embeds: pooled,
                time_ids,
            }),
        })
    }
}

/// transformers' `hidden_states[-2]`: the output of the layer before the last.
fn penultimate(mut hidden: Vec<Tensor>) -> Result<Tensor> {
    if hidden.len() < 2 {
        return Err(Error::Model(
            "a text encoder with no layers has no penultimate hidden state".into(),
        ));
    }
    Ok(hidden.swap_remove(hidden.len() - 2))
}
