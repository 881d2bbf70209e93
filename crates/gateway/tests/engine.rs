//! The whole path with the real engine: gateway → orchestrator → in-process runner, on the
//! tiny instruct-pix2pix fixture model, loaded cold on demand.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera_orchestrator::OrchestratorConfig;

use tessera_testkit::parity_dir as fixtures;

fn job_fields() -> [(&'static str, &'static str); 4] {
    [
        ("num_inference_steps", "2"),
        ("num_images_per_prompt", "2"),
        ("safety_check", "false"),
        ("seed", "7"),
    ]
}

fn square_png() -> Vec<u8> {
    std::fs::read(fixtures().join("inputs/square.png")).unwrap()
}

fn cold(model_id: &str) -> Value {
    json!({"pipeline": "image-to-image", "model_id": model_id, "warm": false,
           "price_per_unit": 1, "currency": "USD"})
}

/// Whether each model is warm, as discovery's metadata says, in model id order.
async fn warm_flags(orchestrator: &str) -> Vec<bool> {
    let (_, listed) = get_json(&format!("{orchestrator}/discovery"), None).await;
    let mut flags: Vec<(String, bool)> = listed[0]["runners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let meta: Value = serde_json::from_str(r["metadata"].as_str().unwrap()).unwrap();
            (
                meta["model_id"].as_str().unwrap().to_owned(),
                meta["warm"].as_bool().unwrap(),
            )
        })
        .collect();
    flags.sort();
    flags.into_iter().map(|(_, warm)| warm).collect()
}

