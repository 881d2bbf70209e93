//! PyTorch `.bin` weights (tests/fixtures/pickle, written by torch.save through
//! `make_fixtures.py`): every tensor as torch saved it, refusals of hostile and broken files,
//! the safety checker as the Hub ships it, and a pipeline whose components are all `.bin`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::{self, EditParams};
use tessera_engine::safety::SafetyChecker;
use tessera_engine::weights::{self, pickle, TensorMap};
use tessera_testkit::max_abs_diff;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn pickles() -> PathBuf {
    fixtures().join("pickle")
}

fn safetensors(path: &Path) -> TensorMap {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Same names, dtypes, shapes and values (bit for bit: compared through f64, which holds
/// every f32, f16, bf16 and small integer exactly).
fn assert_same(what: &str, got: &TensorMap, want: &TensorMap) {
    let mut got_names: Vec<&String> = got.keys().collect();
    let mut want_names: Vec<&String> = want.keys().collect();
    got_names.sort();
    want_names.sort();
    assert_eq!(got_names, want_names, "{what}: tensor names");
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.dtype(), w.dtype(), "{what}: {name} dtype");
        assert_eq!(g.dims(), w.dims(), "{what}: {name} shape");
        let f = |t: &Tensor| -> Vec<f64> {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(f(g), f(w), "{what}: {name} values");
    }
}

fn load_err(name: &str) -> String {
    let path = pickles().join(name);
    let e = pickle::load(&path, &Device::Cpu).unwrap_err().to_string();
    eprintln!("{name}: {e}");
    assert!(
        e.contains(&path.display().to_string()),
        "names the file: {e}"
    );
    e
}

#[test]
fn every_tensor_reads_as_torch_saved_it_in_both_formats_and_protocols() {
    let want = safetensors(&pickles().join("basic.expected.safetensors"));
    // f32, f16, bf16, i64 position ids, a scalar, an empty tensor, a Parameter, transposed and
    // sliced views, two views of one storage, and the Linear's state dict with `_metadata`.
    for key in [
        "f16",
        "bf16",
        "position_ids",
        "scalar",
        "empty",
        "param",
        "transposed",
    ] {
        assert!(want.contains_key(key), "{key}");
    }
    for file in ["basic.bin", "basic.legacy.bin", "basic.protocol4.bin"] {
        let got = pickle::load(&pickles().join(file), &Device::Cpu).unwrap();
        assert_same(file, &got, &want);
    }
}

#[test]
fn sharded_bin_index_loads_every_shard() {
    let dir = pickles().join("sharded");
    let files = weights::component_files(&dir, "model", None).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let got = weights::load_component(&dir, "model", None, &Device::Cpu).unwrap();
    assert_same(
        "sharded",
        &got,
        &safetensors(&dir.join("expected.safetensors")),
    );
}

#[test]
fn hostile_pickle_is_refused_and_nothing_runs() {
    let marker = Path::new("/tmp/tessera-pwned");
    let _ = std::fs::remove_file(marker);
    let e = load_err("hostile_system.bin");
    assert!(e.contains("`posix.system`"), "{e}");
    assert!(e.contains("refused"), "{e}");
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
fn broken_files_are_errors_naming_the_file() {
    let e = load_err("truncated.bin");
    assert!(e.contains("zip"), "{e}");
    let broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pickles().join("broken.json")).unwrap())
            .unwrap();
    let cut = broken["cut_storage"].as_str().unwrap();
    let key = cut.rsplit('/').next().unwrap();
    let e = load_err("short_storage.bin");
    assert!(e.contains(&format!("storage {key} declares")), "{e}");
    let e = load_err("missing_storage.bin");
    assert!(e.contains(&format!("has no entry {cut}")), "{e}");
    // 2^60 elements declared over 16 bytes: refused before anything that size is allocated.
    let e = load_err("huge_storage.bin");
    assert!(e.contains("storage 0 declares 1152921504606846976"), "{e}");
    // Not a checkpoint at all.
    let e = load_err("make_fixtures.py");
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
}

