//! The runner over real HTTP, as an ai-runner client speaks to it: the engine on the tiny
//! instruct-pix2pix fixture model, and every refusal of a request (422, 400, 401, 404, 413).

mod common;

use common::*;
use reqwest::multipart::Form;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;

use tessera_api::Limits;
use tessera_engine::editor::{EditRequest, EditedImage, Editor, EditorConfig};
use tessera_engine::hub::ModelStore;
use tessera_engine::pipelines::EditParams;
use tessera_engine::safety::SharedSafetyChecker;
use tessera_runner::{Runner, RunnerConfig};

fn safety_checker_folder() -> String {
    fixtures()
        .join("diffusers-parity/models/tiny-safety-checker")
        .to_string_lossy()
        .into_owned()
}

fn editor_config() -> EditorConfig {
    let store = ModelStore::new(std::env::temp_dir());
    let device = candle_core::Device::Cpu;
    let safety = SharedSafetyChecker::new(store.clone(), safety_checker_folder(), device.clone());
    EditorConfig {
        model_id: model_folder(),
        store,
        device,
        dtype: candle_core::DType::F32,
        safety: Arc::new(safety),
    }
}

fn lora_file() -> String {
    fixtures()
        .join("diffusers-parity/loras/tiny-pix2pix-lora.safetensors")
        .to_string_lossy()
        .into_owned()
}

