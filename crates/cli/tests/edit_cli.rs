//! `tessera edit` as a user runs it: the real binary on the fixture instruct-pix2pix model,
//! by folder path and by id from a hub-cache model directory.

use std::path::Path;
use std::process::Output;

use candle_core::{DType, Device, Tensor};

use tessera_testkit::parity_dir as fixtures;

fn tessera(args: &[&str], model_dir: Option<&Path>) -> Output {
    let mut cmd = tessera_testkit::tessera(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args);
    if let Some(d) = model_dir {
        cmd.env("MODEL_DIR", d);
    }
    cmd.output().unwrap()
}

/// Runs the pix2pix_basic case and checks the PNG against diffusers' float output.
fn edit_basic(model: &str, model_dir: Option<&Path>, out_dir: &Path) -> serde_json::Value {
    let out = out_dir.join("edited.png");
    let f = fixtures();
    let input = f.join("inputs/square.png");
    let args = [
        "edit",
        "--model",
        model,
        "--image",
        input.to_str().unwrap(),
        "--prompt",
        "turn the cat into a tiger",
        "--steps",
        "6",
        "--guidance-scale",
        "7.5",
        "--image-guidance-scale",
        "1.5",
        "--seed",
        "1334",
        "--num-images",
        "2",
        "--no-safety-check",
        "--output",
        out.to_str().unwrap(),
    ];
    let res = tessera(&args, model_dir);
    assert!(
        res.status.success(),
        "tessera edit failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stdout = String::from_utf8(res.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line on stdout: {stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();

    let expected = candle_core::safetensors::load(
        f.join("cases/pix2pix_basic.expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let img = tessera_engine::image_io::read(&out).unwrap();
    let got = Tensor::from_vec(img.data, (1, 64, 64, 3), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let diff: f32 = ((got / 255.0).unwrap() - &expected["images"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        diff <= 1.0 / 255.0 + 1e-3,
        "8-bit output differs from diffusers by {diff}"
    );
    assert!(
        out_dir.join("edited-1.png").is_file(),
        "second image goes to edited-1.png"
    );
    json
}

#[test]
fn edits_with_a_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/tiny-instruct-pix2pix");
    let json = edit_basic(model.to_str().unwrap(), None, tmp.path());
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["seed"], 1334);
    assert_eq!(images[1]["seed"], 1335);
    assert_eq!(images[0]["nsfw"], false);
    assert_eq!(
        images[0]["path"],
        tmp.path().join("edited.png").to_str().unwrap()
    );
    assert_eq!(
        images[1]["path"],
        tmp.path().join("edited-1.png").to_str().unwrap()
    );
}

#[test]
fn edits_by_id_from_a_hub_cache_directory() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    tessera_engine::hub::link_as_hub_cache(
        &fixtures().join("models/tiny-instruct-pix2pix"),
        cache.path(),
        "timbrooks/instruct-pix2pix",
    )
    .unwrap();
    // Through MODEL_DIR...
    edit_basic("timbrooks/instruct-pix2pix", Some(cache.path()), out.path());
    // ...and through --model-dir.
    let f = fixtures();
    let o = out.path().join("b.png");
    let res = tessera(
        &[
            "edit",
            "--model",
            "timbrooks/instruct-pix2pix",
            "--model-dir",
            cache.path().to_str().unwrap(),
            "--image",
            f.join("inputs/wide.png").to_str().unwrap(),
            "--prompt",
            "make it snowy",
            "--steps",
            "2",
            "--seed",
            "7",
            "--no-safety-check",
            "--output",
            o.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(tessera_engine::image_io::read(&o).unwrap().width, 96);
}

fn expect_failure(args: &[&str], model_dir: Option<&Path>, needle: &str) {
    let res = tessera(args, model_dir);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "expected failure for {args:?}");
    assert!(
        stderr.contains(needle),
        "stderr should mention '{needle}': {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_requests_fail_with_clear_messages() {
    let f = fixtures();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let square = f.join("inputs/square.png");
    let square = square.to_str().unwrap();
    let model = f.join("models/tiny-instruct-pix2pix");
    let model = model.to_str().unwrap();
    let out = cache.path().join("o.png");
    let out = out.to_str().unwrap();
    let base = |m: &'static str| -> Vec<String> {
        [
            "edit",
            "--model",
            m,
            "--image",
            square,
            "--prompt",
            "x",
            "--steps",
            "2",
            "--output",
            out,
            "--no-safety-check",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>, needle: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_failure(&a, Some(cache.path()), needle);
    };
    // A model that is not in the directory: the error names the id and the directory.
    run(base("someone/missing-model"), "someone/missing-model");
    run(base("someone/missing-model"), dir);
    // Path-like ids are refused before touching the filesystem.
    run(base("../../etc/passwd"), "invalid model id");
    let mut a = base("x");
    a[2] = model.to_string();
    a[8] = "0".into();
    run(a, "steps");
    let mut a = base("x");
    a[2] = model.to_string();
    a.extend(["--loras".into(), r#"{"a/b": 1.0}"#.into()]);
    run(a, "LoRa repository 'a/b' not found");
    // A LoRA file larger than --max-lora-mib is refused, naming its size.
    let lora = f.join("loras/tiny-pix2pix-lora.safetensors");
    let mut a = base("x");
    a[2] = model.to_string();
    a.extend([
        "--max-lora-mib".into(),
        "0".into(),
        "--loras".into(),
        format!(r#"{{"{}": 1.0}}"#, lora.display()),
    ]);
    run(a, "larger than the 0 MiB LoRAs may have (--max-lora-mib)");
    let mut a = base("x");
    a[2] = model.to_string();
    a.extend(["--loras".into(), "{not json".into()]);
    run(a, "Unable to parse '{not json' as JSON.");
    let mut a = base("x");
    a[2] = model.to_string();
    a.extend(["--device".into(), "tpu".into()]);
    run(a, "tpu");
    // An image smaller than one latent pixel.
    let tiny = cache.path().join("tiny.png");
    image::save_buffer(&tiny, &[0u8; 12], 2, 2, image::ExtendedColorType::Rgb8).unwrap();
    let mut a = base("x");
    a[2] = model.to_string();
    a[4] = tiny.to_str().unwrap().to_string();
    run(a, "2x2");
    // Not an image at all.
    let junk = cache.path().join("junk.png");
    std::fs::write(&junk, b"definitely not a png").unwrap();
    let mut a = base("x");
    a[2] = model.to_string();
    a[4] = junk.to_str().unwrap().to_string();
    run(a, "junk.png");
}

#[test]
fn reports_the_safety_checkers_verdict_per_image() {
    let f = fixtures();
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("s.png");
    let args = [
        "edit",
        "--model",
        f.join("models/tiny-instruct-pix2pix").to_str().unwrap(),
        "--image",
        f.join("inputs/square.png").to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--seed",
        "3",
        "--num-images",
        "2",
        "--output",
        o.to_str().unwrap(),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Without the checker in the model directory the edit fails, saying how to skip it.
    expect_failure(&args, Some(cache.path()), "--no-safety-check");

    tessera_engine::hub::link_as_hub_cache(
        &f.join("models/tiny-safety-checker"),
        cache.path(),
        "CompVis/stable-diffusion-safety-checker",
    )
    .unwrap();
    let res = tessera(&args, Some(cache.path()));
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    // Each flag is what `tessera safety-check` says of the written image.
    for img in json["images"].as_array().unwrap() {
        let path = img["path"].as_str().unwrap();
        let check = tessera(&["safety-check", path], Some(cache.path()));
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let verdict: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        assert!(img["nsfw"].is_boolean());
        assert_eq!(img["nsfw"], verdict["images"][0]["nsfw"], "{path}");
    }
}
