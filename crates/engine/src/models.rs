//! What a model id means: which folder (and files) to load, and the settings some models
//! force on every request (the model table in README.md).
//!
//! Most ids are a diffusers repository whose `model_index.json` picks the pipeline. Two
//! families are special, as in ai-runner: the turbo models, distilled for one to four steps
//! without guidance, and SDXL-Lightning, which ships only UNet weights for the SDXL base.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::hub::ModelStore;
use crate::pipelines::{self, EditParams, ImagePipeline, Overrides};
use crate::schedulers::SchedulerConfig;

/// The repository SDXL-Lightning's UNet files come from.
pub const LIGHTNING_REPO: &str = "ByteDance/SDXL-Lightning";
/// The base pipeline SDXL-Lightning's UNets belong to.
pub const SDXL_BASE: &str = "stabilityai/stable-diffusion-xl-base-1.0";
/// Steps of the Lightning UNet used when the id names none.
pub const LIGHTNING_DEFAULT_STEPS: usize = 8;
const LIGHTNING_STEPS: [usize; 3] = [2, 4, 8];
const TURBO_MODELS: [&str; 2] = ["stabilityai/sd-turbo", "stabilityai/sdxl-turbo"];

/// Settings a model imposes on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// The request's own settings.
    Nothing,
    /// Turbo: no guidance, and a strength that runs at least one step.
    Turbo,
    /// SDXL-Lightning: no guidance, exactly the steps the UNet was distilled for.
    Lightning { steps: usize },
}

/// How to load a model id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The id as requested.
    pub id: String,
    /// The repository (or local folder) holding the pipeline.
    pub base: String,
    /// (repository, file) of UNet weights replacing the base's.
    pub unet_weights: Option<(String, String)>,
    pub forced: Forced,
}

impl ModelSpec {
    /// The spec for `id`: a hub id or a local folder.
    pub fn for_id(id: &str) -> Result<Self> {
        let plain = |forced| Self {
            id: id.to_string(),
            base: id.to_string(),
            unet_weights: None,
            forced,
        };
        if TURBO_MODELS.contains(&id) {
            return Ok(plain(Forced::Turbo));
        }
        let Some(rest) = id.strip_prefix(LIGHTNING_REPO) else {
            return Ok(plain(Forced::Nothing));
        };
        let steps = match rest {
            "" => LIGHTNING_DEFAULT_STEPS,
            suffix => suffix
                .strip_prefix('-')
                .and_then(|s| s.strip_suffix("step"))
                .and_then(|n| n.parse().ok())
                .filter(|n| LIGHTNING_STEPS.contains(n))
                .ok_or_else(|| Error::InvalidModelId {
                    id: id.to_string(),
                    reason: format!(
                        "SDXL-Lightning comes as {LIGHTNING_REPO} (8 steps) or with a \
                         -2step, -4step or -8step suffix"
                    ),
                })?,
        };
        Ok(Self {
            id: id.to_string(),
            base: SDXL_BASE.to_string(),
            unet_weights: Some((
                LIGHTNING_REPO.to_string(),
                format!("sdxl_lightning_{steps}step_unet.safetensors"),
            )),
            forced: Forced::Lightning { steps },
        })
    }

    /// The request's parameters with what this model forces.
    pub fn apply(&self, p: &EditParams) -> EditParams {
        let mut p = p.clone();
        match self.forced {
            Forced::Nothing => {}
            Forced::Turbo => {
                p.guidance_scale = 0.0;
                p.strength = at_least_one_step(p.num_inference_steps, p.strength);
            }
            Forced::Lightning { steps } => {
                p.guidance_scale = 0.0;
                p.num_inference_steps = steps;
                p.strength = at_least_one_step(steps, p.strength);
            }
        }
        p
    }

