//! The checker against diffusers: the parity fixture's flags
//! (`diffusers-parity/safety_expected.json`) and the stage-by-stage numbers recorded by
//! `tests/fixtures/safety/make_fixtures.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::preprocess::ImageProcessor;
use super::*;
use crate::image_io;
use tessera_testkit::{fixtures_dir, max_abs_diff};

fn parity() -> PathBuf {
    fixtures_dir().join("diffusers-parity")
}

fn safety_fixtures() -> PathBuf {
    fixtures_dir().join("safety")
}

fn fixture_checker_dir() -> PathBuf {
    parity().join("models/tiny-safety-checker")
}

/// The checker as diffusers' float32 pipelines run it (pixel values not rounded through
/// f16), which is how these references were recorded; ai-runner's f16 rounding is checked
/// in tests/torch_weights.rs.
fn load(dir: &Path) -> SafetyChecker {
    SafetyChecker::load(dir, &Device::Cpu, DType::F32)
        .unwrap()
        .with_f16_input(false)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(safety_fixtures().join(name), &Device::Cpu).unwrap()
}

/// The images of `names`, paths relative to the parity fixture folder.
fn images(names: &[String]) -> Vec<RgbImage> {
    names
        .iter()
        .map(|n| image_io::read(&parity().join(n)).unwrap())
        .collect()
}

fn input_names() -> Vec<String> {
    ["inputs/odd.png", "inputs/square.png", "inputs/wide.png"]
        .map(String::from)
        .to_vec()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs difference {d} > {tol}");
}

/// Rows of a reference tensor as vectors.
fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

/// Scores are rounded to 3 decimals: equal up to f32 noise, or off by a whole 0.001.
fn assert_scores(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "{what}[{i}]: {g} != diffusers' {w}");
    }
}

/// Compares every stage the reference recorded for `images`.
fn check_against(checker: &SafetyChecker, imgs: &[RgbImage], exp: &HashMap<String, Tensor>) {
    let pixels = checker.pixel_values(imgs).unwrap();
    assert_close("pixel_values", &pixels, &exp["pixel_values"], 1e-6);
    let embeds = checker.image_embeds(&pixels).unwrap();
    assert_close("image_embeds", &embeds, &exp["image_embeds"], 1e-5);
    let scores = checker.scores(imgs).unwrap();
    let flags: Vec<u8> = exp["has_nsfw"].to_vec1().unwrap();
    for (i, s) in scores.iter().enumerate() {
        if let Some(cos) = exp.get("special_cos") {
            assert_scores("special_cos", &s.special_cos, &rows(cos)[i]);
            assert_scores("concept_cos", &s.concept_cos, &rows(&exp["concept_cos"])[i]);
        }
        assert_scores(
            &format!("image {i} special_scores"),
            &s.special_scores,
            &rows(&exp["special_scores"])[i],
        );
        assert_scores(
            &format!("image {i} concept_scores"),
            &s.concept_scores,
            &rows(&exp["concept_scores"])[i],
        );
        assert_eq!(s.nsfw, flags[i] == 1, "image {i} nsfw");
    }
}

#[test]
fn parity_fixture_flags_match_diffusers() {
    let expected: serde_json::Value = read_json(&parity().join("safety_expected.json")).unwrap();
    let expected = expected["has_nsfw_concept"].as_object().unwrap();
    let names: Vec<String> = expected.keys().cloned().collect();
    let checker = load(&fixture_checker_dir());
    let flags = checker.check(&images(&names)).unwrap();
    for (name, flag) in names.iter().zip(flags) {
        assert_eq!(Some(flag), expected[name].as_bool(), "{name}");
    }
    // Both answers occur, so a checker stuck on one of them fails.
    assert!(expected.values().any(|v| v == true) && expected.values().any(|v| v == false));
}

#[test]
fn every_stage_matches_diffusers() {
    let listed: serde_json::Value = read_json(&safety_fixtures().join("checker.json")).unwrap();
    let names: Vec<String> = serde_json::from_value(listed["images"].clone()).unwrap();
    let exp = reference("checker.safetensors");
    let checker = load(&fixture_checker_dir());
    let imgs = images(&names);
    check_against(&checker, &imgs, &exp);
    // The vision tower's pooled output, before the projection.
    let pooled = checker
        .vision
        .forward(&checker.pixel_values(&imgs).unwrap())
        .unwrap();
    assert_close("pooled", &pooled, &exp["pooled"], 1e-5);
}

#[test]
fn hub_checkpoint_layout_loads_the_same_model() {
    // Weights under vision_model.vision_model., a vision_config_dict replacing a stale
    // vision_config, integer size / crop_size: the CompVis repository's layout.
    let checker = load(&safety_fixtures().join("legacy-checker"));
    assert_eq!(checker.vision.config().num_hidden_layers, 2);
    check_against(
        &checker,
        &images(&input_names()),
        &reference("legacy.safetensors"),
    );
}

