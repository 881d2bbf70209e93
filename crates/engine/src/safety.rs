//! The NSFW safety checker: diffusers' `StableDiffusionSafetyChecker`
//! (`CompVis/stable-diffusion-safety-checker`), which ai-runner runs on every output when a
//! request has `safety_check` set, reporting `nsfw` per image and returning the image as it
//! is (unlike diffusers' pipelines, which blacken flagged images).
//!
//! An image goes through the checker's `CLIPImageProcessor` ([`preprocess`]), a CLIP vision
//! tower ([`clip_vision`]) and a bias-free visual projection. The embedding's cosine
//! similarity to 3 "special care" and 17 concept embeddings, minus each one's stored
//! threshold, gives the scores, rounded to 3 decimals as diffusers rounds them. A special
//! score above 0 raises every later score by 0.01 (diffusers' `adjustment`); the image is
//! NSFW when any concept score is above 0.

pub mod clip_vision;
pub mod preprocess;
mod shared;
#[cfg(test)]
mod tests;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use crate::error::{read_json, Error, Result};
use crate::image_io::RgbImage;
use crate::weights::{load_component, var_builder};
use clip_vision::{ClipVisionConfig, ClipVisionModel};
use preprocess::ImageProcessor;
pub use shared::SharedSafetyChecker;

/// The checker ai-runner loads, and the one tessera uses unless told otherwise.
pub const DEFAULT_MODEL_ID: &str = "CompVis/stable-diffusion-safety-checker";

/// The checker's files in its model folder.
const CONFIG_FILE: &str = "config.json";
const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
/// How many concept and special-care embeddings the checker holds (fixed in diffusers).
const CONCEPTS: usize = 17;
const SPECIAL_CONCEPTS: usize = 3;
/// What a special-care hit adds to every later score (diffusers' `adjustment`).
const SPECIAL_CARE_ADJUSTMENT: f32 = 0.01;
/// `torch.nn.functional.normalize`'s floor on the norm.
const NORM_EPS: f64 = 1e-12;

/// The keys of the checker's `config.json` (a `CLIPConfig`) that it reads.
#[derive(Debug, Deserialize)]
struct CheckerConfig {
    /// `CLIPConfig`'s default.
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
    /// Old configs (the Hub's CompVis checker among them) carry this next to a full
    /// `vision_config`. transformers then builds the vision config from it alone, with
    /// `CLIPVisionConfig`'s defaults for what it leaves out.
    #[serde(default)]
    vision_config_dict: Option<serde_json::Value>,
}

fn default_projection_dim() -> usize {
    512
}

impl CheckerConfig {
    fn vision(&self) -> std::result::Result<ClipVisionConfig, String> {
        let value = self
            .vision_config_dict
            .as_ref()
            .or(self.vision_config.as_ref())
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let config: ClipVisionConfig =
            serde_json::from_value(value).map_err(|e| format!("vision config: {e}"))?;
        config.validate()?;
        Ok(config)
    }
}

/// What the checker computed for one image, in the order of the checkpoint's embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyScores {
    /// Cosine similarity of the image embedding to each special-care embedding.
    pub special_cos: Vec<f32>,
    /// Cosine similarity to each concept embedding.
    pub concept_cos: Vec<f32>,
    /// `round(cos - threshold + adjustment, 3)` per special-care concept.
    pub special_scores: Vec<f32>,
    /// `round(cos - threshold + adjustment, 3)` per concept.
    pub concept_scores: Vec<f32>,
    /// Some concept score is above 0.
    pub nsfw: bool,
}

/// A loaded safety checker. Immutable once loaded, so one instance serves every caller
/// (it is `Send + Sync`).
#[derive(Debug)]
pub struct SafetyChecker {
    processor: ImageProcessor,
    vision: ClipVisionModel,
    projection: Linear,
    /// L2-normalised concept embeddings in f32, [17, projection_dim] and [3, projection_dim].
    concepts: Tensor,
    special: Tensor,
    concept_thresholds: Vec<f32>,
    special_thresholds: Vec<f32>,
    device: Device,
    dtype: DType,
    /// Round the pixel values through f16 before the model, as ai-runner does.
    f16_input: bool,
}

