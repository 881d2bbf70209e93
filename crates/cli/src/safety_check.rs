//! `tessera safety-check`: the NSFW safety checker on local image files, one JSON line on
//! stdout: `{"images":[{"path":…,"nsfw":…}]}`, in the order the images were given.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::DType;
use serde::Serialize;
use tessera_engine::hub::{default_model_dir, ModelStore};
use tessera_engine::image_io;
use tessera_engine::safety::{SafetyChecker, DEFAULT_MODEL_ID};

#[derive(clap::Args)]
pub struct SafetyCheckArgs {
    /// Safety checker: a model id (looked up in --model-dir) or a model folder.
    #[arg(long, default_value = DEFAULT_MODEL_ID)]
    model: String,
    /// Model directory in the HuggingFace hub cache layout [default: the HuggingFace cache].
    #[arg(long, env = "MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Where to compute: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images to check (PNG, JPEG, WebP, GIF, BMP, TIFF).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// One line of the report; fields in this order on stdout.
#[derive(Serialize)]
struct Verdict {
    /// The path as given on the command line, so callers can match results to arguments.
    path: String,
    nsfw: bool,
}

#[derive(Serialize)]
struct Report {
    images: Vec<Verdict>,
}

pub fn run(a: SafetyCheckArgs) -> anyhow::Result<()> {
    let device = tessera_engine::device::parse(&a.device)?;
    let store = ModelStore::new(a.model_dir.clone().unwrap_or_else(default_model_dir));
    let folder = store.resolve_id_or_dir(&a.model, None)?;
    // Every image is decoded before the model loads, so a bad path fails at once.
    let images = a
        .images
        .iter()
        .map(|p| image_io::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    // f32 on every device: ai-runner moves the checker to the GPU without changing its
    // dtype, so its weights stay f32 there too (only its input is cast to the pipeline's).
    let checker = SafetyChecker::load(&folder, &device, DType::F32)
        .with_context(|| format!("loading the safety checker {}", a.model))?;
    let flags = checker.check(&images)?;
    let report = Report {
        images: a
            .images
            .iter()
            .zip(flags)
            .map(|(path, nsfw)| Verdict {
                path: path.to_string_lossy().into_owned(),
                nsfw,
            })
            .collect(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
