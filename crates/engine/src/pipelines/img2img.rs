//! diffusers' `StableDiffusionImg2ImgPipeline` and `StableDiffusionXLImg2ImgPipeline`: the
//! input image is encoded, noised to the timestep `strength` picks, and denoised from there
//! under classifier-free guidance. SD and SDXL differ only in how the prompt conditions the
//! UNet ([`Conditioner`]) and in SDXL's VAE latent statistics, so one loop serves both.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::conditioning::{Conditioner, Conditioning};
use super::patchable::Patchable;
use super::preview::LatentRgb;
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

/// Which of the two diffusers pipelines a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Sd,
    Sdxl,
}

/// What a model id may change about a folder's own pipeline (SDXL-Lightning: the UNet
/// weights from another repository, and a scheduler option).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// A safetensors file replacing `unet/`'s weights (the UNet config stays the folder's).
    pub unet_weights: Option<PathBuf>,
    /// The scheduler config to use instead of `scheduler/scheduler_config.json`.
    pub scheduler: Option<SchedulerConfig>,
}

pub struct Img2ImgPipeline {
    flavour: Flavour,
    conditioner: Conditioner,
    unet: Patchable<UNet2DConditionModel>,
    vae: AutoencoderKl,
    vae_dtype: DType,
    scheduler: SchedulerConfig,
    device: Device,
}

impl Img2ImgPipeline {
    pub fn load(
        dir: &Path,
        flavour: Flavour,
        overrides: &Overrides,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let scheduler = match &overrides.scheduler {
            Some(s) => s.clone(),
            None => SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?,
        };
        scheduler.kind()?;
        let unet = Patchable::unet(
            &dir.join("unet"),
            overrides.unet_weights.as_deref(),
            dtype,
            device,
        )
        .map_err(|e| match (&overrides.unet_weights, e) {
            (Some(file), Error::Model(why)) => Error::Model(format!("{}: {why}", file.display())),
            (_, e) => e,
        })?;
        let vae_config = crate::vae::VaeConfig::from_file(&dir.join("vae/config.json"))?;
        // diffusers runs the SDXL VAE in float32 when its config says half precision
        // overflows (`force_upcast`); the SD img2img pipeline never upcasts.
        let vae_dtype = match flavour {
            Flavour::Sdxl if vae_config.force_upcast => DType::F32,
            _ => dtype,
        };
        let vae = AutoencoderKl::load(&dir.join("vae"), None, vae_dtype, device)?;
        let latent = vae.config().latent_channels;
        let unet_config = unet.model().config();
        if unet_config.in_channels != latent {
            return Err(Error::Model(format!(
                "{}: an img2img UNet takes the {latent} latent channels as input, this one takes {}",
                dir.display(),
                unet_config.in_channels
            )));
        }
        let conditioner = match flavour {
            Flavour::Sd => Conditioner::load_sd(dir, device, dtype)?,
            Flavour::Sdxl => Conditioner::load_sdxl(dir, device, dtype)?,
        };
        conditioner.check_unet(unet_config, dir)?;
        Ok(Self {
            flavour,
            conditioner,
            unet,
            vae,
            vae_dtype,
            scheduler,
            device: device.clone(),
        })
    }

    /// SDXL VAEs may carry per-channel latent statistics; SD ones only a scaling factor.
    fn latent_stats(&self) -> Result<Option<(Tensor, Tensor)>> {
        let cfg = self.vae.config();
        match (self.flavour, &cfg.latents_mean, &cfg.latents_std) {
            (Flavour::Sdxl, Some(mean), Some(std)) => {
                let shape = (1, mean.len(), 1, 1);
                let as_tensor = |v: &[f64]| -> Result<Tensor> {
                    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    Ok(Tensor::from_vec(v, shape, &self.device)?)
                };
                Ok(Some((as_tensor(mean)?, as_tensor(std)?)))
            }
            _ => Ok(None),
        }
    }

    /// Image latents as the UNet sees them: the posterior sampled, then normalised.
    fn encode_image(&self, image: &RgbImage, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let pixels = image_io::preprocess(image, self.vae.scale_factor(), &self.device)?;
        let posterior = self.vae.encode(&pixels.to_dtype(self.vae_dtype)?)?;
        let draw = noise.randn(posterior.mean.dims(), "vae_latent_sample")?;
        let latents = posterior.sample(&draw)?.to_dtype(DType::F32)?;
        let scaling = self.vae.config().scaling_factor;
        Ok(match self.latent_stats()? {
            Some((mean, std)) => ((latents.broadcast_sub(&mean)? * scaling)?.broadcast_div(&std))?,
            None => (latents * scaling)?,
        })
    }

    /// The inverse of [`Self::encode_image`]'s normalisation, then the VAE decoder.
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let scaling = self.vae.config().scaling_factor;
        let z = match self.latent_stats()? {
            Some((mean, std)) => ((latents.broadcast_mul(&std)? / scaling)?.broadcast_add(&mean))?,
            None => (latents / scaling)?,
        };
        let decoded = self.vae.decode(&z.to_dtype(self.vae_dtype)?)?;
        image_io::to_unit_nhwc(&decoded.to_dtype(DType::F32)?)
    }
}

