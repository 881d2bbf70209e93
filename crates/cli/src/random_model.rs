//! `tessera random-model`: a complete diffusers model folder with the real configs of a known
//! architecture and random weights. Benchmarks need real-size models without downloading
//! gigabytes, and diffusers can load the very same folder, so both sides time the same thing.
//!
//! The configs are the facts of the real Hub repositories, kept as JSON files in
//! `crates/engine/src/archs/` (see the README there) and compiled into the binary. The folder is
//! driven by its `model_index.json`: every component listed there is written according to its
//! class, so an architecture is nothing but a table of config files.

mod clip_vocab;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use tessera_engine::clip::{ClipTextConfig, ClipTextModel};
use tessera_engine::unet::{UNet2DConditionModel, UNetConfig};
use tessera_engine::vae::{AutoencoderKl, VaeConfig};
use tessera_engine::weights::RandomWeights;

#[derive(clap::Args)]
pub struct RandomModelArgs {
    /// The architecture whose real configs the folder gets.
    #[arg(long, value_enum, default_value = "sd15-pix2pix")]
    pub arch: ArchName,
    /// The folder to write (created if missing; existing files are overwritten).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

pub fn run(a: RandomModelArgs) -> Result<()> {
    let arch = a.arch.arch();
    write_model(&arch, &a.out)?;
    println!(
        "wrote {} with random weights to {}",
        arch.name,
        a.out.display()
    );
    Ok(())
}

/// The architectures `random-model` and `bench` know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchName {
    /// timbrooks/instruct-pix2pix: SD 1.5 with an 8-channel UNet, EulerAncestral.
    #[value(name = "sd15-pix2pix")]
    Sd15Pix2pix,
    /// stabilityai/stable-diffusion-xl-base-1.0: two text encoders, EulerDiscrete.
    Sdxl,
    /// The instruct-pix2pix layout at toy sizes, for tests.
    #[value(hide = true)]
    Tiny,
    /// The SDXL layout at toy sizes, for tests.
    #[value(name = "tiny-sdxl", hide = true)]
    TinySdxl,
}

/// An architecture: the files of its folder other than weights and vocabularies, by path.
pub struct Arch {
    pub name: &'static str,
    files: &'static [(&'static str, &'static str)],
}

macro_rules! arch_file {
    ($name:literal) => {
        include_str!(concat!("../../engine/src/archs/", $name))
    };
}

const PIX2PIX_INDEX: &str = arch_file!("sd15-pix2pix-model_index.json");
const PIX2PIX_SCHEDULER: &str = arch_file!("sd15-pix2pix-scheduler.json");
const SDXL_INDEX: &str = arch_file!("sdxl-model_index.json");
const SDXL_SCHEDULER: &str = arch_file!("sdxl-scheduler.json");
const TOKENIZER_CONFIG: &str = arch_file!("clip-tokenizer_config.json");
const SPECIAL_TOKENS: &str = arch_file!("clip-special_tokens_map.json");
/// SDXL's second tokenizer pads with "!" (id 0) instead of the end-of-text token.
const TOKENIZER_CONFIG_PAD_BANG: &str = arch_file!("clip-tokenizer_config-pad-bang.json");
const SPECIAL_TOKENS_PAD_BANG: &str = arch_file!("clip-special_tokens_map-pad-bang.json");

const SD15_PIX2PIX: Arch = Arch {
    name: "sd15-pix2pix",
    files: &[
        ("model_index.json", PIX2PIX_INDEX),
        ("scheduler/scheduler_config.json", PIX2PIX_SCHEDULER),
        ("unet/config.json", arch_file!("sd15-pix2pix-unet.json")),
        ("vae/config.json", arch_file!("sd15-vae.json")),
        (
            "text_encoder/config.json",
            arch_file!("clip-vit-l14-text.json"),
        ),
        ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG),
        ("tokenizer/special_tokens_map.json", SPECIAL_TOKENS),
    ],
};

const SDXL: Arch = Arch {
    name: "sdxl",
    files: &[
        ("model_index.json", SDXL_INDEX),
        ("scheduler/scheduler_config.json", SDXL_SCHEDULER),
        ("unet/config.json", arch_file!("sdxl-unet.json")),
        ("vae/config.json", arch_file!("sdxl-vae.json")),
        (
            "text_encoder/config.json",
            arch_file!("clip-vit-l14-text.json"),
        ),
        (
            "text_encoder_2/config.json",
            arch_file!("clip-bigg14-text-projection.json"),
        ),
        ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG),
        ("tokenizer/special_tokens_map.json", SPECIAL_TOKENS),
        (
            "tokenizer_2/tokenizer_config.json",
            TOKENIZER_CONFIG_PAD_BANG,
        ),
        (
            "tokenizer_2/special_tokens_map.json",
            SPECIAL_TOKENS_PAD_BANG,
        ),
    ],
};

