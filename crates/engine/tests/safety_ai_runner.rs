//! The safety checker as ai-runner calls it: float32 weights, pixel values cast to float16
//! (`tests/fixtures/pickle/make_fixtures.py` records what diffusers computes that way).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use tessera_engine::safety::SafetyChecker;
use tessera_testkit::max_abs_diff;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn pickles() -> PathBuf {
    fixtures().join("pickle")
}

fn safetensors(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn checker_rounds_pixels_through_f16_as_ai_runner_calls_it() {
    // ai-runner: the float32 checker called with `pixel_values.to(torch.float16)`.
    let want = safetensors(&pickles().join("safety_fp16_input.safetensors"));
    let images: Vec<_> = ["inputs/odd.png", "inputs/square.png", "inputs/wide.png"]
        .iter()
        .map(|n| {
            tessera_engine::image_io::read(&fixtures().join("diffusers-parity").join(n)).unwrap()
        })
        .collect();
    for dir in [
        pickles().join("legacy-checker"),
        fixtures().join("safety/legacy-checker"),
    ] {
        let checker = SafetyChecker::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let pixels = checker.pixel_values(&images).unwrap();
        let rounded = pixels
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(max_abs_diff(&rounded, &want["pixel_values"]), 0.0);
        let embeds = checker.image_embeds(&pixels).unwrap();
        let d = max_abs_diff(&embeds, &want["image_embeds"]);
        assert!(d <= 1e-5, "{}: image_embeds differ by {d}", dir.display());
        // Off, the embeddings are those of the unrounded pixels, which differ.
        let unrounded = SafetyChecker::load(&dir, &Device::Cpu, DType::F32)
            .unwrap()
            .with_f16_input(false)
            .image_embeds(&pixels)
            .unwrap();
        assert!(max_abs_diff(&unrounded, &want["image_embeds"]) > 0.0);
        let flags: Vec<u8> = want["has_nsfw"].to_vec1().unwrap();
        let got = checker.check(&images).unwrap();
        assert_eq!(got, flags.iter().map(|&f| f == 1).collect::<Vec<_>>());
    }
}
