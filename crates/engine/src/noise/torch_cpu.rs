//! `TorchCpuNoise`: the normals `torch.randn(shape, generator=torch.Generator("cpu")
//! .manual_seed(seed))` yields, bit for bit, draw after draw.
//!
//! torch fills a fresh float32 tensor in one of two ways, chosen by its element count:
//! - 16 or more: one 24-bit uniform float per element, then the float Box-Muller of
//!   `box_muller` over each whole block of 16; when the count is not a multiple of 16, 16 new
//!   uniforms overwrite the last 16 elements and that block is transformed again.
//! - fewer than 16: element by element, a double-precision Box-Muller on two 53-bit uniforms
//!   giving `r cos` now and caching `r sin` in the generator for the next element, which may
//!   belong to a later small draw (a large draw in between neither uses nor clears it).

use candle_core::{Device, Tensor};

use super::box_muller;
use super::mt19937::Mt19937;
use super::NoiseSource;
use crate::error::Result;

/// Below this element count torch draws element by element (`normal_distribution<double>`).
const BLOCK: usize = 16;

/// A torch CPU generator seeded with `manual_seed(seed)`, drawing standard normals.
#[derive(Clone)]
pub struct TorchCpuNoise {
    rng: Mt19937,
    /// The sine half of the last scalar Box-Muller pair, still to be handed out (torch's
    /// `next_double_normal_sample`).
    spare_normal: Option<f64>,
}

impl TorchCpuNoise {
    /// Any u64 is accepted, as `manual_seed` accepts it; torch itself only uses the low 32 bits.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mt19937::new(seed),
            spare_normal: None,
        }
    }

    /// The values of a `numel`-element `torch.randn`, in memory order.
    pub fn randn_vec(&mut self, numel: usize) -> Vec<f32> {
        if numel >= BLOCK {
            self.normals_by_blocks(numel)
        } else {
            (0..numel).map(|_| self.normal_f64() as f32).collect()
        }
    }

    fn normals_by_blocks(&mut self, numel: usize) -> Vec<f32> {
        let mut data = vec![0f32; numel];
        self.rng.fill_uniform_f32(&mut data);
        let whole = numel - numel % BLOCK;
        box_muller::transform_blocks(&mut data[..whole]);
        if whole != numel {
            let last = &mut data[numel - BLOCK..];
            self.rng.fill_uniform_f32(last);
            box_muller::transform_blocks(last);
        }
        data
    }

    /// One normal of the element-by-element path.
    fn normal_f64(&mut self) -> f64 {
        // torch finishes every value with `x * std + mean` (std 1, mean 0), which leaves it
        // unchanged except that -0 becomes +0: hence the `+ 0.0`s.
        if let Some(sine) = self.spare_normal.take() {
            return sine + 0.0;
        }
        let u_angle = self.rng.uniform_f64();
        let u_radius = self.rng.uniform_f64();
        let radius = (-2.0 * (-u_radius).ln_1p()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u_angle;
        self.spare_normal = Some(radius * angle.sin());
        radius * angle.cos() + 0.0
    }
}