impl SafetyChecker {
    /// Loads the checker saved in `dir` (`config.json`, `preprocessor_config.json` and
    /// `model.safetensors` or, as the Hub's CompVis repository ships it, `pytorch_model.bin`;
    /// possibly sharded or as a `.fp16` variant) onto `device`, with its weights in `dtype`.
    /// Scores are always computed in f32 from the projected embedding.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        for file in [CONFIG_FILE, PREPROCESSOR_FILE] {
            if !dir.join(file).is_file() {
                return Err(Error::Model(format!(
                    "safety checker folder {} has no {file}",
                    dir.display()
                )));
            }
        }
        let config_path = dir.join(CONFIG_FILE);
        let config: CheckerConfig = read_json(&config_path)?;
        let vision_config = config
            .vision()
            .map_err(|e| Error::Model(format!("{}: {e}", config_path.display())))?;
        let processor = ImageProcessor::from_file(&dir.join(PREPROCESSOR_FILE))?;
        if let Some((h, w)) = processor.crop {
            let size = vision_config.image_size;
            if (h as usize, w as usize) != (size, size) {
                return Err(Error::Model(format!(
                    "{}: crop_size {h}x{w} does not match the vision model's image_size {size} in {}",
                    dir.join(PREPROCESSOR_FILE).display(),
                    config_path.display()
                )));
            }
        }
        let weights = load_component(dir, "model", None, device)?;
        let vb = var_builder(weights, dtype, device);
        Self::build(vb, &config, vision_config, processor, device, dtype).map_err(|e| {
            Error::Model(format!(
                "safety checker weights in {} do not fit its config: {e}",
                dir.display()
            ))
        })
    }

    fn build(
        vb: VarBuilder,
        config: &CheckerConfig,
        vision_config: ClipVisionConfig,
        processor: ImageProcessor,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let hidden = vision_config.hidden_size;
        let proj = config.projection_dim;
        // transformers 5 saves the tower under `vision_model.`; checkpoints written by
        // earlier versions (the Hub's CompVis one) nest it as `vision_model.vision_model.`.
        let vision_root = if vb.contains_tensor("vision_model.vision_model.post_layernorm.weight") {
            vb.pp("vision_model.vision_model")
        } else {
            vb.pp("vision_model")
        };
        let vision = ClipVisionModel::new(vision_root, vision_config)?;
        let projection = candle_nn::linear_no_bias(hidden, proj, vb.pp("visual_projection"))?;
        // Read in the model dtype, then widened: the thresholds and embeddings are what a
        // model in that dtype holds.
        let f32_of = |shape: &[usize], name: &str| -> Result<Tensor> {
            Ok(vb.get(shape, name)?.to_dtype(DType::F32)?)
        };
        let concepts = l2_normalize(&f32_of(&[CONCEPTS, proj], "concept_embeds")?)?;
        let special = l2_normalize(&f32_of(&[SPECIAL_CONCEPTS, proj], "special_care_embeds")?)?;
        let concept_thresholds = f32_of(&[CONCEPTS], "concept_embeds_weights")?.to_vec1()?;
        let special_thresholds =
            f32_of(&[SPECIAL_CONCEPTS], "special_care_embeds_weights")?.to_vec1()?;
        Ok(Self {
            processor,
            vision,
            projection,
            concepts,
            special,
            concept_thresholds,
            special_thresholds,
            device: device.clone(),
            dtype,
            f16_input: true,
        })
    }

    /// Whether the pixel values are rounded through f16 before the vision model (the
    /// default). ai-runner (`runner/app/pipelines/utils/utils.py`, `SafetyChecker`) loads the
    /// checker in float32 but calls it with
    /// `clip_input=safety_checker_input.pixel_values.to(torch.float16)`; transformers'
    /// `CLIPVisionEmbeddings` casts its input back to the patch embedding's dtype, so the
    /// float32 model sees f16-rounded pixels, and so does tessera by default. Off, the checker
    /// computes what diffusers' own pipelines do in float32 (`.to(dtype)` with the
    /// pipeline's dtype).
    pub fn with_f16_input(mut self, on: bool) -> Self {
        self.f16_input = on;
        self
    }

    /// Whether each image is NSFW.
    pub fn check(&self, images: &[RgbImage]) -> Result<Vec<bool>> {
        Ok(self.scores(images)?.into_iter().map(|s| s.nsfw).collect())
    }

    /// Everything the checker computes for each image.
    pub fn scores(&self, images: &[RgbImage]) -> Result<Vec<SafetyScores>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let embeds = self
            .image_embeds(&self.pixel_values(images)?)?
            .to_dtype(DType::F32)?;
        let embeds = l2_normalize(&embeds)?;
        let special_cos = embeds.matmul(&self.special.t()?)?.to_vec2::<f32>()?;
        let concept_cos = embeds.matmul(&self.concepts.t()?)?.to_vec2::<f32>()?;
        Ok(special_cos
            .into_iter()
            .zip(concept_cos)
            .map(|(special, concept)| {
                score(
                    special,
                    concept,
                    &self.special_thresholds,
                    &self.concept_thresholds,
                )
            })
            .collect())
    }

    /// The vision model's input for `images`: [n, 3, image_size, image_size] f32 on the CPU.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        let size = self.vision.config().image_size;
        let pixels = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let t = self.processor.preprocess(img)?;
                let (_, h, w) = t.dims3()?;
                if (h, w) != (size, size) {
                    return Err(Error::InvalidInput(format!(
                        "image {i} ({}x{}) preprocesses to {w}x{h}, but the safety checker takes {size}x{size}",
                        img.width, img.height
                    )));
                }
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&pixels, 0)?)
    }

    /// The projected image embeddings [n, projection_dim] (model dtype) of `pixel_values`
    /// as [`SafetyChecker::pixel_values`] makes them (rounded through f16 first unless
    /// [`SafetyChecker::with_f16_input`] turned that off).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pixels = if self.f16_input {
            pixel_values.to_dtype(DType::F16)?.to_dtype(DType::F32)?
        } else {
            pixel_values.clone()
        };
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        let pooled = self.vision.forward(&pixels)?;
        Ok(self.projection.forward(&pooled)?)
    }
}