    /// Loads the pipeline from `store`.
    pub fn load(
        &self,
        store: &ModelStore,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn ImagePipeline>> {
        let variant = (dtype == DType::F16).then_some("fp16");
        let folder = store.resolve_id_or_dir(&self.base, variant)?;
        let mut overrides = Overrides::default();
        if let Some((repo, file)) = &self.unet_weights {
            overrides.unet_weights = Some(store.resolve_file(repo, file)?);
        }
        if let Forced::Lightning { .. } = self.forced {
            overrides.scheduler = Some(self.scheduler_config(&folder)?);
        }
        pipelines::load_with(&folder, &overrides, device, dtype).map_err(|e| match e {
            // Name the model in what went wrong inside its folder (a missing file, a bad
            // config); the folder path alone does not say which id the user asked for.
            Error::Model(_) | Error::Io { .. } => Error::Model(format!("model '{}': {e}", self.id)),
            other => other,
        })
    }

    /// The scheduler config this model's pipeline runs, from its pipeline `folder`: the
    /// folder's `scheduler/scheduler_config.json`, or for SDXL-Lightning ByteDance's
    /// instructions, Euler with trailing timesteps whatever the base says.
    pub fn scheduler_config(&self, folder: &Path) -> Result<SchedulerConfig> {
        let own = SchedulerConfig::from_file(&folder.join("scheduler/scheduler_config.json"))?;
        match self.forced {
            Forced::Lightning { .. } => own
                .with("_class_name", "EulerDiscreteScheduler".into())?
                .with("timestep_spacing", "trailing".into()),
            Forced::Nothing | Forced::Turbo => Ok(own),
        }
    }

    /// Where the pipeline folder of this model would be (for messages and tests).
    pub fn base_folder(&self, store: &ModelStore) -> Result<PathBuf> {
        store.resolve_id_or_dir(&self.base, None)
    }
}

/// ai-runner's rule for distilled models: `strength = max(1 / steps, strength)`, so that
/// `int(steps * strength)` is at least one. `1 / steps * steps` can round to just below 1
/// (49 steps), hence the nudge up in that case.
fn at_least_one_step(steps: usize, strength: f64) -> f64 {
    let n = steps.max(1) as f64;
    let s = strength.max(1.0 / n);
    if (n * s) as usize == 0 {
        (1.0 / n).next_up().min(1.0)
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repo_missing_a_component_names_the_repo_and_the_component() {
        let cache = tempfile::tempdir().unwrap();
        let repo = tempfile::tempdir().unwrap();
        let src = tessera_testkit::fixtures_dir().join("diffusers-parity/models/tiny-sdxl");
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "text_encoder_2" {
                let to = repo.path().join(entry.file_name());
                if entry.path().is_dir() {
                    std::fs::create_dir_all(&to).unwrap();
                    for f in std::fs::read_dir(entry.path()).unwrap() {
                        let f = f.unwrap();
                        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
                    }
                } else {
                    std::fs::copy(entry.path(), to).unwrap();
                }
            }
        }
        crate::hub::link_as_hub_cache(repo.path(), cache.path(), "someone/broken-xl").unwrap();
        let store = ModelStore::new(cache.path()).with_downloads(false);
        let e = ModelSpec::for_id("someone/broken-xl")
            .unwrap()
            .load(&store, &Device::Cpu, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("someone/broken-xl") && e.contains("text_encoder_2"),
            "{e}"
        );
    }

    #[test]
    fn lightning_ids_name_their_unet_file_and_steps() {
        let s = ModelSpec::for_id("ByteDance/SDXL-Lightning-4step").unwrap();
        assert_eq!(s.base, SDXL_BASE);
        assert_eq!(
            s.unet_weights,
            Some((
                LIGHTNING_REPO.into(),
                "sdxl_lightning_4step_unet.safetensors".into()
            ))
        );
        assert_eq!(s.forced, Forced::Lightning { steps: 4 });
        let default = ModelSpec::for_id("ByteDance/SDXL-Lightning").unwrap();
        assert_eq!(default.forced, Forced::Lightning { steps: 8 });
        for bad in [
            "ByteDance/SDXL-Lightning-3step",
            "ByteDance/SDXL-Lightning-x",
        ] {
            let e = ModelSpec::for_id(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("-4step"), "{e}");
        }
    }

    #[test]
    fn other_ids_load_as_they_are() {
        let s = ModelSpec::for_id("SG161222/RealVisXL_V4.0").unwrap();
        assert_eq!(s.base, "SG161222/RealVisXL_V4.0");
        assert_eq!(s.unet_weights, None);
        assert_eq!(s.forced, Forced::Nothing);
    }

    #[test]
    fn forced_settings_replace_the_requests() {
        let p = EditParams {
            num_inference_steps: 4,
            strength: 0.1,
            guidance_scale: 7.5,
            ..EditParams::default()
        };
        let turbo = ModelSpec::for_id("stabilityai/sd-turbo").unwrap().apply(&p);
        assert_eq!(turbo.guidance_scale, 0.0);
        assert_eq!(turbo.strength, 0.25);
        assert_eq!(turbo.num_inference_steps, 4);
        let lightning = ModelSpec::for_id("ByteDance/SDXL-Lightning-2step")
            .unwrap()
            .apply(&p);
        assert_eq!(lightning.num_inference_steps, 2);
        assert_eq!(lightning.guidance_scale, 0.0);
        assert_eq!(lightning.strength, 0.5);
        let plain = ModelSpec::for_id("timbrooks/instruct-pix2pix")
            .unwrap()
            .apply(&p);
        assert_eq!(plain.guidance_scale, 7.5);
        assert_eq!(plain.strength, 0.1);
    }

    #[test]
    fn the_strength_floor_runs_one_step_for_every_step_count() {
        for steps in 1..=500 {
            let s = at_least_one_step(steps, 0.0);
            assert!((steps as f64 * s) as usize >= 1, "{steps} steps: {s}");
            assert!(s <= 1.0);
        }
    }
}