impl NoiseSource for TorchCpuNoise {
    fn randn(&mut self, shape: &[usize], _tag: &str) -> Result<Tensor> {
        let values = self.randn_vec(shape.iter().product());
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use tessera_testkit::{fixtures_dir, parity_case_names};

    fn load(path: &Path) -> BTreeMap<String, Tensor> {
        candle_core::safetensors::load(path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .collect()
    }

    /// Draws `want`'s shape from `noise` and requires the very same bits; returns the largest
    /// absolute difference (0 when it passes) so callers can report it.
    fn check_draw(noise: &mut TorchCpuNoise, name: &str, want: &Tensor) -> f32 {
        let got = noise.randn(want.dims(), "test").unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let differing = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert_eq!(
            differing,
            0,
            "{name}: {differing}/{} values differ, max |diff| {max_diff}",
            want.len()
        );
        max_diff
    }

    fn dims(text: &str) -> Vec<usize> {
        text.split('x').map(|d| d.parse().unwrap()).collect()
    }

    /// `torch_cpu_randn.safetensors`: one fresh generator per `seed{S}_{dims}` tensor.
    #[test]
    fn noise_torch_cpu_matches_parity_randn_fixture() {
        let refs = load(&fixtures_dir().join("diffusers-parity/torch_cpu_randn.safetensors"));
        assert!(!refs.is_empty());
        for (name, want) in &refs {
            let (seed, shape) = name
                .strip_prefix("seed")
                .and_then(|n| n.split_once('_'))
                .unwrap();
            assert_eq!(want.dims(), dims(shape), "{name}");
            check_draw(&mut TorchCpuNoise::new(seed.parse().unwrap()), name, want);
        }
    }

    /// Every parity case's recorded noise, drawn in order from one generator per case.
    #[test]
    fn noise_torch_cpu_matches_every_case_noise() {
        let cases = fixtures_dir().join("diffusers-parity/cases");
        let mut checked = 0;
        for case in parity_case_names() {
            let path = cases.join(format!("{case}.json"));
            let meta: serde_json::Value = crate::error::read_json(&path).unwrap();
            let mut noise = TorchCpuNoise::new(meta["seed"].as_u64().unwrap());
            let draws = load(&cases.join(format!("{case}.noise.safetensors")));
            assert!(!draws.is_empty(), "{case}");
            for (name, want) in &draws {
                check_draw(&mut noise, &format!("{case}/{name}"), want);
            }
            checked += 1;
        }
        assert!(
            checked >= 9,
            "only {checked} cases found in {}",
            cases.display()
        );
    }

    /// `noise/torch_randn_sequences.safetensors`: per seed (including seeds past 2^32), one
    /// generator drawing numel 1, 7, 15, 16, 17, 33, 1000, ... in turn.
    #[test]
    fn noise_torch_cpu_matches_successive_draw_sequences() {
        let refs = load(&fixtures_dir().join("noise/torch_randn_sequences.safetensors"));
        let mut by_seed: BTreeMap<u64, BTreeMap<usize, (String, Tensor)>> = BTreeMap::new();
        for (name, t) in refs {
            let mut parts = name.strip_prefix('s').unwrap().splitn(3, '_');
            let seed = parts.next().unwrap().parse().unwrap();
            let index = parts.next().unwrap().parse().unwrap();
            assert_eq!(t.dims(), dims(parts.next().unwrap()), "{name}");
            by_seed.entry(seed).or_default().insert(index, (name, t));
        }
        assert!(
            by_seed.keys().any(|&s| s > u64::from(u32::MAX)),
            "no seed >= 2^32"
        );
        let mut max_diff = 0f32;
        for (seed, draws) in &by_seed {
            assert_eq!(
                draws.keys().copied().collect::<Vec<_>>(),
                (0..draws.len()).collect::<Vec<_>>()
            );
            let mut noise = TorchCpuNoise::new(*seed);
            for (name, want) in draws.values() {
                max_diff = max_diff.max(check_draw(&mut noise, name, want));
            }
        }
        assert_eq!(max_diff, 0.0);
    }

    #[test]
    fn noise_torch_cpu_shapes_and_empty_draws() {
        let mut noise = TorchCpuNoise::new(3);
        let t = noise.randn(&[2, 3, 5], "initial_latents").unwrap();
        assert_eq!(
            (t.dims(), t.dtype()),
            (&[2usize, 3, 5][..], candle_core::DType::F32)
        );
        // An empty draw consumes nothing: the stream goes on as if it had not happened.
        let mut fresh = TorchCpuNoise::new(3);
        fresh.randn_vec(30);
        assert_eq!(noise.randn(&[0, 4], "x").unwrap().dims(), &[0, 4]);
        assert_eq!(noise.randn_vec(40), fresh.randn_vec(40));
    }
}