/// `torch.nn.functional.normalize` over the last dimension of a [n, d] tensor.
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(NORM_EPS, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// diffusers' scoring of one image from its cosine similarities. The arithmetic is numpy's
/// on float32 scalars: `cos - threshold`, `+ adjustment`, and `round(.., 3)`, which scales
/// by 1000, rounds half to even and scales back, each step rounded to f32.
fn score(
    special_cos: Vec<f32>,
    concept_cos: Vec<f32>,
    special_thresholds: &[f32],
    concept_thresholds: &[f32],
) -> SafetyScores {
    let mut adjustment = 0.0f32;
    let mut special_scores = Vec::with_capacity(special_cos.len());
    for (&cos, &threshold) in special_cos.iter().zip(special_thresholds) {
        let s = round3(cos - threshold + adjustment);
        if s > 0.0 {
            adjustment = SPECIAL_CARE_ADJUSTMENT;
        }
        special_scores.push(s);
    }
    let concept_scores: Vec<f32> = concept_cos
        .iter()
        .zip(concept_thresholds)
        .map(|(&cos, &threshold)| round3(cos - threshold + adjustment))
        .collect();
    let nsfw = concept_scores.iter().any(|&s| s > 0.0);
    SafetyScores {
        special_cos,
        concept_cos,
        special_scores,
        concept_scores,
        nsfw,
    }
}

/// numpy's `round(x, 3)` for a float32.
fn round3(x: f32) -> f32 {
    (x * 1000.0).round_ties_even() / 1000.0
}
