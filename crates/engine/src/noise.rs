//! Where the pipelines get their randomness. A pipeline draws every random tensor through a
//! `NoiseSource`, in the same order as diffusers, tagging each draw with what it is for.
//!
//! - `TorchCpuNoise` (the default, on every device): for a seed it yields exactly what
//!   `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` yields, successive
//!   draws continuing the same generator, so a seed gives the same image here and in diffusers.
//! - `ReplayNoise`: tensors recorded from a diffusers run, handed back in order (tests).

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// A stream of standard-normal tensors. Draws are f32 on the CPU; the caller moves them.
pub trait NoiseSource: Send {
    /// The next draw of `shape`. `tag` names what the draw is for (`initial_latents`,
    /// `scheduler_step`, `img2img_noise`, `vae_latent_sample`), so a replay can check that the
    /// pipeline draws in diffusers' order.
    fn randn(&mut self, shape: &[usize], tag: &str) -> Result<Tensor>;
}

/// Recorded draws, named `NNN_tag` (the fixtures' `*.noise.safetensors`), replayed in order.
pub struct ReplayNoise {
    draws: std::vec::IntoIter<(String, Tensor)>,
}

impl ReplayNoise {
    pub fn new(mut draws: Vec<(String, Tensor)>) -> Self {
        draws.sort_by(|a, b| a.0.cmp(&b.0));
        Self { draws: draws.into_iter() }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Model(format!("cannot read noise {}: {e}", path.display())))?;
        Ok(Self::new(map.into_iter().collect()))
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &[usize], tag: &str) -> Result<Tensor> {
        let (name, t) = self
            .draws
            .next()
            .ok_or_else(|| Error::InvalidInput(format!("replayed noise exhausted at a '{tag}' draw")))?;
        if !name.ends_with(tag) {
            return Err(Error::InvalidInput(format!("replayed noise out of order: drew '{tag}', recorded '{name}'")));
        }
        if t.dims() != shape {
            return Err(Error::InvalidInput(format!(
                "replayed noise '{name}' has shape {:?}, the pipeline drew {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(candle_core::DType::F32)?)
    }
}
