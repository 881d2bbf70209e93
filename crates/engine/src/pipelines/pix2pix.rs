//! diffusers' `StableDiffusionInstructPix2PixPipeline`: the UNet sees the noisy latents
//! concatenated with the input image's latents (8 channels) and is guided three ways: by
//! the text, by the image, and by neither.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::patchable::Patchable;
use super::preview::LatentRgb;
use super::text::TextEncoder;
use super::{EditOutput, EditParams, ImagePipeline, Step, Watch};
use crate::error::{Error, Result};
use crate::image_io::{self, RgbImage};
use crate::lora::LoraAdapter;
use crate::noise::NoiseSource;
use crate::schedulers::{self, SchedulerConfig};
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKl;
use crate::weights::TensorMap;
use std::sync::Arc;

pub struct Pix2PixPipeline {
    text: TextEncoder,
    unet: Patchable<UNet2DConditionModel>,
    vae: AutoencoderKl,
    vae_dtype: DType,
    scheduler: SchedulerConfig,
    device: Device,
}

impl Pix2PixPipeline {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let scheduler = SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?;
        scheduler.kind()?;
        let unet = Patchable::unet(&dir.join("unet"), None, dtype, device)?;
        let vae_dtype = vae_dtype(dtype);
        let vae = AutoencoderKl::load(&dir.join("vae"), None, vae_dtype, device)?;
        let latent = vae.config().latent_channels;
        if unet.model().config().in_channels != 2 * latent {
            return Err(Error::Model(format!(
                "{}: an instruct-pix2pix UNet takes {} input channels (latents + image latents), this one takes {}",
                dir.display(),
                2 * latent,
                unet.model().config().in_channels
            )));
        }
        Ok(Self {
            text: TextEncoder::load(dir, "tokenizer", "text_encoder", device, dtype)?,
            unet,
            vae,
            vae_dtype,
            scheduler,
            device: device.clone(),
        })
    }
}

/// The VAE runs in the model's precision: instruct-pix2pix's VAE is SD's, which decodes fine
/// in f16 and asks for no upcast (diffusers runs it in the pipeline's dtype too). Any
/// other precision runs it in f32, the reference.
fn vae_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => dtype,
        _ => DType::F32,
    }
}

impl ImagePipeline for Pix2PixPipeline {
    fn name(&self) -> &'static str {
        "StableDiffusionInstructPix2PixPipeline"
    }

    fn run_watched(
        &self,
        p: &EditParams,
        image: &RgbImage,
        noise: &mut dyn NoiseSource,
        watch: Watch,
    ) -> Result<EditOutput> {
        // diffusers: guidance needs both a text scale above 1 and an image scale of at least 1.
        let guided = p.guidance_scale > 1.0 && p.image_guidance_scale >= 1.0;
        let mut scheduler = schedulers::build(&self.scheduler, p.num_inference_steps)?;

        // Prompt embeddings: [text, unconditional, unconditional] when guided.
        let prompts: Vec<&str> = if guided {
            vec![&p.prompt, &p.negative_prompt]
        } else {
            vec![&p.prompt]
        };
        let embeds = self.text.encode(&prompts)?.last_hidden_state;
        let context = if guided {
            Tensor::cat(
                &[
                    embeds.narrow(0, 0, 1)?,
                    embeds.narrow(0, 1, 1)?,
                    embeds.narrow(0, 1, 1)?,
                ],
                0,
            )?
        } else {
            embeds
        };

        // Image latents: the posterior's mode, unscaled; zeros for the image-unconditional branch.
        let pixels = image_io::preprocess(image, self.vae.scale_factor(), &self.device)?;
        let image_latents = self.vae.encode(&pixels.to_dtype(self.vae_dtype)?)?.mode();
        let image_latents = if guided {
            Tensor::cat(
                &[&image_latents, &image_latents, &image_latents.zeros_like()?],
                0,
            )?
        } else {
            image_latents
        };

        let (_, c, h, w) = image_latents.dims4()?;
        let unet = self.unet.model();
        let latent_channels = unet.config().in_channels - c;
        let init = noise
            .randn(&[1, latent_channels, h, w], "initial_latents")?
            .to_device(&self.device)?;
        let mut latents = (init * scheduler.init_noise_sigma())?;

        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents, &latents], 0)?
            } else {
                latents.clone()
            };
            // Cast to the UNet's precision here, as img2img does: the scheduler works in f32.
            let input = scheduler
                .scale_model_input(&input, i)?
                .to_dtype(unet.dtype())?;
            let input = Tensor::cat(&[&input, &image_latents.to_dtype(unet.dtype())?], 1)?;
            let pred = unet
                .forward(&input, t, &context, None)?
                .to_dtype(DType::F32)?;
            let pred = if guided {
                let (text, img, uncond) = (
                    pred.narrow(0, 0, 1)?,
                    pred.narrow(0, 1, 1)?,
                    pred.narrow(0, 2, 1)?,
                );
                let text_dir = ((text - &img)? * p.guidance_scale)?;
                let image_dir = ((img - &uncond)? * p.image_guidance_scale)?;
                ((uncond + text_dir)? + image_dir)?
            } else {
                pred
            };
            latents = scheduler.step(&pred, i, &latents, noise)?;
            let step = Step {
                done: i + 1,
                total: timesteps.len(),
                latents: &latents,
            };
            if watch(step).is_break() {
                return Err(Error::Cancelled);
            }
        }

        let scaled = (&latents / self.vae.config().scaling_factor)?;
        let decoded = self.vae.decode(&scaled.to_dtype(self.vae_dtype)?)?;
        Ok(EditOutput {
            images: image_io::to_unit_nhwc(&decoded.to_dtype(DType::F32)?)?,
            latents,
        })
    }

    fn latent_rgb(&self) -> LatentRgb {
        // instruct-pix2pix is fine-tuned from SD 1.5 and keeps its VAE.
        LatentRgb::SD
    }

    fn lora_targets(&self) -> Vec<(&'static str, &TensorMap)> {
        vec![self.unet.base(), self.text.base()]
    }

    fn set_loras(&mut self, adapters: &[(Arc<LoraAdapter>, f64)]) -> Result<()> {
        let set = self
            .unet
            .set_loras(adapters)
            .and_then(|()| self.text.set_loras(adapters));
        if set.is_err() {
            self.unet.set_loras(&[])?;
            self.text.set_loras(&[])?;
        }
        set
    }
}
