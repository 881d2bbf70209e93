//! Model ids, hub-cache layouts built in temporary folders (with snapshot files linked into
//! `blobs/` as the hub writes them), and downloads from a fake hub on a loopback port.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fake_hub::{FakeHub, FAKE_SHA};
use super::*;

const MAX_NAME: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqr";

#[test]
fn valid_ids_pass() {
    assert_eq!(MAX_NAME.len(), 96);
    let max = format!("org/{MAX_NAME}");
    for id in [
        "timbrooks/instruct-pix2pix",
        "ByteDance/SDXL-Lightning",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "SG161222/RealVisXL_V4.0",
        "a/b",
        "_org/_name_",
        "org-1/name.v2",
        max.as_str(),
    ] {
        validate_model_id(id).unwrap_or_else(|e| panic!("{id:?} refused: {e}"));
    }
}

#[test]
fn invalid_ids_are_refused_with_the_reason() {
    let too_long = format!("org/{MAX_NAME}s");
    let cases: &[(&str, &str)] = &[
        ("", "it is empty"),
        ("instruct-pix2pix", "has no '/'"),
        ("a/b/c", "more than one '/'"),
        ("a//b", "more than one '/'"),
        ("/etc/passwd", "absolute path"),
        ("/b", "absolute path"),
        ("../etc/passwd", "'..'"),
        ("a/..", "'..'"),
        ("a/b..c", "'..'"),
        ("a\\b", "backslash"),
        ("C:\\models\\x", "backslash"),
        ("a/b\n", "control character"),
        ("a/b\0", "control character"),
        ("a\u{1b}[31m/b", "control character"),
        ("a /b", "whitespace"),
        ("a/b c", "whitespace"),
        ("a/b\u{a0}", "whitespace"),
        ("a/", "name part is empty"),
        ("/", "absolute path"),
        ("x/é", "'é'"),
        ("a/b?c", "'?'"),
        ("a/b:c", "':'"),
        ("~/b", "'~'"),
        ("a/b%2e", "'%'"),
        ("a/b--c", "'--'"),
        ("a/-b", "starts or ends"),
        ("a/b-", "starts or ends"),
        ("a/.b", "starts or ends"),
        (".a/b", "organisation part starts or ends"),
        (too_long.as_str(), "97 characters"),
    ];
    for (id, reason) in cases {
        match validate_model_id(id) {
            Err(Error::InvalidModelId { reason: got, .. }) => {
                assert!(
                    got.contains(reason),
                    "{id:?}: reason {got:?} lacks {reason:?}"
                )
            }
            other => panic!("{id:?}: expected InvalidModelId, got {other:?}"),
        }
    }
}

#[test]
fn rejected_ids_are_quoted_escaped_and_short() {
    let Err(e) = validate_model_id("a/b\nINFO forged") else {
        panic!("accepted")
    };
    assert!(!e.to_string().contains('\n'), "{e}");
    assert!(e.to_string().contains("a/b\\nINFO forged"), "{e}");
    let huge = "x".repeat(10_000);
    let Err(e) = validate_model_id(&huge) else {
        panic!("accepted")
    };
    assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
}

#[test]
fn hub_offline_variable_reads_like_huggingface_tools() {
    for v in ["1", "true", "TRUE", "yes", "On", " 1 "] {
        assert!(is_truthy(Some(v)), "{v}");
    }
    for v in ["0", "false", "no", "off", "", "2"] {
        assert!(!is_truthy(Some(v)), "{v}");
    }
    assert!(!is_truthy(None));
}

/// Writes repository `id` at revision `rev` into hub cache `dir` the way hf-hub and
/// huggingface_hub do: contents in `blobs/`, snapshot entries as relative symlinks to them.
fn write_snapshot(dir: &Path, id: &str, rev: &str, files: &[(&str, &str)]) -> PathBuf {
    let repo = dir.join(repo_folder_name(id));
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let snapshot = repo.join("snapshots").join(rev);
    for (file, content) in files {
        let blob_name = format!("{rev}-{}", file.replace('/', "_"));
        std::fs::write(blobs.join(&blob_name), content).unwrap();
        let target = snapshot.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let up = "../".repeat(file.split('/').count() + 1);
        std::os::unix::fs::symlink(format!("{up}blobs/{blob_name}"), &target).unwrap();
    }
    snapshot
}