#[test]
fn safetensors_win_over_bin_and_bin_is_the_fallback() {
    let d = tempfile::tempdir().unwrap();
    let bin = pickles().join("safety-checker/pytorch_model.bin");
    std::fs::copy(&bin, d.path().join("pytorch_model.bin")).unwrap();
    let files = weights::component_files(d.path(), "model", None).unwrap();
    assert!(files[0].ends_with("pytorch_model.bin"), "{files:?}");
    std::fs::copy(&bin, d.path().join("pytorch_model.fp16.bin")).unwrap();
    let files = weights::component_files(d.path(), "model", Some("fp16")).unwrap();
    assert!(files[0].ends_with("pytorch_model.fp16.bin"), "{files:?}");
    let st = fixtures().join("diffusers-parity/models/tiny-safety-checker/model.safetensors");
    std::fs::copy(&st, d.path().join("model.safetensors")).unwrap();
    for variant in [None, Some("fp16")] {
        let files = weights::component_files(d.path(), "model", variant).unwrap();
        assert!(files[0].ends_with("model.safetensors"), "{files:?}");
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("diffusion_pytorch_model.bin"), b"x").unwrap();
    let files = weights::component_files(d.path(), "diffusion_pytorch_model", None).unwrap();
    assert!(
        files[0].ends_with("diffusion_pytorch_model.bin"),
        "{files:?}"
    );
}

#[test]
fn safety_checker_from_pytorch_model_bin_gives_diffusers_verdicts() {
    let st_dir = fixtures().join("diffusers-parity/models/tiny-safety-checker");
    let bin_dir = pickles().join("safety-checker");
    assert!(!bin_dir.join("model.safetensors").exists());
    let from_bin = weights::load_component(&bin_dir, "model", None, &Device::Cpu).unwrap();
    let from_st = weights::load_component(&st_dir, "model", None, &Device::Cpu).unwrap();
    assert_same("checker weights", &from_bin, &from_st);

    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("diffusers-parity/safety_expected.json")).unwrap(),
    )
    .unwrap();
    let expected = expected["has_nsfw_concept"].as_object().unwrap();
    let images: Vec<_> = expected
        .keys()
        .map(|n| {
            tessera_engine::image_io::read(&fixtures().join("diffusers-parity").join(n)).unwrap()
        })
        .collect();
    let checker = SafetyChecker::load(&bin_dir, &Device::Cpu, DType::F32).unwrap();
    let flags = checker.check(&images).unwrap();
    for ((name, want), got) in expected.iter().zip(flags) {
        assert_eq!(Some(got), want.as_bool(), "{name}");
    }
}

#[test]
fn hub_layout_checker_loads_from_bin() {
    // vision_model.vision_model. keys and vision_config_dict, as CompVis' checkpoint.
    let bin_dir = pickles().join("legacy-checker");
    let st_dir = fixtures().join("safety/legacy-checker");
    let from_bin = weights::load_component(&bin_dir, "model", None, &Device::Cpu).unwrap();
    let from_st = weights::load_component(&st_dir, "model", None, &Device::Cpu).unwrap();
    assert_same("legacy checker weights", &from_bin, &from_st);
    assert!(from_bin
        .keys()
        .any(|k| k.starts_with("vision_model.vision_model.")));
    SafetyChecker::load(&bin_dir, &Device::Cpu, DType::F32).unwrap();
}

