//! Every scheduler class inside the pipelines, against diffusers
//! (tests/fixtures/scheduler-pipelines, written by its `generate.py`): the tiny parity models
//! with their `scheduler_config.json` switched to another class, run from the seed alone.
//! img2img starts at `t_start * order` (Heun and KDPM2 have order 2) and the schedulers that
//! draw noise per step draw it between the pipeline's own draws, so the final latents agree
//! only if both are as diffusers does them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;
use serde_json::Value;
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::{self, EditParams, Overrides};
use tessera_testkit::max_abs_diff;

/// The parity fixtures' bar; the latents agree to ~1e-5 in practice.
const TOLERANCE: f32 = 1e-3;

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    scheduler: Value,
    image: String,
    params: Value,
    seed: u64,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A model folder like `source` with its scheduler config replaced: links to every other
/// entry, and `scheduler/scheduler_config.json` written out.
fn with_scheduler(source: &Path, config: &Value, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tessera-scheduler-pipelines-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "scheduler" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    dir
}

fn params(p: &Value) -> EditParams {
    EditParams {
        prompt: p["prompt"].as_str().unwrap().to_string(),
        negative_prompt: p["negative_prompt"].as_str().unwrap_or("").to_string(),
        num_inference_steps: p["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: p["guidance_scale"].as_f64().unwrap(),
        image_guidance_scale: p["image_guidance_scale"].as_f64().unwrap_or(1.5),
        strength: p["strength"].as_f64().unwrap_or(0.8),
    }
}

#[test]
fn every_scheduler_runs_in_the_pipelines_as_diffusers_does() {
    let dir = repo_root().join("tests/fixtures/scheduler-pipelines");
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let parity = repo_root().join("tests/fixtures/diffusers-parity");
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let model = with_scheduler(
            &parity.join(&case.model),
            &case.scheduler,
            &index.to_string(),
        );
        let pipe =
            pipelines::load_with(&model, &Overrides::default(), &Device::Cpu, DType::F32).unwrap();
        let image = tessera_engine::image_io::read(&parity.join(&case.image)).unwrap();
        let mut noise = TorchCpuNoise::new(case.seed);
        let out = pipe
            .run(&params(&case.params), &image, &mut noise, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let diff = max_abs_diff(&out.latents, &expected[&format!("{}.latents", case.name)]);
        eprintln!("{}: latents differ by {diff:e}", case.name);
        if diff.is_nan() || diff > TOLERANCE {
            failures.push(format!("{}: {diff}", case.name));
        }
        let _ = std::fs::remove_dir_all(&model);
    }
    assert!(failures.is_empty(), "latents differ: {failures:?}");
}