fn write_ref(dir: &Path, id: &str, text: &str) {
    let refs = dir.join(repo_folder_name(id)).join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("main"), text).unwrap();
}

fn offline(dir: &Path) -> ModelStore {
    ModelStore::new(dir).with_downloads(false)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The message of the not-found error `result` must be.
fn not_found_message<T: std::fmt::Debug>(result: Result<T>) -> String {
    match result {
        Err(e @ Error::ModelNotFound { .. }) => e.to_string(),
        other => panic!("expected ModelNotFound, got {other:?}"),
    }
}

#[test]
fn refs_main_picks_its_snapshot_among_several() {
    let dir = tempfile::tempdir().unwrap();
    let id = "org/pipe";
    write_snapshot(dir.path(), id, "1111", &[("model_index.json", "old")]);
    let newer = write_snapshot(
        dir.path(),
        id,
        "2222",
        &[("model_index.json", "new"), ("unet/config.json", "{}")],
    );
    write_ref(dir.path(), id, "2222\n");
    let got = offline(dir.path()).resolve(id, None).unwrap();
    assert_eq!(got, newer);
    assert_eq!(read(&got.join("model_index.json")), "new");
    assert_eq!(read(&got.join("unet/config.json")), "{}");
}

#[test]
fn without_refs_the_only_snapshot_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = write_snapshot(dir.path(), "org/pipe", "abcd", &[("model_index.json", "x")]);
    assert_eq!(
        offline(dir.path())
            .resolve("org/pipe", Some("fp16"))
            .unwrap(),
        snapshot
    );
}

#[test]
fn without_refs_several_snapshots_are_not_guessed_between() {
    let dir = tempfile::tempdir().unwrap();
    write_snapshot(dir.path(), "org/pipe", "1111", &[("model_index.json", "a")]);
    write_snapshot(dir.path(), "org/pipe", "2222", &[("model_index.json", "b")]);
    let message = not_found_message(offline(dir.path()).resolve("org/pipe", None));
    assert!(
        message.contains("2 snapshots and no refs/main"),
        "{message}"
    );
}

#[test]
fn a_ref_to_a_missing_snapshot_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_snapshot(dir.path(), "org/pipe", "1111", &[("model_index.json", "a")]);
    write_ref(dir.path(), "org/pipe", "deadbeef");
    let message = not_found_message(offline(dir.path()).resolve("org/pipe", None));
    assert!(
        message.contains(
            "refs/main names snapshot deadbeef, which is not in models--org--pipe/snapshots"
        ),
        "{message}"
    );
}

#[test]
fn a_ref_that_is_a_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_snapshot(dir.path(), "org/pipe", "1111", &[("model_index.json", "a")]);
    write_ref(dir.path(), "org/pipe", "../../../etc");
    let err = offline(dir.path()).resolve("org/pipe", None).unwrap_err();
    assert!(matches!(err, Error::Model(_)), "{err:?}");
    assert!(err.to_string().contains("not a revision"), "{err}");
}

#[test]
fn a_missing_model_names_the_id_and_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let message =
        not_found_message(offline(dir.path()).resolve("timbrooks/instruct-pix2pix", None));
    assert!(
        message.contains("'timbrooks/instruct-pix2pix'"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("no models--timbrooks--instruct-pix2pix folder"),
        "{message}"
    );
    assert!(message.contains("downloads are disabled"), "{message}");
}

#[test]
fn invalid_ids_are_refused_before_the_directory_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = offline(dir.path());
    assert!(matches!(
        store.resolve("../x", None),
        Err(Error::InvalidModelId { .. })
    ));
    assert!(matches!(
        store.resolve_file("a/../..", "f"),
        Err(Error::InvalidModelId { .. })
    ));
}

