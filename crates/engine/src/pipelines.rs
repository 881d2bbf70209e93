//! Pipelines: from an input image and an instruction to output images, as diffusers'
//! pipelines compute them. `load` picks the pipeline from the folder's `model_index.json`.

mod conditioning;
pub mod img2img;
mod patchable;
pub mod pix2pix;
pub mod preview;
mod text;

pub use img2img::Overrides;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use tessera_api::defaults;

use crate::error::{read_json, Error, Result};
use crate::image_io::RgbImage;
use crate::lora::LoraAdapter;
use crate::noise::NoiseSource;
use crate::weights::TensorMap;

/// What a caller asks of one generation (one output image). Fields a pipeline does not use
/// (`strength` for instruct-pix2pix, `image_guidance_scale` for img2img) are ignored by it.
#[derive(Debug, Clone)]
pub struct EditParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub image_guidance_scale: f64,
    pub strength: f64,
}

impl Default for EditParams {
    /// ai-runner's defaults.
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            num_inference_steps: defaults::NUM_INFERENCE_STEPS as usize,
            guidance_scale: defaults::GUIDANCE_SCALE,
            image_guidance_scale: defaults::IMAGE_GUIDANCE_SCALE,
            strength: defaults::STRENGTH,
        }
    }
}

/// The result of one generation.
pub struct EditOutput {
    /// NHWC f32 in [0, 1], before 8-bit rounding (diffusers' `output_type="np"`).
    pub images: Tensor,
    /// The final latents, before the VAE decode.
    pub latents: Tensor,
}

/// Progress callback: (steps done, steps in total).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// One finished denoising step, as a pipeline reports it to its watcher.
pub struct Step<'a> {
    /// Steps done (1 after the first) and steps the generation runs.
    pub done: usize,
    pub total: usize,
    /// The latents after this step, as the UNet sees them (scaled by the VAE's factor).
    pub latents: &'a Tensor,
}

/// Told of every step; answering `Break` stops the generation before its next step, with
/// [`Error::Cancelled`].
pub type Watch<'a> = &'a mut dyn FnMut(Step<'_>) -> ControlFlow<()>;

pub trait ImagePipeline: Send + Sync {
    /// The diffusers class this pipeline reproduces.
    fn name(&self) -> &'static str;

    /// Generates with `watch` told of every step (and able to stop the loop).
    fn run_watched(
        &self,
        params: &EditParams,
        image: &RgbImage,
        noise: &mut dyn NoiseSource,
        watch: Watch,
    ) -> Result<EditOutput>;

    /// [`ImagePipeline::run_watched`] for callers that only count steps.
    fn run(
        &self,
        params: &EditParams,
        image: &RgbImage,
        noise: &mut dyn NoiseSource,
        progress: Progress,
    ) -> Result<EditOutput> {
        self.run_watched(params, image, noise, &mut |step| {
            progress(step.done, step.total);
            ControlFlow::Continue(())
        })
    }

    /// The linear map from this pipeline's latents to RGB that previews use.
    fn latent_rgb(&self) -> preview::LatentRgb;

    /// The components LoRA adapters may patch: (name in LoRA files, base weights).
    fn lora_targets(&self) -> Vec<(&'static str, &TensorMap)>;

    /// Rebuilds the patchable components with `adapters` merged in at their strengths; an
    /// empty list restores the base model exactly. On error every component is back to base.
    fn set_loras(&mut self, adapters: &[(Arc<LoraAdapter>, f64)]) -> Result<()>;
}

#[derive(serde::Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
}

/// The pipeline classes tessera runs, by diffusers name.
pub const SUPPORTED: [&str; 3] = [
    "StableDiffusionInstructPix2PixPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLImg2ImgPipeline",
];

/// The pipeline for a diffusers model folder, by `model_index.json`'s `_class_name`.
pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn ImagePipeline>> {
    load_with(dir, &Overrides::default(), device, dtype)
}

/// [`load`], with parts of the folder replaced (see [`Overrides`]). Text-to-image classes
/// of the same family load as their img2img counterpart, as diffusers' `from_pipe` would:
/// the components are the same.
pub fn load_with(
    dir: &Path,
    overrides: &Overrides,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn ImagePipeline>> {
    let index_path = dir.join("model_index.json");
    if !index_path.is_file() {
        return Err(Error::Model(format!(
            "{} has no model_index.json: not a diffusers pipeline folder",
            dir.display()
        )));
    }
    let index: ModelIndex = read_json(&index_path)?;
    use img2img::{Flavour, Img2ImgPipeline};
    let img2img = |flavour| -> Result<Box<dyn ImagePipeline>> {
        Ok(Box::new(Img2ImgPipeline::load(
            dir, flavour, overrides, device, dtype,
        )?))
    };
    match index.class_name.as_str() {
        "StableDiffusionInstructPix2PixPipeline" => {
            if overrides.unet_weights.is_some() || overrides.scheduler.is_some() {
                return Err(Error::Model(format!(
                    "{}: instruct-pix2pix takes no UNet or scheduler override",
                    dir.display()
                )));
            }
            Ok(Box::new(pix2pix::Pix2PixPipeline::load(
                dir, device, dtype,
            )?))
        }
        "StableDiffusionImg2ImgPipeline" | "StableDiffusionPipeline" => img2img(Flavour::Sd),
        "StableDiffusionXLImg2ImgPipeline" | "StableDiffusionXLPipeline" => img2img(Flavour::Sdxl),
        other => Err(Error::Model(format!(
            "{}: pipeline class '{other}' is not supported (supported: {})",
            dir.display(),
            SUPPORTED.join(", ")
        ))),
    }
}