#[tokio::test]
async fn cold_models_load_on_demand_and_the_results_are_the_runners() {
    let models = tempfile::tempdir().unwrap();
    let folder = fixtures().join("models/tiny-instruct-pix2pix");
    for id in ["tessera/tiny-a", "tessera/tiny-b"] {
        tessera_engine::hub::link_as_hub_cache(&folder, models.path(), id).unwrap();
    }
    let o = orchestrator(
        json!([cold("tessera/tiny-a"), cold("tessera/tiny-b")]),
        OrchestratorConfig {
            model_dir: models.path().to_owned(),
            max_cold_loaded: 1,
            ..OrchestratorConfig::default()
        },
    )
    .await;
    assert_eq!(warm_flags(&o).await, [false, false]);

    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.default_model = "tessera/tiny-a".into();
    config.attempt_timeout_secs = 300.0;
    let gw = gateway(config).await;
    let (status, id, body) = post_job(&gw, form(square_png(), &job_fields()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(warm_flags(&o).await, [true, false]);

    // The same job straight to a runner of the same model gives the same images.
    let runner = tessera_runner::Runner::start(&tessera_runner::RunnerConfig {
        model_id: folder.to_string_lossy().into_owned(),
        ..tessera_runner::RunnerConfig::default()
    })
    .unwrap();
    let direct = listen(|l| tessera_runner::serve_on(l, runner)).await;
    let direct_body = loop {
        let (status, _, body) = post_job(&direct, form(square_png(), &job_fields()), None).await;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(status, StatusCode::OK, "{body}");
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (stored, expected) in images.iter().zip(direct_body["images"].as_array().unwrap()) {
        assert_eq!(stored["seed"], expected["seed"]);
        let png = reqwest::get(format!("{gw}{}", stored["url"].as_str().unwrap()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let b64 = expected["url"]
            .as_str()
            .unwrap()
            .strip_prefix("data:image/png;base64,")
            .unwrap();
        let want = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(png.as_ref(), want.as_slice());
    }
    let (_, row) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(row["model_id"], "tessera/tiny-a");
    assert_eq!(row["outputs"], 2);

    // A job for the other cold model unloads the first: one cold model at a time.
    let (status, _, body) = post_job(
        &gw,
        form(
            square_png(),
            &[
                ("model_id", "tessera/tiny-b"),
                ("num_inference_steps", "1"),
                ("safety_check", "false"),
            ],
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(warm_flags(&o).await, [false, true]);

    // The runner's own 400s reach the client unchanged, and no one else is asked.
    let (status, _, body) = post_job(
        &gw,
        form(
            square_png(),
            &[("strength", "3"), ("safety_check", "false")],
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(msg(&body).contains("strength"), "{body}");
}

/// An orchestrator's in-process runners take the limits it is given, so that a gateway can
/// ask it for more images per prompt than a runner's default allows.
#[tokio::test]
async fn in_process_runners_take_the_orchestrators_limits() {
    let models = tempfile::tempdir().unwrap();
    let folder = fixtures().join("models/tiny-instruct-pix2pix");
    tessera_engine::hub::link_as_hub_cache(&folder, models.path(), "tessera/tiny-a").unwrap();
    let config = |max_images_per_prompt| OrchestratorConfig {
        model_dir: models.path().to_owned(),
        limits: tessera_api::Limits {
            max_images_per_prompt,
            ..tessera_api::Limits::default()
        },
        ..OrchestratorConfig::default()
    };
    let fields = [
        ("model_id", "tessera/tiny-a"),
        ("num_inference_steps", "1"),
        ("num_images_per_prompt", "12"),
        ("safety_check", "false"),
        ("seed", "3"),
    ];

    let strict = orchestrator(json!([cold("tessera/tiny-a")]), config(11)).await;
    let strict = runner_url(&strict, "tessera/tiny-a").await;
    let (status, _, body) = post_job(&strict, form(square_png(), &fields), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(msg(&body).contains("num_images_per_prompt"), "{body}");

    let roomy = orchestrator(json!([cold("tessera/tiny-a")]), config(12)).await;
    let roomy = runner_url(&roomy, "tessera/tiny-a").await;
    let (status, _, body) = post_job(&roomy, form(square_png(), &fields), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seeds: Vec<u64> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, (3..15).collect::<Vec<_>>());
}

/// OpenAI's `POST /v1/images/edits` is the same job as `POST /image-to-image`: with the
/// real engine, the same seed and settings (JPEG at OpenAI's `output_compression`, the
/// runner's `output_quality`) give byte-equal images.
#[tokio::test]
async fn openai_edits_give_the_image_to_image_answers_bytes() {
    let models = tempfile::tempdir().unwrap();
    let folder = fixtures().join("models/tiny-instruct-pix2pix");
    tessera_engine::hub::link_as_hub_cache(&folder, models.path(), "tessera/tiny-a").unwrap();
    let o = orchestrator(
        json!([cold("tessera/tiny-a")]),
        OrchestratorConfig {
            model_dir: models.path().to_owned(),
            ..OrchestratorConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.default_model = "tessera/tiny-a".into();
    config.attempt_timeout_secs = 300.0;
    let gw = gateway(config).await;

    let shared = [
        ("num_inference_steps", "2"),
        ("safety_check", "false"),
        ("seed", "11"),
        ("output_format", "jpeg"),
    ];
    let mut native = shared.to_vec();
    native.extend([("num_images_per_prompt", "2"), ("output_quality", "70")]);
    let (status, _, body) = post_job(&gw, form(square_png(), &native), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut want = Vec::new();
    for m in body["images"].as_array().unwrap() {
        let url = format!("{gw}{}", m["url"].as_str().unwrap());
        want.push(reqwest::get(url).await.unwrap().bytes().await.unwrap());
    }

    let mut openai = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(square_png()).file_name("square.png"),
        )
        .text("prompt", "make it blue")
        .text("n", "2")
        .text("output_compression", "70")
        .text("response_format", "b64_json");
    for (k, v) in shared {
        openai = openai.text(k, v);
    }
    let res = reqwest::Client::new()
        .post(format!("{gw}/v1/images/edits"))
        .multipart(openai)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["output_format"], "jpeg");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{body}");
    for (i, (d, want)) in data.iter().zip(&want).enumerate() {
        assert_eq!(d["seed"], 11 + i as u64);
        let got = base64::engine::general_purpose::STANDARD
            .decode(d["b64_json"].as_str().unwrap())
            .unwrap();
        assert!(got.starts_with(&[0xff, 0xd8]), "not a JPEG");
        assert_eq!(got.as_slice(), want.as_ref(), "image {i}");
    }
    let (w, h) = image::load_from_memory(&want[0])
        .unwrap()
        .into_rgb8()
        .dimensions();
    assert_eq!(body["size"], format!("{w}x{h}"));
}
