//! The engine as a service sees it: one loaded model answering edit requests of several
//! images each, with the settings the model forces, one seed per image (`seed + i`, as
//! ai-runner numbers them) and the torch-compatible noise that makes a seed reproducible.
//! The CLI's `edit` and the runner both go through here, so they cannot drift apart.

use std::sync::Arc;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::hub::ModelStore;
use crate::image_io::{self, RgbImage};
use crate::lora::{self, LoraCache};
use crate::models::ModelSpec;
use crate::noise::TorchCpuNoise;
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
    /// denoising steps over all images; `keep_going` is asked before each image, so a
    /// request whose client left stops early (with `Ok` of the images made so far).
    pub fn edit(
        &mut self,
        image: &RgbImage,
        request: &EditRequest,
        on_step: &mut dyn FnMut(usize, usize),
        keep_going: &dyn Fn() -> bool,
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
        let mut out = Vec::with_capacity(request.num_images);
        for i in 0..request.num_images {
            if !keep_going() {
                break;
            }
            let seed = request.seed.checked_add(i as u64).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "seed {} + {} images overflows a 64-bit seed",
                    request.seed, request.num_images
                ))
            })?;
            let mut noise = TorchCpuNoise::new(seed);
            let mut progress =
                |done: usize, steps: usize| on_step(i * steps + done, request.num_images * steps);
            let generated = self
                .pipeline
                .run(&params, image, &mut noise, &mut progress)?;
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
