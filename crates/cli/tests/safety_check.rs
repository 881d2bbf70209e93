//! `tessera safety-check` as a user runs it: the real binary on the fixture safety checker,
//! by id from a hub-cache model directory and by folder, against diffusers' flags
//! (`diffusers-parity/safety_expected.json`).

use std::path::{Path, PathBuf};
use std::process::Output;

const CHECKER_ID: &str = "CompVis/stable-diffusion-safety-checker";

use tessera_testkit::parity_dir as fixtures;

fn checker_folder() -> PathBuf {
    fixtures().join("models/tiny-safety-checker")
}

/// Runs the binary in `cwd` with MODEL_DIR set to `model_dir` (or unset) and no downloads.
fn tessera(args: &[&str], cwd: &Path, model_dir: Option<&Path>) -> Output {
    let mut cmd = tessera_testkit::tessera(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args).current_dir(cwd);
    if let Some(d) = model_dir {
        cmd.env("MODEL_DIR", d);
    }
    cmd.output().unwrap()
}

/// diffusers' flag for each image, keyed by path relative to the parity fixtures.
fn expected_flags() -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(fixtures().join("safety_expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let flags: Vec<(String, bool)> = json["has_nsfw_concept"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bool().unwrap()))
        .collect();
    assert!(flags.iter().any(|f| f.1) && flags.iter().any(|f| !f.1));
    flags
}

/// The report of a successful run, checked for shape: one JSON line, keys in order.
fn report(out: Output) -> Vec<(String, bool)> {
    assert!(
        out.status.success(),
        "tessera safety-check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    assert!(stdout.starts_with(r#"{"images":[{"path":"#), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i.as_object().unwrap().len(), 2, "{i}");
            (
                i["path"].as_str().unwrap().to_string(),
                i["nsfw"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn flags_every_fixture_image_as_diffusers_does() {
    let cache = tempfile::tempdir().unwrap();
    tessera_engine::hub::link_as_hub_cache(&checker_folder(), cache.path(), CHECKER_ID).unwrap();
    let expected = expected_flags();
    // Paths relative to the working directory, one spelled with "./": printed as given.
    let mut args = vec![
        "safety-check".to_string(),
        "--model-dir".into(),
        cache.path().to_str().unwrap().into(),
    ];
    let given: Vec<String> = expected
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            if i == 0 {
                format!("./{name}")
            } else {
                name.clone()
            }
        })
        .collect();
    args.extend(given.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = report(tessera(&argv, &fixtures(), None));
    let want: Vec<(String, bool)> = given
        .into_iter()
        .zip(expected.iter().map(|e| e.1))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn default_model_comes_from_model_dir_and_folders_work_too() {
    let cache = tempfile::tempdir().unwrap();
    tessera_engine::hub::link_as_hub_cache(&checker_folder(), cache.path(), CHECKER_ID).unwrap();
    let odd = fixtures().join("inputs/odd.png");
    let basic = fixtures().join("cases/pix2pix_basic.expected.png");
    let (odd, basic) = (odd.to_str().unwrap(), basic.to_str().unwrap());
    let want = vec![(odd.to_string(), true), (basic.to_string(), false)];
    // The default id, found through MODEL_DIR.
    let got = report(tessera(
        &["safety-check", odd, basic],
        cache.path(),
        Some(cache.path()),
    ));
    assert_eq!(got, want);
    // A model folder given directly.
    let folder = checker_folder();
    let got = report(tessera(
        &[
            "safety-check",
            "--model",
            folder.to_str().unwrap(),
            odd,
            basic,
        ],
        cache.path(),
        None,
    ));
    assert_eq!(got, want);
}

fn expect_failure(args: &[&str], model_dir: Option<&Path>, needles: &[&str]) {
    let out = tessera(args, &fixtures(), model_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout for {args:?}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr should mention '{needle}': {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_invocations_fail_with_clear_messages() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let folder = checker_folder();
    let folder = folder.to_str().unwrap();
    // The default checker is not in the model directory: the id and the directory named.
    expect_failure(
        &["safety-check", "inputs/odd.png"],
        Some(empty.path()),
        &[CHECKER_ID, dir],
    );
    // An image that does not exist, and one that is not an image: the file named.
    expect_failure(
        &[
            "safety-check",
            "--model",
            folder,
            "inputs/odd.png",
            "inputs/nope.png",
        ],
        None,
        &["inputs/nope.png"],
    );
    expect_failure(
        &["safety-check", "--model", folder, "safety_expected.json"],
        None,
        &["safety_expected.json", "not an image"],
    );
    // No image at all.
    expect_failure(&["safety-check", "--model", folder], None, &["IMAGES"]);
    // A folder that is not a safety checker: the missing file named with the folder.
    let not_checker = fixtures().join("models/tiny-sdxl");
    expect_failure(
        &[
            "safety-check",
            "--model",
            not_checker.to_str().unwrap(),
            "inputs/odd.png",
        ],
        None,
        &["config.json", "tiny-sdxl"],
    );
}
