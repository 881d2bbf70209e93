//! `tessera edit`: one image edit from the command line, with a progress bar on stderr and
//! one JSON line on stdout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tessera_api::{defaults, parse_loras};
use tessera_engine::editor::{EditRequest, Editor, EditorConfig};
use tessera_engine::image_io;
use tessera_engine::pipelines::EditParams;
use tessera_engine::safety::SharedSafetyChecker;

use crate::args::EngineArgs;

#[derive(clap::Args)]
pub struct EditArgs {
    /// Model id (`org/name`, looked up in --model-dir) or a diffusers model folder.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    engine: EngineArgs,
    /// Input image (PNG, JPEG, WebP, GIF, BMP, TIFF).
    #[arg(long)]
    image: PathBuf,
    /// The instruction.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Denoising steps.
    #[arg(long, default_value_t = defaults::NUM_INFERENCE_STEPS as usize)]
    steps: usize,
    #[arg(long, default_value_t = defaults::GUIDANCE_SCALE)]
    guidance_scale: f64,
    #[arg(long, default_value_t = defaults::IMAGE_GUIDANCE_SCALE)]
    image_guidance_scale: f64,
    /// How much of the input to repaint (img2img models).
    #[arg(long, default_value_t = defaults::STRENGTH)]
    strength: f64,
    /// Seed of the first image; image i uses seed + i [default: random].
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = defaults::NUM_IMAGES_PER_PROMPT as usize)]
    num_images: usize,
    /// LoRA adapters as JSON, {"ORG/NAME or path.safetensors": scale}, at most 4.
    #[arg(long)]
    loras: Option<String>,
    /// Skip the NSFW check (reports nsfw: false, as ai-runner does).
    #[arg(long)]
    no_safety_check: bool,
    /// Output PNG; further images go to OUT-1.png, OUT-2.png, ...
    #[arg(long)]
    output: PathBuf,
}

/// Where image `i` goes: the output path itself, then `stem-i.ext` beside it.
fn output_path(out: &Path, i: usize) -> PathBuf {
    if i == 0 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match out.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    out.with_file_name(name)
}

fn check(a: &EditArgs) -> anyhow::Result<()> {
    if a.num_images == 0 {
        bail!("--num-images must be at least 1");
    }
    for (name, v) in [
        ("guidance-scale", a.guidance_scale),
        ("image-guidance-scale", a.image_guidance_scale),
    ] {
        if !v.is_finite() || v < 0.0 {
            bail!("--{name} must be a finite number >= 0, got {v}");
        }
    }
    if !(0.0..=1.0).contains(&a.strength) {
        bail!("--strength must be between 0 and 1, got {}", a.strength);
    }
    Ok(())
}

pub fn run(a: EditArgs) -> anyhow::Result<()> {
    check(&a)?;
    let loras = parse_loras(a.loras.as_deref().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("--loras: {e}"))?;
    let device = tessera_engine::device::parse(&a.engine.device)?;
    let dtype = tessera_engine::device::parse_dtype(&a.engine.dtype, &device)?;
    let store = a.engine.model_store();
    let image = image_io::read(&a.image)?;
    // Fail on an unwritable destination now, not after minutes of denoising.
    if let Some(parent) = a.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let started = Instant::now();
    let safety = SharedSafetyChecker::new(store.clone(), &a.engine.safety_checker, device.clone());
    let mut editor = Editor::load(&EditorConfig {
        model_id: a.model.clone(),
        store,
        dtype,
        device,
        safety: Arc::new(safety),
    })
    .with_context(|| format!("loading {}", a.model))?;
    tracing::info!(model = %a.model, pipeline = editor.pipeline_name(), secs = started.elapsed().as_secs_f64(), "model loaded");
    let request = EditRequest {
        params: EditParams {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            num_inference_steps: a.steps,
            guidance_scale: a.guidance_scale,
            image_guidance_scale: a.image_guidance_scale,
            strength: a.strength,
        },
        loras,
        seed: a.seed.unwrap_or_else(|| rand::random::<u32>() as u64),
        num_images: a.num_images,
        safety_check: !a.no_safety_check,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} steps, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let images = editor.edit(
        &image,
        &request,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        &|| true,
    )?;
    bar.finish_and_clear();
    let mut results = Vec::with_capacity(images.len());
    for (i, out) in images.iter().enumerate() {
        let path = output_path(&a.output, i);
        image_io::write_png(&out.image, &path)?;
        results.push(json!({"path": path.to_string_lossy(), "seed": out.seed, "nsfw": out.nsfw}));
    }
    println!("{}", json!({ "images": results }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_number_extra_images() {
        assert_eq!(
            output_path(Path::new("out/a.png"), 0),
            PathBuf::from("out/a.png")
        );
        assert_eq!(
            output_path(Path::new("out/a.png"), 2),
            PathBuf::from("out/a-2.png")
        );
        assert_eq!(output_path(Path::new("a"), 1), PathBuf::from("a-1"));
    }
}