/// A copy of the tiny instruct-pix2pix fixture with its weights replaced by `weights`
/// (component folder -> file name -> tensors, written as safetensors) or by the `.bin`
/// files of `pickle/pix2pix-bin`.
fn pix2pix_folder(out: &Path, weights: Option<&HashMap<&str, (&str, TensorMap)>>) {
    let src = fixtures().join("diffusers-parity/models/tiny-instruct-pix2pix");
    let bins = pickles().join("pix2pix-bin");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let to = out.join(&name);
        if entry.path().is_file() {
            std::fs::copy(entry.path(), &to).unwrap();
            continue;
        }
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(entry.path()).unwrap() {
            let f = f.unwrap();
            if !f.file_name().to_string_lossy().ends_with(".safetensors") {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
        let folder = name.to_string_lossy().to_string();
        match weights {
            Some(w) => {
                if let Some((file, map)) = w.get(folder.as_str()) {
                    candle_core::safetensors::save(map, to.join(file)).unwrap();
                }
            }
            None => {
                if bins.join(&folder).is_dir() {
                    for f in std::fs::read_dir(bins.join(&folder)).unwrap() {
                        let f = f.unwrap();
                        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
                    }
                }
            }
        }
    }
}

fn run_pix2pix(dir: &Path, case: &serde_json::Value) -> Tensor {
    let pipe = pipelines::load(dir, &Device::Cpu, DType::F32).unwrap();
    let p = &case["params"];
    let params = EditParams {
        prompt: p["prompt"].as_str().unwrap().to_string(),
        negative_prompt: String::new(),
        num_inference_steps: p["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: p["guidance_scale"].as_f64().unwrap(),
        image_guidance_scale: p["image_guidance_scale"].as_f64().unwrap(),
        strength: 0.8,
    };
    let image = tessera_engine::image_io::read(
        &fixtures()
            .join("diffusers-parity")
            .join(case["image"].as_str().unwrap()),
    )
    .unwrap();
    let mut noise = TorchCpuNoise::new(case["seed"].as_u64().unwrap());
    pipe.run(&params, &image, &mut noise, &mut |_, _| {})
        .unwrap()
        .images
}

#[test]
fn pipeline_with_only_bin_weights_equals_diffusers_and_its_safetensors_twin() {
    let bins = pickles().join("pix2pix-bin");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bins.join("case.json")).unwrap()).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    pix2pix_folder(bin_dir.path(), None);
    for folder in ["unet", "vae", "text_encoder"] {
        let has_st = std::fs::read_dir(bin_dir.path().join(folder))
            .unwrap()
            .any(|f| {
                f.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".safetensors")
            });
        assert!(!has_st, "{folder} has safetensors");
    }
    let from_bin = run_pix2pix(bin_dir.path(), &case);
    let expected = safetensors(&bins.join("expected.safetensors"));
    let d = max_abs_diff(&from_bin, &expected["images"]);
    eprintln!("all-.bin pix2pix vs diffusers on the same files: {d:e}");
    assert!(d <= 1e-3, "differs from diffusers by {d}");

    // The same fp16 weights as safetensors give the same image bit for bit.
    let src = fixtures().join("diffusers-parity/models/tiny-instruct-pix2pix");
    let fp16 = |folder: &str, file: &str| -> TensorMap {
        safetensors(&src.join(folder).join(file))
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
            .collect()
    };
    let mut w = HashMap::new();
    for (folder, file, st) in [
        (
            "unet",
            "diffusion_pytorch_model.fp16.safetensors",
            "diffusion_pytorch_model.safetensors",
        ),
        (
            "vae",
            "diffusion_pytorch_model.fp16.safetensors",
            "diffusion_pytorch_model.safetensors",
        ),
        (
            "text_encoder",
            "model.fp16.safetensors",
            "model.safetensors",
        ),
    ] {
        let map = fp16(folder, st);
        let bin_file = if folder == "text_encoder" {
            "pytorch_model.fp16.bin"
        } else {
            "diffusion_pytorch_model.fp16.bin"
        };
        let from_pickle = pickle::load(&bins.join(folder).join(bin_file), &Device::Cpu).unwrap();
        assert_same(folder, &from_pickle, &map);
        w.insert(folder, (file, map));
    }
    let st_dir = tempfile::tempdir().unwrap();
    pix2pix_folder(st_dir.path(), Some(&w));
    let from_st = run_pix2pix(st_dir.path(), &case);
    assert_eq!(max_abs_diff(&from_bin, &from_st), 0.0);
}
