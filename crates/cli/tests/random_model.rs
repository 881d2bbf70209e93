//! `tessera random-model` and `tessera bench` end to end, on the hidden toy-size architectures:
//! the folder must load in tessera's own loaders (and tokenize as transformers does), and the
//! bench must time every component of it, from the folder and in memory.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tessera_engine::clip::ClipTextModel;
use tessera_engine::schedulers::{SchedulerConfig, TimestepSpacing};
use tessera_engine::tokenizer::ClipTokenizer;
use tessera_engine::unet::{AddedConditioning, UNet2DConditionModel};
use tessera_engine::vae::AutoencoderKl;

fn tessera(args: &[&str]) -> String {
    let out = tessera_testkit::tessera(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("tessera runs");
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write_model(arch: &str, dir: &Path) {
    tessera(&[
        "random-model",
        "--arch",
        arch,
        "--out",
        dir.to_str().unwrap(),
    ]);
}

fn fixture_tokens() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/bench/tokens.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The tokenizer folder gives the ids transformers' CLIPTokenizer gives (fixture).
fn check_tokenizer(dir: &Path, name: &str) -> ClipTokenizer {
    let tok = ClipTokenizer::from_dir(&dir.join(name)).unwrap();
    let expected = fixture_tokens();
    let prompts = expected["prompts"].as_array().unwrap();
    for (prompt, ids) in prompts.iter().zip(expected[name].as_array().unwrap()) {
        let ids: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(prompt.as_str().unwrap()),
            ids,
            "{name}: {prompt}"
        );
    }
    tok
}

#[test]
fn pix2pix_folder_loads_in_tesseras_loaders() {
    let dir = tempfile::tempdir().unwrap();
    write_model("tiny", dir.path());
    let (cpu, f32) = (&Device::Cpu, DType::F32);

    let tok = check_tokenizer(dir.path(), "tokenizer");
    let ids = Tensor::new(vec![tok.encode("make it snow")], cpu).unwrap();
    let text = ClipTextModel::load(&dir.path().join("text_encoder"), None, f32, cpu).unwrap();
    let context = text.forward(&ids).unwrap().last_hidden_state;
    assert_eq!(context.dims(), &[1, 77, 32]);

    let vae = AutoencoderKl::load(&dir.path().join("vae"), None, f32, cpu).unwrap();
    assert_eq!(vae.config().scaling_factor, 0.18215);
    let image = Tensor::zeros((1, 3, 64, 64), f32, cpu).unwrap();
    let latents = vae.encode(&image).unwrap().mode();
    assert_eq!(latents.dims(), &[1, 4, 8, 8]);

    let unet = UNet2DConditionModel::load(&dir.path().join("unet"), None, f32, cpu).unwrap();
    assert_eq!(unet.config().in_channels, 8);
    let sample = Tensor::cat(&[&latents, &latents], 1).unwrap();
    let eps = unet.forward(&sample, 500.0, &context, None).unwrap();
    assert_eq!(eps.dims(), &[1, 4, 8, 8]);
    assert_eq!(vae.decode(&eps).unwrap().dims(), &[1, 3, 64, 64]);

    let scheduler =
        SchedulerConfig::from_file(&dir.path().join("scheduler/scheduler_config.json")).unwrap();
    assert_eq!(scheduler.class_name, "EulerAncestralDiscreteScheduler");
    assert_eq!(scheduler.steps_offset, 1);
    // The real file leaves the spacing out; diffusers' default for this class applies.
    assert_eq!(scheduler.timestep_spacing, TimestepSpacing::Linspace);
}

#[test]
fn sdxl_folder_loads_in_tesseras_loaders() {
    let dir = tempfile::tempdir().unwrap();
    write_model("tiny-sdxl", dir.path());
    let (cpu, f32) = (&Device::Cpu, DType::F32);
    let tok = check_tokenizer(dir.path(), "tokenizer");
    let tok_2 = check_tokenizer(dir.path(), "tokenizer_2");
    assert_eq!((tok.pad_id(), tok_2.pad_id()), (49407, 0));

    let ids = Tensor::new(vec![tok.encode("a cat")], cpu).unwrap();
    let ids_2 = Tensor::new(vec![tok_2.encode("a cat")], cpu).unwrap();
    let one = ClipTextModel::load(&dir.path().join("text_encoder"), None, f32, cpu).unwrap();
    let two = ClipTextModel::load(&dir.path().join("text_encoder_2"), None, f32, cpu).unwrap();
    let out_2 = two.forward(&ids_2).unwrap();
    let pooled = out_2
        .text_embeds
        .expect("text_encoder_2 has the projection");
    assert_eq!(pooled.dims(), &[1, 48]);
    let penultimate = |h: &[Tensor]| h[h.len() - 2].clone();
    let context = Tensor::cat(
        &[
            penultimate(&one.forward(&ids).unwrap().hidden_states),
            penultimate(&out_2.hidden_states),
        ],
        2,
    )
    .unwrap();

    let unet = UNet2DConditionModel::load(&dir.path().join("unet"), None, f32, cpu).unwrap();
    let added = AddedConditioning {
        text_embeds: pooled,
        time_ids: Tensor::new(&[[64f32, 64., 0., 0., 64., 64.]], cpu).unwrap(),
    };
    let sample = Tensor::zeros((1, 4, 8, 8), f32, cpu).unwrap();
    let eps = unet
        .forward(&sample, 999.0, &context, Some(&added))
        .unwrap();
    assert_eq!(eps.dims(), &[1, 4, 8, 8]);
    let vae = AutoencoderKl::load(&dir.path().join("vae"), None, f32, cpu).unwrap();
    assert_eq!(vae.decode(&eps).unwrap().dims(), &[1, 3, 64, 64]);
    let scheduler =
        SchedulerConfig::from_file(&dir.path().join("scheduler/scheduler_config.json")).unwrap();
    assert_eq!(scheduler.class_name, "EulerDiscreteScheduler");
    assert_eq!(scheduler.timestep_spacing, TimestepSpacing::Leading);
}

/// The figures of each component, by name, from `tessera bench --json`.
fn bench_results(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["bench", "--iters", "2", "--json"];
    all.extend_from_slice(args);
    let report: serde_json::Value = serde_json::from_str(&tessera(&all)).unwrap();
    assert_eq!(report["tool"], "tessera");
    let results = report["results"].as_array().unwrap().clone();
    for r in &results {
        assert_eq!(r["times_ms"].as_array().unwrap().len(), 2, "{r}");
        let (median, min) = (
            r["median_ms"].as_f64().unwrap(),
            r["min_ms"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= median, "{r}");
        assert!(r["gflop"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["gflop_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    results
}

fn components_and_shapes(results: &[serde_json::Value]) -> Vec<(String, serde_json::Value)> {
    results
        .iter()
        .map(|r| {
            (
                r["component"].as_str().unwrap().to_string(),
                r["input_shape"].clone(),
            )
        })
        .collect()
}

#[test]
fn bench_times_every_component_at_the_default_shapes() {
    let results = bench_results(&["--arch", "tiny"]);
    let expected = [
        ("text", serde_json::json!([2, 77])),
        ("vae-encode", serde_json::json!([1, 3, 64, 64])),
        ("unet", serde_json::json!([3, 8, 8, 8])),
        ("vae-decode", serde_json::json!([1, 4, 8, 8])),
    ];
    let expected: Vec<(String, serde_json::Value)> = expected
        .into_iter()
        .map(|(c, s)| (c.to_string(), s))
        .collect();
    assert_eq!(components_and_shapes(&results), expected);
}

#[test]
fn bench_reads_a_folder_with_two_text_encoders() {
    let dir = tempfile::tempdir().unwrap();
    write_model("tiny-sdxl", dir.path());
    let folder = dir.path().to_str().unwrap();
    let results = bench_results(&["--model-dir", folder, "--component", "text"]);
    let names: Vec<String> = components_and_shapes(&results)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(names, ["text", "text-2"]);
    let results = bench_results(&[
        "--model-dir",
        folder,
        "--component",
        "unet",
        "--batch",
        "2",
        "--size",
        "96",
    ]);
    assert_eq!(
        components_and_shapes(&results),
        [("unet".to_string(), serde_json::json!([2, 4, 12, 12]))]
    );
}