const TINY: Arch = Arch {
    name: "tiny",
    files: &[
        ("model_index.json", PIX2PIX_INDEX),
        ("scheduler/scheduler_config.json", PIX2PIX_SCHEDULER),
        ("unet/config.json", arch_file!("tiny-unet.json")),
        ("vae/config.json", arch_file!("tiny-vae.json")),
        ("text_encoder/config.json", arch_file!("tiny-text.json")),
        ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG),
        ("tokenizer/special_tokens_map.json", SPECIAL_TOKENS),
    ],
};

const TINY_SDXL: Arch = Arch {
    name: "tiny-sdxl",
    files: &[
        ("model_index.json", SDXL_INDEX),
        ("scheduler/scheduler_config.json", SDXL_SCHEDULER),
        ("unet/config.json", arch_file!("tiny-sdxl-unet.json")),
        ("vae/config.json", arch_file!("tiny-vae.json")),
        ("text_encoder/config.json", arch_file!("tiny-text.json")),
        (
            "text_encoder_2/config.json",
            arch_file!("tiny-text-projection.json"),
        ),
        ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG),
        ("tokenizer/special_tokens_map.json", SPECIAL_TOKENS),
        (
            "tokenizer_2/tokenizer_config.json",
            TOKENIZER_CONFIG_PAD_BANG,
        ),
        (
            "tokenizer_2/special_tokens_map.json",
            SPECIAL_TOKENS_PAD_BANG,
        ),
    ],
};

impl ArchName {
    pub fn arch(self) -> Arch {
        match self {
            ArchName::Sd15Pix2pix => SD15_PIX2PIX,
            ArchName::Sdxl => SDXL,
            ArchName::Tiny => TINY,
            ArchName::TinySdxl => TINY_SDXL,
        }
    }
}

/// What a `model_index.json` entry's class makes us write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentKind {
    Unet,
    Vae,
    /// `CLIPTextModel`, or `CLIPTextModelWithProjection` when `projection` is set.
    TextEncoder {
        projection: bool,
    },
    Tokenizer,
    Scheduler,
    /// A part tessera does not build (a safety checker, a feature extractor...): `bench`
    /// leaves it out, `random-model` never lists one.
    Other,
}

impl ComponentKind {
    fn from_class(class: &str) -> Self {
        match class {
            "UNet2DConditionModel" => Self::Unet,
            "AutoencoderKL" => Self::Vae,
            "CLIPTextModel" => Self::TextEncoder { projection: false },
            "CLIPTextModelWithProjection" => Self::TextEncoder { projection: true },
            "CLIPTokenizer" => Self::Tokenizer,
            c if c.ends_with("Scheduler") => Self::Scheduler,
            _ => Self::Other,
        }
    }
}

/// The components a `model_index.json` lists, `(folder name, kind)`.
/// Entries set to `[null, null]` (no safety checker...) are absent parts and are skipped.
pub fn components(model_index: &str) -> Result<Vec<(String, ComponentKind)>> {
    let index: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(model_index).context("model_index.json is not a JSON object")?;
    let mut out = Vec::new();
    for (name, value) in &index {
        let Some([library, class]) = value.as_array().map(Vec::as_slice) else {
            continue; // a pipeline option such as force_zeros_for_empty_prompt
        };
        if library.is_null() && class.is_null() {
            continue;
        }
        let class = class.as_str().unwrap_or_default();
        out.push((name.clone(), ComponentKind::from_class(class)));
    }
    Ok(out)
}

impl Arch {
    /// The text of one of the architecture's files, by its path in the folder.
    pub fn file(&self, path: &str) -> Result<&'static str> {
        self.files
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, text)| *text)
            .with_context(|| format!("architecture {} has no {path}", self.name))
    }

    pub fn components(&self) -> Result<Vec<(String, ComponentKind)>> {
        components(self.file("model_index.json")?)
    }

    fn config_text(&self, component: &str) -> Result<&'static str> {
        self.file(&format!("{component}/config.json"))
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        let text = self.config_text("unet")?;
        serde_json::from_str(text).with_context(|| format!("{}: unet config", self.name))
    }

    pub fn vae_config(&self) -> Result<VaeConfig> {
        let text = self.config_text("vae")?;
        serde_json::from_str(text).with_context(|| format!("{}: vae config", self.name))
    }

    pub fn text_config(&self, component: &str) -> Result<ClipTextConfig> {
        let text = self.config_text(component)?;
        serde_json::from_str(text).with_context(|| format!("{}: {component} config", self.name))
    }
}

