//! The runner over real HTTP: each test starts a server on a loopback port with the tiny
//! instruct-pix2pix fixture model and speaks multipart to it, as an ai-runner client would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::{self, EditParams};
use tessera_runner::{serve_on, Runner, RunnerConfig};
use tokio::net::TcpListener;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/diffusers-parity")
}

fn model_folder() -> String {
    fixtures()
        .join("models/tiny-instruct-pix2pix")
        .to_string_lossy()
        .into_owned()
}

fn input_png() -> Vec<u8> {
    std::fs::read(fixtures().join("inputs/square.png")).unwrap()
}

fn config(model_id: &str, auth_token: Option<&str>) -> RunnerConfig {
    RunnerConfig {
        model_id: model_id.into(),
        auth_token: auth_token.map(str::to_owned),
        ..RunnerConfig::default()
    }
}

/// Serves `runner` on a free loopback port; the server lives as long as the test's runtime.
async fn spawn(runner: Runner) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_on(listener, runner));
    base
}

async fn health(base: &str) -> String {
    let res = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

/// Polls `/health` until it leaves LOADING, and returns what it became.
async fn settled_health(base: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = health(base).await;
        if status != "LOADING" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the model is still loading after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fixture-model server that has finished loading.
async fn ready_server(auth_token: Option<&str>) -> String {
    let base = spawn(Runner::start(&config(&model_folder(), auth_token)).unwrap()).await;
    assert_eq!(settled_health(&base).await, "OK");
    base
}

/// A request the runner accepts: 2 steps, 2 images, no safety check.
fn valid_form(fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .text("prompt", "make it blue")
        .part(
            "image",
            Part::bytes(input_png())
                .file_name("in.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("num_inference_steps", "2")
        .text("num_images_per_prompt", "2")
        .text("safety_check", "false");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

async fn post(base: &str, path: &str, form: Form, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

fn msg(body: &Value) -> &str {
    body["detail"]["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail.msg in {body}"))
}

fn decode_data_url(url: &str) -> image::RgbImage {
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("not a PNG data URL: {}", &url[..url.len().min(40)]));
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory_with_format(&png, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

/// What the engine computes for the same request with `seed`, run directly.
fn engine_image(seed: u64) -> Vec<u8> {
    let device = candle_core::Device::Cpu;
    let pipe =
        pipelines::load(Path::new(&model_folder()), &device, candle_core::DType::F32).unwrap();
    let input = tessera_engine::image_io::decode(&input_png()).unwrap();
    let params = EditParams {
        prompt: "make it blue".into(),
        num_inference_steps: 2,
        ..EditParams::default()
    };
    let out = pipe
        .run(
            &params,
            &input,
            &mut TorchCpuNoise::new(seed),
            &mut |_, _| {},
        )
        .unwrap();
    let rgb = tessera_engine::image_io::to_rgb8(&out.images).unwrap();
    rgb.into_iter().next().unwrap().data
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_return_seeded_png_data_urls() {
    let base = ready_server(None).await;
    let model = model_folder();
    let (status, body) = post(
        &base,
        "/image-to-image",
        valid_form(&[("seed", "1234"), ("model_id", &model)]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let mut pixels = Vec::new();
    for (i, item) in images.iter().enumerate() {
        assert_eq!(item["seed"], json!(1234 + i as u64));
        assert_eq!(item["nsfw"], json!(false));
        let img = decode_data_url(item["url"].as_str().unwrap());
        assert_eq!(img.dimensions(), (64, 64));
        // Image i is exactly the engine's run seeded 1234 + i: the seeds are the ones used.
        assert_eq!(img.as_raw(), &engine_image(1234 + i as u64), "image {i}");
        pixels.push(img.into_raw());
    }
    assert_ne!(
        pixels[0], pixels[1],
        "different seeds give different images"
    );

    // No seed: a random first seed below 2^32, the next one for the second image.
    let (status, body) = post(&base, "/image-to-image/", valid_form(&[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = body["images"][0]["seed"].as_u64().unwrap();
    assert!(first <= u64::from(u32::MAX));
    assert_eq!(body["images"][1]["seed"].as_u64(), Some(first + 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_goes_from_loading_to_ok() {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let folder = model_folder();
    let runner = Runner::start_with(folder.clone(), None, move || {
        // Hold the load until the test has seen LOADING.
        wait.recv()?;
        let device = candle_core::Device::Cpu;
        Ok(pipelines::load(
            Path::new(&folder),
            &device,
            candle_core::DType::F32,
        )?)
    });
    let base = spawn(runner).await;
    assert_eq!(health(&base).await, "LOADING");
    assert_eq!(
        reqwest::get(format!("{base}/health/"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (status, body) = post(&base, "/image-to-image", valid_form(&[]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(msg(&body).contains("loading"), "{body}");
    release.send(()).unwrap();
    assert_eq!(settled_health(&base).await, "OK");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_fails_to_load_reports_error() {
    let empty = tempfile::tempdir().unwrap();
    let folder = empty.path().to_string_lossy().into_owned();
    let base = spawn(Runner::start(&config(&folder, None)).unwrap()).await;
    assert_eq!(settled_health(&base).await, "ERROR");
    let (status, body) = post(&base, "/image-to-image", valid_form(&[]), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(msg(&body).contains("model_index.json"), "{body}");
}

#[tokio::test]
async fn a_bad_device_fails_at_start() {
    let mut cfg = config(&model_folder(), None);
    cfg.device = "tpu".into();
    let err = Runner::start(&cfg).err().expect("tpu is no device");
    assert!(err.to_string().contains("tpu"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_fields_get_fastapis_422() {
    let base = ready_server(None).await;
    let form = Form::new().text("num_inference_steps", "2");
    let (status, body) = post(&base, "/image-to-image", form, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"detail": [
            {"type": "missing", "loc": ["body", "prompt"], "msg": "Field required"},
            {"type": "missing", "loc": ["body", "image"], "msg": "Field required"},
        ]})
    );
    // A number that is no number is FastAPI's 422 too.
    let (status, body) = post(
        &base,
        "/image-to-image",
        valid_form(&[("num_inference_steps", "two")]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["type"], "int_parsing");
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "num_inference_steps"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_400s_that_say_why() {
    let base = ready_server(None).await;
    let model = model_folder();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("model_id", "someone/else")],
            "pipeline configured with {model} but called with someone/else.",
        ),
        (
            &[("loras", r#"{"a/lora": 0.5}"#)],
            "LoRA adapters are not supported yet",
        ),
        (
            &[("num_inference_steps", "0")],
            "num_inference_steps must be between 1 and 500, got 0.",
        ),
        (
            &[("num_images_per_prompt", "11")],
            "num_images_per_prompt must be between 1 and 10, got 11.",
        ),
        (
            &[("guidance_scale", "nan")],
            "guidance_scale must be between 0 and 50, got NaN.",
        ),
    ];
    for (fields, expected) in cases {
        // The form's own fields come first; the last value of a field counts.
        let (status, body) = post(&base, "/image-to-image/", valid_form(fields), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields:?}: {body}");
        assert_eq!(
            msg(&body),
            expected.replace("{model}", &model),
            "{fields:?}"
        );
    }

    let junk = Form::new()
        .text("prompt", "p")
        .text("safety_check", "false")
        .part(
            "image",
            Part::bytes(b"not an image".to_vec()).file_name("x.png"),
        );
    let (status, body) = post(&base, "/image-to-image", junk, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(msg(&body).starts_with("image: "), "{body}");

    // safety_check defaults to true; the checker is not built, so no image is called safe.
    let form = valid_form(&[("safety_check", "true")]);
    let (status, body) = post(&base, "/image-to-image", form, None).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(msg(&body).contains("safety_check=false"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auth_token_guards_inference_but_not_health() {
    let base = ready_server(Some("s3cret")).await;
    for token in [None, Some("wrong")] {
        let res = reqwest::Client::new()
            .post(format!("{base}/image-to-image"))
            .multipart(valid_form(&[]));
        let res = match token {
            Some(t) => res.bearer_auth(t),
            None => res,
        }
        .send()
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, json!({"detail": {"msg": "Invalid bearer token."}}));
    }
    // The right token gets through to the form checks.
    let form = Form::new().text("seed", "1");
    let (status, body) = post(&base, "/image-to-image", form, Some("s3cret")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_get_fastapis_404() {
    let base = ready_server(None).await;
    let res = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"detail": "Not Found"})
    );
}
