//! Where the pipelines get their randomness. A pipeline draws every random tensor through a
//! `NoiseSource`, in the same order as diffusers, tagging each draw with what it is for.
//!
//! - `TorchCpuNoise` (the default, on every device): for a seed it yields exactly what
//!   `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` yields, successive
//!   draws continuing the same generator, so a seed gives the same image here and in diffusers.
//! - `ReplayNoise`: tensors recorded from a diffusers run, handed back in order (tests).

mod box_muller;
mod mt19937;
mod torch_cpu;

use std::path::Path;

use candle_core::{Device, Tensor};

pub use torch_cpu::TorchCpuNoise;

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
        Self {
            draws: draws.into_iter(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Model(format!("cannot read noise {}: {e}", path.display())))?;
        Ok(Self::new(map.into_iter().collect()))
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &[usize], tag: &str) -> Result<Tensor> {
        let (name, t) = self.draws.next().ok_or_else(|| {
            Error::InvalidInput(format!("replayed noise exhausted at a '{tag}' draw"))
        })?;
        // The tag is everything after the `NNN_` order prefix, compared whole: a suffix match
        // would let a draw tagged `latents` consume a recorded `initial_latents`.
        if name.split_once('_').map(|(_, recorded)| recorded) != Some(tag) {
            return Err(Error::InvalidInput(format!(
                "replayed noise out of order: drew '{tag}', recorded '{name}'"
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> ReplayNoise {
        let t = |v: f32, shape: &[usize]| Tensor::full(v, shape, &Device::Cpu).unwrap();
        // Given out of order: replay follows the `NNN` prefixes, not the list order.
        ReplayNoise::new(vec![
            ("001_scheduler_step".into(), t(2.0, &[1, 4, 2, 2])),
            ("000_initial_latents".into(), t(1.0, &[1, 4, 2, 2])),
        ])
    }

    #[test]
    fn noise_replay_hands_back_draws_in_recorded_order() {
        let mut noise = recorded();
        let first = noise.randn(&[1, 4, 2, 2], "initial_latents").unwrap();
        assert_eq!(
            first.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0; 16]
        );
        let second = noise.randn(&[1, 4, 2, 2], "scheduler_step").unwrap();
        assert_eq!(
            second.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0; 16]
        );
    }

    #[test]
    fn noise_replay_rejects_out_of_order_tags() {
        let err = recorded()
            .randn(&[1, 4, 2, 2], "scheduler_step")
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("out of order")),
            "{err}"
        );
        // A tag that is only a suffix of the recorded one is a different draw.
        let err = recorded().randn(&[1, 4, 2, 2], "latents").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("out of order")),
            "{err}"
        );
    }

    #[test]
    fn noise_replay_rejects_wrong_shapes() {
        let err = recorded()
            .randn(&[1, 4, 4, 1], "initial_latents")
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("shape")),
            "{err}"
        );
    }

    #[test]
    fn noise_replay_rejects_draws_past_the_recording() {
        let mut noise = recorded();
        noise.randn(&[1, 4, 2, 2], "initial_latents").unwrap();
        noise.randn(&[1, 4, 2, 2], "scheduler_step").unwrap();
        let err = noise.randn(&[1, 4, 2, 2], "scheduler_step").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("exhausted")),
            "{err}"
        );
    }

    #[test]
    fn noise_replay_reads_a_case_recording() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/diffusers-parity/cases/sd_img2img.noise.safetensors");
        let mut noise = ReplayNoise::from_file(&path).unwrap();
        assert_eq!(
            noise
                .randn(&[1, 4, 8, 12], "vae_latent_sample")
                .unwrap()
                .dims(),
            &[1, 4, 8, 12]
        );
        assert_eq!(
            noise.randn(&[1, 4, 8, 12], "img2img_noise").unwrap().dims(),
            &[1, 4, 8, 12]
        );
    }
}
