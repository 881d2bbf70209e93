//! The engine as a service sees it: one loaded model answering edit requests of several
//! images each, with the settings the model forces, one seed per image (`seed + i`, as
//! ai-runner numbers them) and the torch-compatible noise that makes a seed reproducible.
//! The CLI's `edit` and the runner both go through here, so they cannot drift apart.

use std::ops::ControlFlow;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::hub::ModelStore;
use crate::image_io::{self, RgbImage};
use crate::lora::{self, LoraCache};
use crate::models::ModelSpec;
use crate::noise::TorchCpuNoise;
use crate::pipelines::preview::LatentRgb;
use crate::pipelines::{EditParams, ImagePipeline};
use crate::safety::SharedSafetyChecker;

/// What to load.
#[derive(Debug, Clone)]
pub struct EditorConfig {
    /// A hub id (see [`ModelSpec::for_id`]) or a diffusers folder.
    pub model_id: String,
    pub store: ModelStore,
    pub device: Device,
    pub dtype: DType,
    /// The NSFW checker, loaded when a request first asks for a check; one per process.
    pub safety: Arc<SharedSafetyChecker>,
}

/// One request: the generation parameters and how many images, from which seed.
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub params: EditParams,
    /// LoRA adapters (id or path, scale), as parsed from the request's `loras` field.
    pub loras: Vec<(String, f64)>,
    /// The first image's seed; image `i` uses `seed + i`.
    pub seed: u64,
    pub num_images: usize,
    /// Run the NSFW checker on every image.
    pub safety_check: bool,
}

/// One output image.
#[derive(Debug, Clone)]
pub struct EditedImage {
    pub image: RgbImage,
    pub seed: u64,
    /// What the safety checker said; false when the check was not asked for (ai-runner).
    pub nsfw: bool,
}

/// One finished denoising step of an edit, as [`Editor::edit_watched`] reports it.
pub struct EditStep<'a> {
    /// The image being made (from 0) and how many the request makes.
    pub image: usize,
    pub images: usize,
    /// Steps done of this image (1 after its first) and the steps each image takes.
    pub step: usize,
    pub steps: usize,
    latents: &'a Tensor,
    latent_rgb: LatentRgb,
}

impl EditStep<'_> {
    /// A cheap preview of the image being made: its latents mapped linearly to RGB, at the
    /// latents' size. Computed only when asked for.
    pub fn preview(&self) -> Result<RgbImage> {
        self.latent_rgb.to_rgb(self.latents)
    }
}

pub struct Editor {
    spec: ModelSpec,
    pipeline: Box<dyn ImagePipeline>,
    /// Where LoRA repositories are looked up.
    store: ModelStore,
    safety: Arc<SharedSafetyChecker>,
    loras: LoraCache,
    /// The adapters merged into the pipeline now, as requested.
    active: Vec<(String, f64)>,
}

impl Editor {
    /// Resolves and loads the model (downloading it when the store allows and it is missing).
    pub fn load(config: &EditorConfig) -> Result<Self> {
        let spec = ModelSpec::for_id(&config.model_id)?;
        let pipeline = spec.load(&config.store, &config.device, config.dtype)?;
        Ok(Self {
            spec,
            pipeline,
            store: config.store.clone(),
            safety: config.safety.clone(),
            loras: LoraCache::new(),
            active: Vec::new(),
        })
    }

    /// The id requests name this model by.
    pub fn model_id(&self) -> &str {
        &self.spec.id
    }

    /// The diffusers pipeline class this model runs as.
    pub fn pipeline_name(&self) -> &'static str {
        self.pipeline.name()
    }

    /// The parameters a request actually runs with (turbo and Lightning force some).
    pub fn effective_params(&self, params: &EditParams) -> EditParams {
        self.spec.apply(params)
    }

    /// Generates `request.num_images` images from `image`, one after another (one image's
    /// activations in memory at a time, as ai-runner does). `on_step(done, total)` counts
    /// denoising steps over all images; `keep_going` is asked after every step, so a
    /// request whose client left stops within a step (with `Ok` of the images made so far).
    pub fn edit(
        &mut self,
        image: &RgbImage,
        request: &EditRequest,
        on_step: &mut dyn FnMut(usize, usize),
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Vec<EditedImage>> {
        if !keep_going() {
            return Ok(Vec::new());
        }
        self.edit_watched(image, request, &mut |step| {
            on_step(
                step.image * step.steps + step.step,
                step.images * step.steps,
            );
            if keep_going() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })
    }

    /// [`Editor::edit`] with every step reported to `watch` (which can render a preview);
    /// answering `Break` stops the edit before its next step, with `Ok` of the images
    /// finished so far.
    pub fn edit_watched(
        &mut self,
        image: &RgbImage,
        request: &EditRequest,
        watch: &mut dyn FnMut(EditStep<'_>) -> ControlFlow<()>,
    ) -> Result<Vec<EditedImage>> {
        if request.num_images == 0 {
            return Err(Error::InvalidInput(
                "num_images_per_prompt must be at least 1".into(),
            ));
        }
        if request.params.num_inference_steps == 0 {
            return Err(Error::InvalidInput(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        self.use_loras(&request.loras)?;
        // Loaded before any denoising: a request that cannot be checked fails at once.
        let checker = match request.safety_check {
            true => Some(self.safety.get()?),
            false => None,
        };
        let params = self.effective_params(&request.params);
        let latent_rgb = self.pipeline.latent_rgb();
        let mut out = Vec::with_capacity(request.num_images);
        for i in 0..request.num_images {
            let seed = request.seed.checked_add(i as u64).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "seed {} + {} images overflows a 64-bit seed",
                    request.seed, request.num_images
                ))
            })?;
            let mut noise = TorchCpuNoise::new(seed);
            let mut report = |step: crate::pipelines::Step<'_>| {
                watch(EditStep {
                    image: i,
                    images: request.num_images,
                    step: step.done,
                    steps: step.total,
                    latents: step.latents,
                    latent_rgb,
                })
            };
            let generated = match self
                .pipeline
                .run_watched(&params, image, &mut noise, &mut report)
            {
                Ok(generated) => generated,
                Err(Error::Cancelled) => break,
                Err(e) => return Err(e),
            };
            for image in image_io::to_rgb8(&generated.images)? {
                // The image is returned as it is either way, as ai-runner does.
                let nsfw = match &checker {
                    Some(c) => c.check(std::slice::from_ref(&image))?.contains(&true),
                    None => false,
                };
                out.push(EditedImage { image, seed, nsfw });
            }
        }
        Ok(out)
    }

    /// Makes `wanted` the adapters merged into the pipeline, unless they already are. Every
    /// adapter is loaded and checked before the pipeline changes, so a bad one leaves the
    /// model as the previous request had it.
    fn use_loras(&mut self, wanted: &[(String, f64)]) -> Result<()> {
        if wanted == self.active.as_slice() {
            return Ok(());
        }
        let mut adapters = Vec::with_capacity(wanted.len());
        for (id, scale) in wanted {
            let adapter = self.loras.get_or_load(&self.store, id)?;
            lora::check_compatible(&adapter, &self.pipeline.lora_targets())?;
            adapters.push((adapter, *scale));
        }
        let started = std::time::Instant::now();
        // A failed switch leaves the pipeline at its base weights.
        self.active.clear();
        self.pipeline.set_loras(&adapters)?;
        self.active = wanted.to_vec();
        tracing::info!(
            loras = ?self.active,
            secs = started.elapsed().as_secs_f64(),
            "LoRA adapters switched"
        );
        Ok(())
    }
}
