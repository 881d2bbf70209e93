//! `tessera edit` on the on-demand img2img models by their real ids, from a hub-cache model
//! directory holding the fixture models under those ids: SDXL-Lightning resolves the SDXL
//! base and its UNet file from two repositories and forces its settings; the turbo models
//! force theirs. Each output is checked against diffusers' result for the same settings.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tessera_engine::hub::link_as_hub_cache;

use tessera_testkit::parity_dir as fixtures;

/// A hub cache with the fixture models under the ids the network uses.
fn model_dir() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let f = fixtures();
    for (folder, id) in [
        (
            "models/tiny-sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0",
        ),
        ("models/tiny-sdxl-lightning", "ByteDance/SDXL-Lightning"),
        ("models/tiny-sd-img2img", "stabilityai/sd-turbo"),
        ("models/tiny-sdxl", "SG161222/RealVisXL_V4.0"),
    ] {
        link_as_hub_cache(&f.join(folder), cache.path(), id).unwrap();
    }
    cache
}

/// Runs `tessera edit` and returns its stdout JSON and the first image.
fn edit(model_dir: &Path, args: &[&str], out: &Path) -> (serde_json::Value, Tensor) {
    let res = tessera_testkit::tessera(env!("CARGO_BIN_EXE_tessera"))
        .arg("edit")
        .args(args)
        .args(["--no-safety-check", "--output", out.to_str().unwrap()])
        .env("MODEL_DIR", model_dir)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "tessera edit {args:?} failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let json = serde_json::from_slice(&res.stdout).unwrap();
    let img = tessera_engine::image_io::read(out).unwrap();
    let (w, h) = (img.width as usize, img.height as usize);
    let pixels = Tensor::from_vec(img.data, (1, h, w, 3), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (json, (pixels / 255.0).unwrap())
}

/// The largest difference between an 8-bit output and diffusers' float images for `case`.
fn diff_to_case(got: &Tensor, case: &str) -> f32 {
    let expected = candle_core::safetensors::load(
        fixtures().join(format!("cases/{case}.expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    (got - &expected["images"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

const EIGHT_BIT: f32 = 1.0 / 255.0 + 1e-3;

#[test]
fn sdxl_lightning_by_id_loads_base_and_unet_file_and_forces_its_settings() {
    let dir = model_dir();
    let out = tempfile::tempdir().unwrap();
    let wide = fixtures().join("inputs/wide.png");
    // Steps and guidance given here are replaced by Lightning's own (4 steps, no guidance).
    let (json, got) = edit(
        dir.path(),
        &[
            "--model",
            "ByteDance/SDXL-Lightning-4step",
            "--image",
            wide.to_str().unwrap(),
            "--prompt",
            "make it night time",
            "--strength",
            "0.8",
            "--steps",
            "30",
            "--guidance-scale",
            "7.5",
            "--seed",
            "1835",
        ],
        &out.path().join("l.png"),
    );
    assert_eq!(json["images"][0]["seed"], 1835);
    let d = diff_to_case(&got, "sdxl_lightning_img2img");
    assert!(
        d <= EIGHT_BIT,
        "Lightning output differs from diffusers by {d}"
    );
}

#[test]
fn sd_turbo_by_id_forces_no_guidance() {
    let dir = model_dir();
    let out = tempfile::tempdir().unwrap();
    let square = fixtures().join("inputs/square.png");
    let (_, got) = edit(
        dir.path(),
        &[
            "--model",
            "stabilityai/sd-turbo",
            "--image",
            square.to_str().unwrap(),
            "--prompt",
            "cyberpunk city at night",
            "--strength",
            "0.5",
            "--steps",
            "2",
            "--guidance-scale",
            "7.5",
            "--seed",
            "1635",
        ],
        &out.path().join("t.png"),
    );
    let d = diff_to_case(&got, "sd_img2img_turbo");
    assert!(
        d <= EIGHT_BIT,
        "sd-turbo output differs from diffusers by {d}"
    );
}

#[test]
fn any_other_sdxl_repo_runs_its_own_pipeline_and_scheduler() {
    let dir = model_dir();
    let out = tempfile::tempdir().unwrap();
    let square = fixtures().join("inputs/square.png");
    let (_, got) = edit(
        dir.path(),
        &[
            "--model",
            "SG161222/RealVisXL_V4.0",
            "--image",
            square.to_str().unwrap(),
            "--prompt",
            "a photo of an astronaut riding a horse",
            "--strength",
            "0.6",
            "--steps",
            "6",
            "--guidance-scale",
            "5",
            "--seed",
            "1834",
        ],
        &out.path().join("r.png"),
    );
    let d = diff_to_case(&got, "sdxl_img2img");
    assert!(d <= EIGHT_BIT, "SDXL output differs from diffusers by {d}");
}

#[test]
fn lightning_without_its_unet_file_names_what_is_missing() {
    let cache = tempfile::tempdir().unwrap();
    link_as_hub_cache(
        &fixtures().join("models/tiny-sdxl"),
        cache.path(),
        "stabilityai/stable-diffusion-xl-base-1.0",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let square = fixtures().join("inputs/square.png");
    let res = tessera_testkit::tessera(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "edit",
            "--model",
            "ByteDance/SDXL-Lightning-2step",
            "--image",
            square.to_str().unwrap(),
            "--prompt",
            "x",
            "--output",
            out.path().join("x.png").to_str().unwrap(),
        ])
        .env("MODEL_DIR", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(stderr.contains("ByteDance/SDXL-Lightning"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn loras_by_path_match_diffusers() {
    let f = fixtures();
    let out = tempfile::tempdir().unwrap();
    let kohya = f.join("loras/tiny-pix2pix-lora-kohya.safetensors");
    let loras = format!(r#"{{"{}": 1.2}}"#, kohya.display());
    let (_, got) = edit(
        out.path(),
        &[
            "--model",
            f.join("models/tiny-instruct-pix2pix").to_str().unwrap(),
            "--image",
            f.join("inputs/square.png").to_str().unwrap(),
            "--prompt",
            "pixel art style",
            "--steps",
            "4",
            "--seed",
            "1534",
            "--loras",
            &loras,
        ],
        &out.path().join("p.png"),
    );
    let d = diff_to_case(&got, "pix2pix_lora_kohya");
    assert!(d <= EIGHT_BIT, "LoRA output differs from diffusers by {d}");
}
