//! What the worker needs of a model: one image at a time from an input image and a request.
//! A trait of the runner's own, so that the queue, cancellation and error paths can be
//! tested with fake models (slow, failing, panicking) as well as with the engine.

use tessera_engine::image_io::{self, RgbImage};
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::{EditParams, ImagePipeline};

/// One output image to make.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub params: EditParams,
    /// The generator seed of this image (`seed + i` for the request's image `i`).
    pub seed: u64,
    pub safety_check: bool,
}

/// One generated image and whether the safety checker flagged it.
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: RgbImage,
    pub nsfw: bool,
}

/// A loaded model, owned by the worker thread.
pub trait Model: Send {
    /// Generates one image. `keep_going` turns false when nobody waits for the result any
    /// more; a model may stop early then (its result is thrown away).
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        keep_going: &dyn Fn() -> bool,
    ) -> tessera_engine::Result<Generated>;
}

/// The engine's pipelines, with torch-compatible CPU noise from the seed (so that a seed
/// gives what diffusers gives). They have no safety checker yet: the form refuses
/// `safety_check=true`, so `nsfw` is never claimed false for an image that was checked.
impl Model for Box<dyn ImagePipeline> {
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        _keep_going: &dyn Fn() -> bool,
    ) -> tessera_engine::Result<Generated> {
        let mut noise = TorchCpuNoise::new(request.seed);
        let out = self.run(&request.params, image, &mut noise, &mut |_, _| {})?;
        let image = image_io::to_rgb8(&out.images)?
            .into_iter()
            .next()
            .ok_or_else(|| tessera_engine::Error::Model("the pipeline returned no image".into()))?;
        Ok(Generated { image, nsfw: false })
    }
}