/// diffusers' `get_timesteps`: `strength` of the schedule is run, from the step it starts at.
/// Returns the index of the first timestep to run. The product is truncated as Python's
/// `int()` does, so the same inputs run the same steps.
pub fn start_index(num_inference_steps: usize, strength: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::InvalidInput(format!(
            "strength must be between 0 and 1, got {strength}"
        )));
    }
    let run = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    if run == 0 {
        return Err(Error::InvalidInput(format!(
            "strength {strength} of {num_inference_steps} steps runs no denoising step; \
             raise strength or num_inference_steps so that their product is at least 1"
        )));
    }
    Ok(num_inference_steps - run)
}

impl ImagePipeline for Img2ImgPipeline {
    fn name(&self) -> &'static str {
        match self.flavour {
            Flavour::Sd => "StableDiffusionImg2ImgPipeline",
            Flavour::Sdxl => "StableDiffusionXLImg2ImgPipeline",
        }
    }

    fn run_watched(
        &self,
        p: &EditParams,
        image: &RgbImage,
        noise: &mut dyn NoiseSource,
        watch: Watch,
    ) -> Result<EditOutput> {
        let guided = p.guidance_scale > 1.0;
        let mut scheduler = schedulers::build(&self.scheduler, p.num_inference_steps)?;
        let start = start_index(p.num_inference_steps, p.strength)? * scheduler.order();
        let timesteps = scheduler.timesteps().to_vec();
        if start >= timesteps.len() {
            return Err(Error::InvalidInput(format!(
                "strength {} leaves no timestep of the {}-step schedule",
                p.strength, p.num_inference_steps
            )));
        }

        // The same order of draws as diffusers: the posterior sample, then the noise added.
        let image_latents = self.encode_image(image, noise)?;
        let (h, w) = (image_latents.dim(2)?, image_latents.dim(3)?);
        let fresh = noise
            .randn(image_latents.dims(), "img2img_noise")?
            .to_device(&self.device)?;
        let mut latents = scheduler.add_noise(&image_latents, &fresh, start)?;

        let target = (h * self.vae.scale_factor(), w * self.vae.scale_factor());
        let cond: Conditioning = self.conditioner.encode(p, guided, target)?;
        let steps = timesteps.len() - start;
        let unet = self.unet.model();
        for (done, i) in (start..timesteps.len()).enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler
                .scale_model_input(&input, i)?
                .to_dtype(unet.dtype())?;
            let pred = unet
                .forward(&input, timesteps[i], &cond.context, cond.added.as_ref())?
                .to_dtype(DType::F32)?;
            // The batch is [unconditional, text], as diffusers concatenates it.
            let pred = if guided {
                let (uncond, text) = (pred.narrow(0, 0, 1)?, pred.narrow(0, 1, 1)?);
                (&uncond + ((text - &uncond)? * p.guidance_scale)?)?
            } else {
                pred
            };
            latents = scheduler.step(&pred, i, &latents, noise)?;
            let step = Step {
                done: done + 1,
                total: steps,
                latents: &latents,
            };
            if watch(step).is_break() {
                return Err(Error::Cancelled);
            }
        }

        Ok(EditOutput {
            images: self.decode(&latents)?,
            latents,
        })
    }

    fn latent_rgb(&self) -> LatentRgb {
        match self.flavour {
            Flavour::Sd => LatentRgb::SD,
            Flavour::Sdxl => LatentRgb::SDXL,
        }
    }

    fn lora_targets(&self) -> Vec<(&'static str, &TensorMap)> {
        let mut targets = vec![self.unet.base()];
        targets.extend(self.conditioner.lora_targets());
        targets
    }

    fn set_loras(&mut self, adapters: &[(Arc<LoraAdapter>, f64)]) -> Result<()> {
        let set = self
            .unet
            .set_loras(adapters)
            .and_then(|()| self.conditioner.set_loras(adapters));
        if set.is_err() {
            self.unet.set_loras(&[])?;
            self.conditioner.set_loras(&[])?;
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::start_index;

    #[test]
    fn strength_picks_the_start_as_diffusers_truncates() {
        assert_eq!(start_index(8, 0.75).unwrap(), 2);
        assert_eq!(start_index(2, 0.5).unwrap(), 1);
        assert_eq!(start_index(4, 0.8).unwrap(), 1);
        assert_eq!(start_index(10, 1.0).unwrap(), 0);
        // 100 * 0.29 is 28.999999999999996 in binary floating point: 28 steps, as in Python.
        assert_eq!(start_index(100, 0.29).unwrap(), 72);
    }

    #[test]
    fn a_strength_that_runs_nothing_is_refused() {
        let e = start_index(3, 0.2).unwrap_err().to_string();
        assert!(e.contains("runs no denoising step"), "{e}");
        assert!(start_index(3, 1.5).is_err());
        assert!(start_index(3, f64::NAN).is_err());
    }
}
