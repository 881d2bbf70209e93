//! LoRA end to end: the fixture cases `pix2pix_lora_peft` and `pix2pix_lora_kohya` against
//! diffusers (`load_lora_weights` at scale 1.2), with the adapter loaded by path and by hub id
//! through the `Editor`; and switching adapters between requests giving exactly what fresh
//! processes give.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tessera_engine::editor::{EditRequest, EditedImage, Editor, EditorConfig};
use tessera_engine::hub::{link_as_hub_cache, ModelStore};
use tessera_engine::lora::LoraAdapter;
use tessera_engine::noise::{NoiseSource, ReplayNoise, TorchCpuNoise};
use tessera_engine::pipelines::{self, EditParams};
use tessera_engine::safety::{SharedSafetyChecker, DEFAULT_MODEL_ID};
use tessera_testkit::{fixtures_dir, max_abs_diff};

const TOLERANCE: f32 = 1e-3;

fn parity() -> PathBuf {
    fixtures_dir().join("diffusers-parity")
}

fn case(name: &str) -> Value {
    let text = std::fs::read_to_string(parity().join(format!("cases/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn params(case: &Value) -> EditParams {
    let p = &case["params"];
    EditParams {
        prompt: p["prompt"].as_str().unwrap().into(),
        num_inference_steps: p["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: p["guidance_scale"].as_f64().unwrap(),
        image_guidance_scale: p["image_guidance_scale"].as_f64().unwrap(),
        ..EditParams::default()
    }
}

/// The case's (LoRA file, scale).
fn lora_of(case: &Value) -> (PathBuf, f64) {
    let (file, scale) = case["loras"].as_object().unwrap().iter().next().unwrap();
    (parity().join(file), scale.as_f64().unwrap())
}

fn expected(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        parity().join(format!("cases/{name}.expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

/// The pipeline with the case's LoRA merged, on replayed noise and on the seed.
fn run_case(name: &str) {
    let case = case(name);
    let mut pipe = pipelines::load(
        &parity().join("models/tiny-instruct-pix2pix"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let (file, scale) = lora_of(&case);
    let adapter = Arc::new(LoraAdapter::from_file(file.to_str().unwrap(), &file).unwrap());
    pipe.set_loras(&[(adapter, scale)]).unwrap();
    let image =
        tessera_engine::image_io::read(&parity().join(case["image"].as_str().unwrap())).unwrap();
    let expected = expected(name);
    let replay =
        ReplayNoise::from_file(&parity().join(format!("cases/{name}.noise.safetensors"))).unwrap();
    let sources: [(&str, Box<dyn NoiseSource>); 2] = [
        ("replayed noise", Box::new(replay)),
        (
            "seed",
            Box::new(TorchCpuNoise::new(case["seed"].as_u64().unwrap())),
        ),
    ];
    for (how, mut noise) in sources {
        let out = pipe
            .run(&params(&case), &image, noise.as_mut(), &mut |_, _| {})
            .unwrap();
        let d = max_abs_diff(&out.images, &expected["images"]);
        eprintln!("{name} ({how}): images {d:e}");
        assert!(d <= TOLERANCE, "{name} ({how}): images differ by {d}");
    }
}

#[test]
fn pix2pix_lora_peft() {
    run_case("pix2pix_lora_peft");
}

#[test]
fn pix2pix_lora_kohya() {
    run_case("pix2pix_lora_kohya");
}

/// An editor on the fixture pix2pix model, served from a hub cache that also holds the peft
/// LoRA as repository `someone/tiny-lora`.
fn editor(cache: &std::path::Path) -> Editor {
    link_as_hub_cache(
        &parity().join("models/tiny-instruct-pix2pix"),
        cache,
        "timbrooks/instruct-pix2pix",
    )
    .unwrap();
    let lora_repo = cache.join("lora-src");
    std::fs::create_dir_all(&lora_repo).unwrap();
    std::fs::copy(
        parity().join("loras/tiny-pix2pix-lora.safetensors"),
        lora_repo.join("pytorch_lora_weights.safetensors"),
    )
    .unwrap();
    link_as_hub_cache(&lora_repo, cache, "someone/tiny-lora").unwrap();
    let store = ModelStore::new(cache).with_downloads(false);
    Editor::load(&EditorConfig {
        model_id: "timbrooks/instruct-pix2pix".into(),
        safety: Arc::new(SharedSafetyChecker::new(
            store.clone(),
            DEFAULT_MODEL_ID,
            Device::Cpu,
        )),
        store,
        device: Device::Cpu,
        dtype: DType::F32,
    })
    .unwrap()
}

fn request(loras: Vec<(String, f64)>) -> EditRequest {
    let case = case("pix2pix_lora_peft");
    EditRequest {
        params: params(&case),
        loras,
        seed: case["seed"].as_u64().unwrap(),
        num_images: 1,
        safety_check: false,
    }
}

fn edit(editor: &mut Editor, loras: Vec<(String, f64)>) -> EditedImage {
    let image = tessera_engine::image_io::read(&parity().join("inputs/square.png")).unwrap();
    editor
        .edit(&image, &request(loras), &mut |_, _| {}, &|| true)
        .unwrap()
        .remove(0)
}

/// The 8-bit image's largest difference from diffusers' float output.
fn diff_8bit(img: &EditedImage, name: &str) -> f32 {
    let got = Tensor::from_vec(img.image.data.clone(), (1, 64, 64, 3), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    max_abs_diff(&(got / 255.0).unwrap(), &expected(name)["images"])
}

#[test]
fn lora_by_hub_id_and_by_path_through_the_editor() {
    let cache = tempfile::tempdir().unwrap();
    let mut ed = editor(cache.path());
    let by_id = edit(&mut ed, vec![("someone/tiny-lora".into(), 1.2)]);
    assert!(diff_8bit(&by_id, "pix2pix_lora_peft") <= 1.0 / 255.0 + TOLERANCE);
    let kohya = parity().join("loras/tiny-pix2pix-lora-kohya.safetensors");
    let by_path = edit(&mut ed, vec![(kohya.to_str().unwrap().into(), 1.2)]);
    assert!(diff_8bit(&by_path, "pix2pix_lora_kohya") <= 1.0 / 255.0 + TOLERANCE);
}

#[test]
fn switching_adapters_gives_what_fresh_processes_give() {
    let lora = || vec![("someone/tiny-lora".to_string(), 1.2)];
    let fresh_base = edit(&mut editor(tempfile::tempdir().unwrap().path()), vec![]);
    let fresh_lora = edit(&mut editor(tempfile::tempdir().unwrap().path()), lora());
    assert_ne!(
        fresh_base.image.data, fresh_lora.image.data,
        "the LoRA changes the image"
    );

    let cache = tempfile::tempdir().unwrap();
    let mut ed = editor(cache.path());
    for (round, (loras, fresh)) in [
        (vec![], &fresh_base),
        (lora(), &fresh_lora),
        (vec![], &fresh_base),
        (lora(), &fresh_lora),
    ]
    .into_iter()
    .enumerate()
    {
        let got = edit(&mut ed, loras);
        assert!(
            got.image.data == fresh.image.data,
            "round {round} differs from a fresh run"
        );
    }
}

#[test]
fn a_bad_lora_leaves_the_model_as_it_was() {
    let cache = tempfile::tempdir().unwrap();
    let mut ed = editor(cache.path());
    let with_lora = edit(&mut ed, vec![("someone/tiny-lora".into(), 1.2)]);
    let image = tessera_engine::image_io::read(&parity().join("inputs/square.png")).unwrap();
    let err = ed
        .edit(
            &image,
            &request(vec![("someone/missing".into(), 1.0)]),
            &mut |_, _| {},
            &|| true,
        )
        .unwrap_err()
        .to_string();
    assert_eq!(err, "LoRa repository 'someone/missing' not found");
    let again = edit(&mut ed, vec![("someone/tiny-lora".into(), 1.2)]);
    assert!(again.image.data == with_lora.image.data);
}