/// What the engine computes for the same request with `seed` (and `loras`), run directly,
/// with the safety check.
fn engine_image(seed: u64, loras: Vec<(String, f64)>) -> EditedImage {
    let mut editor = Editor::load(&editor_config()).unwrap();
    let input = tessera_engine::image_io::decode(&input_png()).unwrap();
    let request = EditRequest {
        params: EditParams {
            prompt: "make it blue".into(),
            num_inference_steps: 2,
            ..EditParams::default()
        },
        loras,
        seed,
        num_images: 1,
        safety_check: true,
    };
    let out = editor
        .edit(&input, &request, &mut |_, _| {}, &|| true)
        .unwrap();
    out.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_edits_with_seeded_png_data_urls() {
    let config = RunnerConfig {
        safety_checker: safety_checker_folder(),
        ..config(&model_folder(), None)
    };
    let base = spawn(Runner::start(&config).unwrap()).await;
    assert_eq!(settled_health(&base).await, "OK");
    let model = model_folder();
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[
            ("seed", "1234"),
            ("model_id", &model),
            ("safety_check", "true"),
        ]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let images = a.body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let mut pixels = Vec::new();
    for (i, item) in images.iter().enumerate() {
        assert_eq!(item["seed"], json!(1234 + i as u64));
        let img = decode_data_url(item["url"].as_str().unwrap());
        assert_eq!(img.dimensions(), (64, 64));
        // Image i is exactly the engine's run seeded 1234 + i (the seeds are the ones used),
        // and its nsfw flag is what the safety checker says of it.
        let want = engine_image(1234 + i as u64, vec![]);
        assert_eq!(img.as_raw(), &want.image.data, "image {i}");
        assert_eq!(item["nsfw"], json!(want.nsfw), "image {i}");
        pixels.push(img.into_raw());
    }
    assert_ne!(
        pixels[0], pixels[1],
        "different seeds give different images"
    );

    // No seed: a random first seed below 2^32, the next one for the second image.
    let a = post(&base, "/image-to-image/", valid_form(&[]), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let first = a.body["images"][0]["seed"].as_u64().unwrap();
    assert!(first <= u64::from(u32::MAX));
    assert_eq!(a.body["images"][1]["seed"].as_u64(), Some(first + 1));

    // A LoRA adapter changes the image, as the engine applies it.
    let loras = format!(r#"{{"{}": 0.8}}"#, lora_file());
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[
            ("seed", "1234"),
            ("num_images_per_prompt", "1"),
            ("loras", &loras),
        ]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let img = decode_data_url(a.body["images"][0]["url"].as_str().unwrap());
    assert_eq!(
        img.as_raw(),
        &engine_image(1234, vec![(lora_file(), 0.8)]).image.data
    );
    assert_ne!(img.into_raw(), pixels[0]);

    // One that does not exist is ai-runner's 400, and the model serves on unchanged.
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[("loras", r#"{"/nowhere/x.safetensors": 1}"#)]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(
        msg(&a.body),
        "LoRa repository '/nowhere/x.safetensors' not found"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").unwrap();
    let junk = junk.to_string_lossy().into_owned();
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[("loras", &format!(r#"{{"{junk}": 1}}"#))]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(
        msg(&a.body),
        format!("Unable to load LoRas for adapter '{junk}'")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lora_over_the_size_limit_is_a_400_naming_its_size() {
    let config = RunnerConfig {
        safety_checker: safety_checker_folder(),
        max_lora_mib: 0,
        ..config(&model_folder(), None)
    };
    let base = spawn(Runner::start(&config).unwrap()).await;
    assert_eq!(settled_health(&base).await, "OK");
    let loras = format!(r#"{{"{}": 0.8}}"#, lora_file());
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[("loras", &loras)]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    let m = msg(&a.body);
    let size = std::fs::metadata(lora_file()).unwrap().len();
    assert_eq!(
        m,
        format!(
            "Unable to load LoRas for adapter '{0}': {0} is {1:.1} MiB ({size} bytes), larger \
             than the 0 MiB LoRAs may have (--max-lora-mib)",
            lora_file(),
            size as f64 / (1024.0 * 1024.0)
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_goes_from_loading_to_ok() {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let folder = model_folder();
    let runner = Runner::start_with(&config(&folder, None), move || {
        // Hold the load until the test has seen LOADING.
        wait.recv()?;
        Ok(Editor::load(&editor_config())?)
    });
    let base = spawn(runner).await;
    assert_eq!(health(&base).await, "LOADING");
    assert_eq!(
        get_json(&base, "/health/").await,
        json!({"status": "LOADING"})
    );
    let a = post(&base, "/image-to-image", valid_form(&[]), None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(msg(&a.body).contains("loading"), "{}", a.body);
    release.send(()).unwrap();
    assert_eq!(settled_health(&base).await, "OK");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_fails_to_load_reports_error() {
    let empty = tempfile::tempdir().unwrap();
    let folder = empty.path().to_string_lossy().into_owned();
    let base = spawn(Runner::start(&config(&folder, None)).unwrap()).await;
    assert_eq!(settled_health(&base).await, "ERROR");
    let a = post(&base, "/image-to-image", valid_form(&[]), None).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.body);
    assert!(msg(&a.body).contains("model_index.json"), "{}", a.body);

    // A panicking loader is a failed load too, not a runner stuck in LOADING.
    let boom = || -> anyhow::Result<Editor> { panic!("boom") };
    let runner = Runner::start_with(&config("m", None), boom);
    let base = spawn(runner).await;
    assert_eq!(settled_health(&base).await, "ERROR");
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
    let base = fake_server(config("m", None), echo).await;
    let form = Form::new().text("num_inference_steps", "2");
    let a = post(&base, "/image-to-image", form, None).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.body,
        json!({"detail": [
            {"type": "missing", "loc": ["body", "prompt"], "msg": "Field required"},
            {"type": "missing", "loc": ["body", "image"], "msg": "Field required"},
        ]})
    );
    // A number that is no number is FastAPI's 422 too, echoing the input.
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[("num_inference_steps", "two")]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.body["detail"][0],
        json!({
            "type": "int_parsing",
            "loc": ["body", "num_inference_steps"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "two",
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_400s_that_say_why() {
    let base = fake_server(config("org/model", None), echo).await;
    let long_prompt = "a".repeat(10_001);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("model_id", "someone/else")],
            "pipeline configured with org/model but called with someone/else.",
        ),
        (
            &[("loras", r#"{"a/lora": -0.5}"#)],
            "All strengths must be numbers greater than or equal to 0.0.",
        ),
        (
            &[("loras", r#"{"a/a": 1, "b/b": 1, "c/c": 1, "d/d": 1, "e/e": 1}"#)],
            "Too many LoRas provided. Maximum is 4.",
        ),
        (&[("loras", "{oops")], "Unable to parse '{oops' as JSON."),
        (
            &[("num_inference_steps", "0")],
            "num_inference_steps must be between 1 and 500, got 0.",
        ),
        (
            &[("num_inference_steps", "501")],
            "num_inference_steps must be between 1 and 500, got 501.",
        ),
        (
            &[("num_images_per_prompt", "11")],
            "num_images_per_prompt must be between 1 and 10, got 11.",
        ),
        (
            &[("guidance_scale", "nan")],
            "guidance_scale must be between 0 and 50, got NaN.",
        ),
        (
            &[("image_guidance_scale", "50.5")],
            "image_guidance_scale must be between 0 and 50, got 50.5.",
        ),
        (
            &[("strength", "inf")],
            "strength must be between 0 and 1, got inf.",
        ),
        (
            &[("prompt", &long_prompt)],
            "prompt must be at most 10000 characters, got 10001.",
        ),
        (
            &[("seed", "-1")],
            "seed must be between 0 and 18446744073709551614 (so that seed + 1 fits in 64 bits), got -1.",
        ),
    ];
    for (fields, expected) in cases {
        // The form's own fields come first; the last value of a field counts.
        let a = post(&base, "/image-to-image/", valid_form(fields), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{fields:?}: {}", a.body);
        assert_eq!(msg(&a.body), *expected, "{fields:?}");
    }

    // A prompt past CLIP's 77 tokens but within the limit is fine (the tokenizer truncates).
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[("prompt", &"blue ".repeat(500))]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // safety_check defaults to true and reaches the model (the echo model flags odd seeds).
    let form = Form::new()
        .text("prompt", "p")
        .text("seed", "3")
        .part("image", image_part(input_png()));
    let a = post(&base, "/image-to-image", form, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["images"][0]["nsfw"], json!(true), "{}", a.body);
}

/// A PNG whose header claims `width` x `height` pixels, with (almost) no pixel data behind
/// it: what a decompression bomb looks like until its pixels are inflated.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", ihdr),
        // An empty zlib stream.
        (
            b"IDAT",
            vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        (b"IEND", Vec::new()),
    ] {
        png.extend((data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

/// The CRC-32 of PNG chunks (ISO 3309), bit by bit: test inputs are a few bytes long.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_before_decoding() {
    let limits = Limits {
        max_upload_bytes: 8192,
        ..Limits::default()
    };
    let base = fake_server(
        RunnerConfig {
            limits,
            ..config("m", None)
        },
        echo,
    )
    .await;
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            png_header_only(50_000, 50_000),
            StatusCode::BAD_REQUEST,
            "image: image is 50000x50000; the largest accepted is 4096x4096",
        ),
        (
            png_header_only(4097, 16),
            StatusCode::BAD_REQUEST,
            "image: image is 4097x16; the largest accepted is 4096x4096",
        ),
        (
            b"not an image".to_vec(),
            StatusCode::BAD_REQUEST,
            "image: not an image: the data is not a recognised image format \
             (PNG, JPEG, WebP, GIF, BMP or TIFF)",
        ),
        (
            vec![0; 8193],
            StatusCode::PAYLOAD_TOO_LARGE,
            "image: the upload is 8193 bytes; the largest accepted is 8192 bytes.",
        ),
    ];
    for (bytes, status, expected) in cases {
        let a = post(&base, "/image-to-image", form_with_image(bytes, &[]), None).await;
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(msg(&a.body), expected);
    }
    // Truncated: the first half of a real PNG.
    let png = input_png();
    let half = png[..png.len() / 2].to_vec();
    let a = post(&base, "/image-to-image", form_with_image(half, &[]), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(msg(&a.body).contains("truncated"), "{}", a.body);

    // A body far past the limit is a 413 too, whatever it holds.
    let a = post(
        &base,
        "/image-to-image",
        form_with_image(vec![0; 3 << 20], &[]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert_eq!(
        msg(&a.body),
        "The request body is larger than the runner accepts."
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_decoded_as_ai_runners_pillow_reads_them() {
    // The echo model gives back what the runner decoded: an EXIF-rotated image as stored
    // (ai-runner's `Image.open(..).convert("RGB")` does not turn it), alpha dropped.
    let base = fake_server(config("m", None), echo).await;
    let dir = fixtures().join("runner");
    for (input, expected) in [
        ("rotated.png", "rotated_expected.png"),
        ("rgba.png", "rgba_expected.png"),
    ] {
        let bytes = std::fs::read(dir.join(input)).unwrap();
        let a = post(
            &base,
            "/image-to-image",
            form_with_image(bytes, &[("num_images_per_prompt", "1")]),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{input}: {}", a.body);
        let got = decode_data_url(a.body["images"][0]["url"].as_str().unwrap());
        let want = image::open(dir.join(expected)).unwrap().to_rgb8();
        assert_eq!(got.dimensions(), want.dimensions(), "{input}");
        assert_eq!(got.as_raw(), want.as_raw(), "{input}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auth_token_guards_inference_but_not_health() {
    let base = fake_server(config("m", Some("s3cret")), echo).await;
    for token in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let a = post(&base, "/image-to-image", valid_form(&[]), token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        assert_eq!(a.body, json!({"detail": {"msg": "Invalid bearer token."}}));
    }
    assert_eq!(health(&base).await, "OK");
    // The right token gets through to the form checks, and to the model.
    let a = post(
        &base,
        "/image-to-image",
        Form::new().text("seed", "1"),
        Some("s3cret"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    let a = post(&base, "/image-to-image", valid_form(&[]), Some("s3cret")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_and_methods_get_fastapis_404_and_405() {
    let base = fake_server(config("m", None), echo).await;
    let res = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"detail": "Not Found"})
    );
    let res = reqwest::get(format!("{base}/image-to-image"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"detail": "Method Not Allowed"})
    );
}