#[test]
fn resolve_file_finds_files_through_blob_links() {
    let dir = tempfile::tempdir().unwrap();
    let id = "ByteDance/SDXL-Lightning";
    let snapshot = write_snapshot(
        dir.path(),
        id,
        "c0ffee",
        &[
            ("sdxl_lightning_4step_unet.safetensors", "unet"),
            ("sub/lora.safetensors", "lora"),
        ],
    );
    write_ref(dir.path(), id, "c0ffee");
    let store = offline(dir.path());
    let unet = store
        .resolve_file(id, "sdxl_lightning_4step_unet.safetensors")
        .unwrap();
    assert_eq!(unet, snapshot.join("sdxl_lightning_4step_unet.safetensors"));
    assert_eq!(read(&unet), "unet");
    assert_eq!(
        read(&store.resolve_file(id, "sub/lora.safetensors").unwrap()),
        "lora"
    );

    let message =
        not_found_message(store.resolve_file(id, "sdxl_lightning_8step_unet.safetensors"));
    assert!(
        message.contains("has no sdxl_lightning_8step_unet.safetensors"),
        "{message}"
    );

    std::fs::remove_file(
        dir.path()
            .join("models--ByteDance--SDXL-Lightning/blobs/c0ffee-sub_lora.safetensors"),
    )
    .unwrap();
    let message = not_found_message(store.resolve_file(id, "sub/lora.safetensors"));
    assert!(
        message.contains("links to a blob that is missing"),
        "{message}"
    );
}

#[test]
fn resolve_file_refuses_paths_that_leave_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = offline(dir.path());
    for (file, reason) in [
        ("", "empty"),
        ("../../secret", "'..'"),
        ("unet/../../x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("unet\\config.json", "backslash"),
        ("unet//config.json", "empty or '.'"),
        ("./config.json", "empty or '.'"),
        ("a\nb", "control character"),
    ] {
        match store.resolve_file("org/repo", file) {
            Err(Error::InvalidInput(message)) => {
                assert!(message.contains(reason), "{file:?}: {message}")
            }
            other => panic!("{file:?}: expected InvalidInput, got {other:?}"),
        }
    }
}

#[test]
fn resolve_id_or_dir_takes_a_folder_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("my-model");
    std::fs::create_dir(&folder).unwrap();
    let store = offline(dir.path());
    let given = folder.to_str().unwrap();
    assert_eq!(store.resolve_id_or_dir(given, None).unwrap(), folder);

    let snapshot = write_snapshot(dir.path(), "org/pipe", "1", &[("model_index.json", "x")]);
    assert_eq!(store.resolve_id_or_dir("org/pipe", None).unwrap(), snapshot);

    let missing = dir.path().join("nope").display().to_string();
    match store.resolve_id_or_dir(&missing, None) {
        Err(Error::InvalidModelId { reason, .. }) => {
            assert!(
                reason.starts_with("there is no such folder, and it is an absolute path"),
                "{reason}"
            )
        }
        other => panic!("expected InvalidModelId, got {other:?}"),
    }
}

#[test]
fn parity_fixture_resolves_as_instruct_pix2pix() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/diffusers-parity/models/tiny-instruct-pix2pix");
    let cache = tempfile::tempdir().unwrap();
    let id = "timbrooks/instruct-pix2pix";
    link_as_hub_cache(&fixture, cache.path(), id).unwrap();
    // A second run refreshes the links instead of failing on them.
    link_as_hub_cache(&fixture, cache.path(), id).unwrap();
    let snapshot = offline(cache.path()).resolve(id, None).unwrap();
    assert!(snapshot.starts_with(
        cache
            .path()
            .join("models--timbrooks--instruct-pix2pix/snapshots")
    ));
    for file in [
        "model_index.json",
        "unet/config.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        assert_eq!(
            read(&snapshot.join(file)),
            read(&fixture.join(file)),
            "{file}"
        );
    }
    let weights = offline(cache.path())
        .resolve_file(id, "unet/diffusion_pytorch_model.safetensors")
        .unwrap();
    assert_eq!(
        std::fs::read(weights).unwrap(),
        std::fs::read(fixture.join("unet/diffusion_pytorch_model.safetensors")).unwrap()
    );
}

/// A loopback address nothing listens on: bound, then released.
fn closed_port_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn an_unreachable_hub_fails_fast_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = closed_port_endpoint();
    let store = ModelStore::new(dir.path())
        .with_downloads(true)
        .with_endpoint(&endpoint);
    let started = Instant::now();
    let message = not_found_message(store.resolve("timbrooks/instruct-pix2pix", None));
    // Not a speed measurement: a hang here (no timeouts) would take minutes.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        message.contains(&format!("downloading it from {endpoint} failed")),
        "{message}"
    );
    assert!(message.to_lowercase().contains("connect"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    let message =
        not_found_message(store.resolve_file("ByteDance/SDXL-Lightning", "x.safetensors"));
    assert!(message.contains("failed"), "{message}");
}

#[test]
fn a_hub_that_never_answers_times_out() {
    // Bound but never accepting: connections complete in the kernel's backlog, and the
    // request then waits for an answer that never comes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path())
        .with_downloads(true)
        .with_endpoint(endpoint)
        .with_hub_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let message = not_found_message(store.resolve("org/pipe", None));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.to_lowercase().contains("timed out"), "{message}");
    drop(listener);
}