#[test]
fn preprocessing_variants_match_transformers() {
    let exp = reference("preprocess.safetensors");
    let names = input_names();
    let imgs = images(&names);
    let mut compared = 0;
    for entry in std::fs::read_dir(safety_fixtures().join("preprocess")).unwrap() {
        let path = entry.unwrap().path();
        let variant = path.file_stem().unwrap().to_str().unwrap().to_string();
        let processor = ImageProcessor::from_file(&path).unwrap();
        for (name, img) in names.iter().zip(&imgs) {
            let stem = Path::new(name).file_stem().unwrap().to_str().unwrap();
            let got = processor.preprocess(img).unwrap();
            let want = &exp[&format!("{variant}/{stem}")];
            assert_close(&format!("{variant} {stem}"), &got, want, 1e-6);
            compared += 1;
        }
    }
    assert_eq!(compared, 15, "five variants, three images each");
}

#[test]
fn special_care_hit_raises_later_scores() {
    // Special concept 0 misses, concept 1 hits (0.1 above its threshold): concept 2 and
    // every concept score get +0.01.
    let s = score(
        vec![0.1, 0.3, 0.195],
        vec![0.195, 0.1],
        &[0.2, 0.2, 0.2],
        &[0.2, 0.2],
    );
    assert_scores("special", &s.special_scores, &[-0.1, 0.1, 0.005]);
    assert_scores("concept", &s.concept_scores, &[0.005, -0.09]);
    assert!(s.nsfw);
    // Without the hit, the same concept similarity stays below its threshold.
    let s = score(vec![0.1; 3], vec![0.195, 0.1], &[0.2; 3], &[0.2, 0.2]);
    assert_scores("concept", &s.concept_scores, &[-0.005, -0.1]);
    assert!(!s.nsfw);
}

#[test]
fn scores_round_to_three_decimals_before_the_comparison() {
    // 0.0004 above the threshold rounds to 0: not flagged; 0.0006 rounds to 0.001: flagged.
    let s = score(vec![0.0; 3], vec![0.5004], &[1.0; 3], &[0.5]);
    assert_eq!(s.concept_scores, vec![0.0]);
    assert!(!s.nsfw);
    let s = score(vec![0.0; 3], vec![0.5006], &[1.0; 3], &[0.5]);
    assert_scores("concept", &s.concept_scores, &[0.001]);
    assert!(s.nsfw);
}

#[test]
fn no_images_is_no_work() {
    assert!(load(&fixture_checker_dir()).check(&[]).unwrap().is_empty());
}

#[test]
fn checker_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<SafetyChecker>();
}

#[test]
fn half_precision_stays_close() {
    let names = input_names();
    let exp = reference("legacy.safetensors");
    let checker = SafetyChecker::load(&fixture_checker_dir(), &Device::Cpu, DType::F16).unwrap();
    let embeds = checker
        .image_embeds(&checker.pixel_values(&images(&names)).unwrap())
        .unwrap();
    assert_eq!(embeds.dtype(), DType::F16);
    assert_close("f16 image_embeds", &embeds, &exp["image_embeds"], 2e-2);
}

/// A copy of the fixture checker in a temporary folder, without `skip`.
fn copy_without(skip: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_checker_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != skip {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    dir
}

#[test]
fn missing_files_are_named_with_the_folder() {
    for file in [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        let dir = copy_without(file);
        let e = SafetyChecker::load(dir.path(), &Device::Cpu, DType::F32).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Model(_)), "{file}: {msg}");
        assert!(
            msg.contains(file) && msg.contains(&dir.path().display().to_string()),
            "{file}: {msg}"
        );
    }
}

#[test]
fn mismatched_crop_and_weights_are_refused_at_load() {
    let dir = copy_without("");
    let processor = dir.path().join("preprocessor_config.json");
    let text = std::fs::read_to_string(&processor).unwrap();
    std::fs::write(&processor, text.replace("\"height\": 32", "\"height\": 30")).unwrap();
    let e = SafetyChecker::load(dir.path(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("crop_size 30x32") && e.contains("image_size 32"),
        "{e}"
    );

    let dir = copy_without("");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"projection_dim\": 16", "\"projection_dim\": 20"),
    )
    .unwrap();
    let e = SafetyChecker::load(dir.path(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("visual_projection") || e.contains("shape"),
        "{e}"
    );
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
}

#[test]
fn images_that_preprocess_to_the_wrong_size_are_refused() {
    // Without the center crop, a non-square image stays non-square.
    let dir = copy_without("");
    let processor = dir.path().join("preprocessor_config.json");
    let text = std::fs::read_to_string(&processor).unwrap();
    std::fs::write(
        &processor,
        text.replace("\"do_center_crop\": true", "\"do_center_crop\": false"),
    )
    .unwrap();
    let checker = SafetyChecker::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let imgs = images(&input_names());
    let e = checker.check(&imgs).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    assert!(e.to_string().contains("83x70"), "{e}");
    // A square image still fits.
    assert_eq!(checker.check(&imgs[1..2]).unwrap().len(), 1);
}
