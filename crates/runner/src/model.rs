//! What the worker needs of a model: one image at a time from an input image and a request.
//! A trait of the runner's own, so that the queue, cancellation and error paths can be
//! tested with fake models (slow, failing, panicking) as well as with the engine.

use std::ops::ControlFlow;

use tessera_api::CheckedRequest;
use tessera_engine::editor::{EditRequest, Editor};
use tessera_engine::image_io::RgbImage;
use tessera_engine::pipelines::EditParams;

/// One output image to make.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub params: EditParams,
    /// LoRA adapters (id or path, strength), as parsed from the `loras` field.
    pub loras: Vec<(String, f64)>,
    /// The generator seed of this image (`seed + i` for the request's image `i`).
    pub seed: u64,
    pub safety_check: bool,
}

impl ImageRequest {
    /// One request per output image of a checked request, image `i` with seed `seed + i`.
    pub fn each_image(request: &CheckedRequest) -> Vec<Self> {
        let params = EditParams {
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            num_inference_steps: request.num_inference_steps as usize,
            guidance_scale: request.guidance_scale,
            image_guidance_scale: request.image_guidance_scale,
            strength: request.strength,
        };
        request
            .seeds
            .iter()
            .map(|&seed| Self {
                params: params.clone(),
                loras: request.loras.clone(),
                seed,
                safety_check: request.safety_check,
            })
            .collect()
    }
}

/// One generated image and whether the safety checker flagged it.
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: RgbImage,
    pub nsfw: bool,
}

/// One finished denoising step of the image being made.
pub struct ModelStep<'a> {
    /// Steps done (1 after the first) and steps the image takes.
    pub step: usize,
    pub steps: usize,
    /// Renders a cheap preview of the image being made; `None` when the model has none.
    pub preview: &'a dyn Fn() -> Option<RgbImage>,
}

/// A loaded model, owned by the worker thread.
pub trait Model: Send {
    /// Generates one image, telling `on_step` of each denoising step. `keep_going` turns
    /// false when nobody waits for the result any more; a model should stop then, within a
    /// step (its result is thrown away).
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        keep_going: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(ModelStep<'_>),
    ) -> tessera_engine::Result<Generated>;
}

/// The engine's editor: the model with the settings it forces, LoRA adapters switched per
/// request, the safety checker, torch-compatible noise from the seed (so that a seed gives
/// what diffusers gives).
impl Model for Editor {
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        keep_going: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(ModelStep<'_>),
    ) -> tessera_engine::Result<Generated> {
        let edit = EditRequest {
            params: request.params.clone(),
            loras: request.loras.clone(),
            seed: request.seed,
            num_images: 1,
            safety_check: request.safety_check,
        };
        let out = self.edit_watched(image, &edit, &mut |step| {
            on_step(ModelStep {
                step: step.step,
                steps: step.steps,
                preview: &|| step.preview().ok(),
            });
            if keep_going() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        // Empty only when the client left before the image was finished.
        let edited = out
            .into_iter()
            .next()
            .ok_or(tessera_engine::Error::Cancelled)?;
        Ok(Generated {
            image: edited.image,
            nsfw: edited.nsfw,
        })
    }
}