#[test]
fn with_downloads_off_the_hub_is_never_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let store = ModelStore::new(dir.path())
        .with_endpoint(endpoint)
        .with_downloads(false);
    assert!(store.resolve("org/pipe", None).is_err());
    assert!(store.resolve_file("org/pipe", "a.safetensors").is_err());
    let attempt = listener.accept();
    assert!(
        matches!(&attempt, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected: {attempt:?}"
    );
}

fn fake_pipeline() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("README.md", "readme"),
        (
            "model_index.json",
            r#"{"_class_name": "StableDiffusionPipeline", "safety_checker": [null, null], "unet": ["diffusers", "UNet2DConditionModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}"#,
        ),
        ("single_file_checkpoint.safetensors", "big"),
        ("tokenizer/merges.txt", "#version: 0.2"),
        ("tokenizer/vocab.json", "{}"),
        ("unet/config.json", r#"{"in_channels": 8}"#),
        ("unet/diffusion_pytorch_model.bin", "pickle"),
        (
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "half weights",
        ),
        ("unet/diffusion_pytorch_model.safetensors", "full weights"),
        ("unet/diffusion_flax_model.msgpack", "flax"),
    ])
}

#[test]
fn a_missing_pipeline_is_downloaded_without_what_it_does_not_need() {
    let hub = FakeHub::start("org/pipe", fake_pipeline());
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path())
        .with_downloads(true)
        .with_endpoint(&hub.endpoint);
    let snapshot = store.resolve("org/pipe", None).unwrap();
    assert_eq!(
        snapshot,
        dir.path()
            .join("models--org--pipe/snapshots")
            .join(FAKE_SHA)
    );
    for (file, content) in fake_pipeline() {
        let wanted = matches!(
            file,
            "model_index.json"
                | "tokenizer/merges.txt"
                | "tokenizer/vocab.json"
                | "unet/config.json"
                | "unet/diffusion_pytorch_model.safetensors"
        );
        let path = snapshot.join(file);
        assert_eq!(path.exists(), wanted, "{file}");
        if wanted {
            assert_eq!(read(&path), content, "{file}");
        }
    }
    let fetched: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|p| p.contains("/resolve/"))
        .collect();
    assert!(
        fetched
            .iter()
            .all(|p| !p.ends_with(".bin") && !p.contains("fp16")),
        "{fetched:?}"
    );
    // hf-hub asks twice per file (metadata, then data): nothing is fetched again.
    assert_eq!(fetched.len(), 2 * 5, "{fetched:?}");

    // Now in the directory: resolved again without a word to the hub.
    let asked = hub.requests().len();
    let offline_store = ModelStore::new(dir.path()).with_downloads(false);
    assert_eq!(offline_store.resolve("org/pipe", None).unwrap(), snapshot);
    assert_eq!(store.resolve("org/pipe", None).unwrap(), snapshot);
    assert_eq!(hub.requests().len(), asked);
}