/// Random-weight models of an architecture, built in memory. Each returns the recorder too,
/// whose tensors are exactly the checkpoint the model would load.
pub fn random_unet(
    arch: &Arch,
    dtype: DType,
    device: &Device,
) -> Result<(UNet2DConditionModel, RandomWeights)> {
    let weights = RandomWeights::new();
    let model = UNet2DConditionModel::new(weights.var_builder(dtype, device), arch.unet_config()?)?;
    Ok((model, weights))
}

pub fn random_vae(
    arch: &Arch,
    dtype: DType,
    device: &Device,
) -> Result<(AutoencoderKl, RandomWeights)> {
    let weights = RandomWeights::new();
    let model = AutoencoderKl::new(weights.var_builder(dtype, device), arch.vae_config()?)?;
    Ok((model, weights))
}

pub fn random_text_encoder(
    arch: &Arch,
    component: &str,
    projection: bool,
    dtype: DType,
    device: &Device,
) -> Result<(ClipTextModel, RandomWeights)> {
    let weights = RandomWeights::new();
    let config = arch.text_config(component)?;
    let model = ClipTextModel::new(weights.var_builder(dtype, device), config, projection)?;
    Ok((model, weights))
}

/// Writes the whole folder: every config file of the architecture, then each component's
/// weights (f32, the plain file name diffusers and transformers look for first) or vocabulary.
pub fn write_model(arch: &Arch, out: &Path) -> Result<()> {
    for (path, text) in arch.files {
        let dest = out.join(path);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&dest, text).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    let device = Device::Cpu;
    for (name, kind) in arch.components()? {
        let dir = out.join(&name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Each model is dropped as soon as its weights are saved: real-size components are
        // gigabytes, and only one needs to be in memory at a time.
        let (weights, file) = match kind {
            ComponentKind::Unet => (
                random_unet(arch, DType::F32, &device)?.1,
                "diffusion_pytorch_model.safetensors",
            ),
            ComponentKind::Vae => (
                random_vae(arch, DType::F32, &device)?.1,
                "diffusion_pytorch_model.safetensors",
            ),
            ComponentKind::TextEncoder { projection } => (
                random_text_encoder(arch, &name, projection, DType::F32, &device)?.1,
                "model.safetensors",
            ),
            ComponentKind::Tokenizer => {
                clip_vocab::write(&dir)?;
                continue;
            }
            ComponentKind::Scheduler => continue,
            ComponentKind::Other => bail!("{}: no random weights for {name}", arch.name),
        };
        let path = dir.join(file);
        candle_core::safetensors::save(&weights.tensors()?, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// Every architecture's configs must be what the engine's own loaders accept, and every
    /// component its model_index lists must have its files in the table.
    #[test]
    fn every_arch_config_loads_in_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        for name in ArchName::value_variants() {
            let arch = name.arch();
            for (path, text) in arch.files {
                let dest = dir.path().join(arch.name).join(path);
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::write(&dest, text).unwrap();
            }
            let root = dir.path().join(arch.name);
            for (component, kind) in arch.components().unwrap() {
                let config = root.join(&component).join("config.json");
                let what = format!("{}: {component}", arch.name);
                match kind {
                    ComponentKind::Unet => drop(UNetConfig::from_file(&config).expect(&what)),
                    ComponentKind::Vae => drop(VaeConfig::from_file(&config).expect(&what)),
                    ComponentKind::TextEncoder { projection } => {
                        let c = ClipTextConfig::from_file(&config).expect(&what);
                        assert_eq!(c.declares_projection(), projection, "{what}");
                    }
                    ComponentKind::Scheduler => drop(
                        tessera_engine::schedulers::SchedulerConfig::from_file(
                            &root.join(&component).join("scheduler_config.json"),
                        )
                        .expect(&what),
                    ),
                    ComponentKind::Tokenizer => {
                        assert!(
                            root.join(&component)
                                .join("tokenizer_config.json")
                                .is_file(),
                            "{what}"
                        );
                        assert!(
                            root.join(&component)
                                .join("special_tokens_map.json")
                                .is_file(),
                            "{what}"
                        );
                    }
                    ComponentKind::Other => panic!("{what}: random-model cannot write it"),
                }
            }
        }
    }

    #[test]
    fn null_components_and_options_are_not_parts() {
        let parts = components(
            r#"{"_class_name": "P", "safety_checker": [null, null], "force_zeros_for_empty_prompt": true,
                "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"]}"#,
        )
        .unwrap();
        let mut parts = parts;
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            parts,
            vec![
                ("scheduler".to_string(), ComponentKind::Scheduler),
                ("unet".to_string(), ComponentKind::Unet)
            ]
        );
        let parts = components(
            r#"{"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}"#,
        )
        .unwrap();
        assert_eq!(
            parts,
            vec![("safety_checker".to_string(), ComponentKind::Other)]
        );
    }
}