#[test]
fn a_repository_with_only_bin_weights_downloads_the_bin() {
    // CompVis/stable-diffusion-safety-checker's main branch: pytorch_model.bin only.
    let files = BTreeMap::from([
        ("README.md", "readme"),
        ("config.json", r#"{"projection_dim": 768}"#),
        ("preprocessor_config.json", r#"{"size": 224}"#),
        ("pytorch_model.bin", "pickled weights"),
        ("openvino_model.bin", "not this"),
    ]);
    let hub = FakeHub::start("CompVis/stable-diffusion-safety-checker", files);
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path())
        .with_downloads(true)
        .with_endpoint(&hub.endpoint);
    let snapshot = store
        .resolve("CompVis/stable-diffusion-safety-checker", None)
        .unwrap();
    assert_eq!(read(&snapshot.join("pytorch_model.bin")), "pickled weights");
    assert!(snapshot.join("config.json").exists());
    assert!(!snapshot.join("openvino_model.bin").exists());
    assert!(!snapshot.join("README.md").exists());
}

#[test]
fn a_variant_download_prefers_the_variant_weights() {
    let hub = FakeHub::start("org/pipe", fake_pipeline());
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path())
        .with_endpoint(&hub.endpoint)
        .with_downloads(true);
    let snapshot = store.resolve("org/pipe", Some("fp16")).unwrap();
    assert_eq!(
        read(&snapshot.join("unet/diffusion_pytorch_model.fp16.safetensors")),
        "half weights"
    );
    assert!(!snapshot
        .join("unet/diffusion_pytorch_model.safetensors")
        .exists());
}

#[test]
fn resolve_file_downloads_just_that_file() {
    let hub = FakeHub::start("org/pipe", fake_pipeline());
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path())
        .with_endpoint(&hub.endpoint)
        .with_downloads(true);
    let path = store
        .resolve_file("org/pipe", "single_file_checkpoint.safetensors")
        .unwrap();
    assert_eq!(read(&path), "big");
    let fetched: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|p| p.contains("/resolve/"))
        .collect();
    assert!(
        fetched
            .iter()
            .all(|p| p.ends_with("/single_file_checkpoint.safetensors")),
        "{fetched:?}"
    );

    let message = not_found_message(store.resolve_file("org/pipe", "lora.safetensors"));
    assert!(
        message.contains("has no file lora.safetensors"),
        "{message}"
    );
}

#[test]
fn a_repository_the_hub_lacks_is_reported_as_such() {
    let hub = FakeHub::start("org/pipe", fake_pipeline());
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path())
        .with_endpoint(&hub.endpoint)
        .with_downloads(true);
    let message = not_found_message(store.resolve("org/other", None));
    assert!(
        message.contains("no public repository org/other"),
        "{message}"
    );
    assert!(message.contains("HF_TOKEN"), "{message}");
}

/// The model directory from an environment given as pairs (huggingface_hub's precedence).
fn dir_with(vars: &[(&str, &str)]) -> PathBuf {
    let map: std::collections::HashMap<String, std::ffi::OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    super::model_dir_from(&|name| map.get(name).cloned())
}

#[test]
fn model_dir_follows_huggingface_hub_precedence() {
    let all = [
        ("HOME", "/home/u"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HF_HOME", "/hf"),
        ("HUGGINGFACE_HUB_CACHE", "/models"),
        ("HF_HUB_CACHE", "/cache"),
    ];
    assert_eq!(dir_with(&all), PathBuf::from("/cache"));
    assert_eq!(dir_with(&all[..4]), PathBuf::from("/models"));
    assert_eq!(dir_with(&all[..3]), PathBuf::from("/hf/hub"));
    assert_eq!(dir_with(&all[..2]), PathBuf::from("/xdg/huggingface/hub"));
    assert_eq!(
        dir_with(&all[..1]),
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
    // Empty counts as unset.
    assert_eq!(
        dir_with(&[
            ("HOME", "/home/u"),
            ("HF_HUB_CACHE", ""),
            ("HF_HOME", "/hf")
        ]),
        PathBuf::from("/hf/hub")
    );
}

#[test]
fn model_dir_expands_home_and_variables_as_python_does() {
    let env = [("HOME", "/home/u"), ("DATA", "/data")];
    let with = |k: &str, v: &str| {
        let mut e = env.to_vec();
        e.push((k, v));
        dir_with(&e)
    };
    assert_eq!(with("HF_HOME", "~/hf"), PathBuf::from("/home/u/hf/hub"));
    assert_eq!(
        with("HF_HUB_CACHE", "$DATA/hub"),
        PathBuf::from("/data/hub")
    );
    assert_eq!(
        with("HUGGINGFACE_HUB_CACHE", "${DATA}/m"),
        PathBuf::from("/data/m")
    );
    // Unknown variables and `~user` stay as written.
    assert_eq!(with("HF_HUB_CACHE", "$NOPE/x"), PathBuf::from("$NOPE/x"));
    assert_eq!(with("HF_HUB_CACHE", "~bob/x"), PathBuf::from("~bob/x"));
}
