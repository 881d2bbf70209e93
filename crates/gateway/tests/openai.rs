//! OpenAI's images API on the gateway: `POST /v1/images/edits` translated into the
//! gateway's own job (checked at the fake runner that gets it), its answers and errors in
//! OpenAI's shapes, API keys, and `GET /v1/models`. Real servers on loopback ports; the
//! runners are the fakes of `common`.

mod common;

use base64::Engine as _;
use common::*;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera_orchestrator::OrchestratorConfig;

/// An OpenAI edit form: the image as OpenAI's Python SDK sends one, a prompt, then `fields`.
fn edit_form(image: Vec<u8>, fields: &[(&str, &str)]) -> Form {
    // Names as they are (`loras[a/b]`), as OpenAI's SDKs send them; reqwest would
    // percent-encode them otherwise.
    let mut form = Form::new()
        .percent_encode_noop()
        .part(
            "image",
            Part::bytes(image)
                .file_name("in.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("prompt", "make it blue");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

/// Posts an edit; returns status, request id, headers and JSON body.
async fn post_edit(
    base: &str,
    form: Form,
    key: Option<&str>,
) -> (StatusCode, String, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/images/edits"))
        .multipart(form);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let id = headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {e}: {text}"));
    (status, id, headers, body)
}

/// Asserts an OpenAI error body and returns its message.
fn openai_error(body: &Value, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    let e = &body["error"];
    assert_eq!(e["type"], kind, "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
    assert_eq!(e["code"].as_str(), code, "{body}");
    assert_eq!(e.as_object().unwrap().len(), 4, "{body}");
    e["message"].as_str().unwrap().to_owned()
}

fn b64(text: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.as_str().unwrap())
        .unwrap()
}

async fn one_runner_gateway(
    behaviour: Behaviour,
    keys: &[&str],
) -> (FakeRunner, String, tempfile::TempDir) {
    let runner = fake_runner(behaviour, None).await;
    let o = orchestrator_for(&runner, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.api_keys = keys.iter().map(|k| k.to_string()).collect();
    let gw = gateway(config).await;
    (runner, gw, dir)
}

#[tokio::test]
async fn an_edit_runs_as_an_image_to_image_job_and_answers_openai_s_images_response() {
    let (runner, gw, _dir) = one_runner_gateway(Behaviour::Answer { tag: 1 }, &[]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (status, id, _, body) = post_edit(
        &gw,
        edit_form(
            input_png(16, 8),
            &[
                ("n", "2"),
                ("user", "someone"),
                ("seed", "42"),
                ("num_inference_steps", "3"),
                ("negative_prompt", "red"),
                ("loras[a/b]", "0.5"),
            ],
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // What the runner got: ai-runner's fields, the model the gateway's default.
    let text = |name| runner.last_text(name);
    assert_eq!(text("model_id").as_deref(), Some("org/model"));
    assert_eq!(text("num_images_per_prompt").as_deref(), Some("2"));
    assert_eq!(text("seed").as_deref(), Some("42"));
    assert_eq!(text("num_inference_steps").as_deref(), Some("3"));
    assert_eq!(text("negative_prompt").as_deref(), Some("red"));
    assert_eq!(text("prompt").as_deref(), Some("make it blue"));
    assert_eq!(text("loras").as_deref(), Some(r#"{"a/b": 0.5}"#));
    assert_eq!(text("output_format").as_deref(), Some("png"));
    let fields = runner.last_fields();
    let image = fields.iter().find(|(n, _)| n == "image").unwrap();
    assert_eq!(image.1, input_png(16, 8));
    for gone in ["n", "model", "user", "response_format"] {
        assert!(fields.iter().all(|(n, _)| n != gone), "{gone} was sent on");
    }

    // OpenAI's answer, b64_json by default, with the runner's images.
    let created = body["created"].as_u64().unwrap();
    assert!(created >= before, "{body}");
    assert_eq!(body["output_format"], "png");
    assert_eq!(body["background"], "opaque");
    assert_eq!(body["size"], "2x2");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(b64(&d["b64_json"]), fake_png(1, i as u8));
        assert!(d.get("url").is_none(), "{d}");
        assert_eq!(d["seed"], 42 + i as u64);
        assert_eq!(d["nsfw"], false);
    }

    // The same ledger as every job.
    let (status, row) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["status"], "ok");
    assert_eq!(row["model_id"], "org/model");
    assert_eq!(row["outputs"], 2);
    assert_eq!(row["fee"], 16.0 * 8.0 * 2.0);
}

#[tokio::test]
async fn url_answers_are_absolute_and_serve_the_stored_images() {
    let (runner, gw, _dir) = one_runner_gateway(Behaviour::Answer { tag: 2 }, &[]).await;
    let (status, _, _, body) = post_edit(
        &gw,
        edit_form(
            input_png(8, 8),
            &[
                ("model", "org/model"),
                ("response_format", "url"),
                ("output_format", "jpeg"),
                ("output_compression", "60"),
                ("size", "8x8"),
                ("quality", "auto"),
                ("background", "auto"),
            ],
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(runner.last_text("output_format").as_deref(), Some("jpeg"));
    assert_eq!(runner.last_text("output_quality").as_deref(), Some("60"));
    // The format of what the runner made: the fake answers PNGs whatever was asked.
    assert_eq!(body["output_format"], "png");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    let url = data[0]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{gw}/stream/")), "{url}");
    assert!(data[0].get("b64_json").is_none());
    let got = reqwest::get(url).await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    // The fake runner answers PNGs whatever was asked; the store keeps what it got.
    assert_eq!(
        got.bytes().await.unwrap().as_ref(),
        fake_png(2, 0).as_slice()
    );
}

#[tokio::test]
async fn fields_tessera_cannot_honour_are_400s_naming_them_and_reach_no_runner() {
    let (runner, gw, _dir) = one_runner_gateway(Behaviour::Answer { tag: 1 }, &[]).await;
    let mask = edit_form(input_png(8, 8), &[])
        .part("mask", Part::bytes(input_png(8, 8)).file_name("mask.png"));
    let (status, id, _, body) = post_edit(&gw, mask, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = openai_error(
        &body,
        "invalid_request_error",
        Some("mask"),
        Some("unsupported_parameter"),
    );
    assert!(message.contains("mask"), "{message}");
    // Recorded as every refused request is.
    let (_, row) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(row["status"], "rejected", "{row}");

    for (fields, param, code) in [
        (vec![("size", "1024x1024")], "size", "unsupported_parameter"),
        (
            vec![("background", "transparent")],
            "background",
            "unsupported_parameter",
        ),
        (vec![("stream", "true")], "stream", "unsupported_parameter"),
        (
            vec![("output_format", "gif")],
            "output_format",
            "invalid_value",
        ),
        (vec![("n", "0")], "n", "invalid_value"),
        (vec![("frobnicate", "1")], "frobnicate", "unknown_parameter"),
    ] {
        let (status, _, _, body) = post_edit(&gw, edit_form(input_png(8, 8), &fields), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        openai_error(&body, "invalid_request_error", Some(param), Some(code));
    }

    // Checked as a runner would, before any runner is asked; the param is OpenAI's name.
    let (status, _, _, body) =
        post_edit(&gw, edit_form(input_png(8, 8), &[("strength", "2")]), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = openai_error(&body, "invalid_request_error", Some("strength"), None);
    assert_eq!(message, "strength must be between 0 and 1, got 2.");
    let (status, _, _, body) = post_edit(&gw, edit_form(b"not an image".to_vec(), &[]), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    openai_error(&body, "invalid_request_error", Some("image"), None);

    // Two images, one field each way the SDK names them.
    let two = edit_form(input_png(8, 8), &[])
        .part("image[]", Part::bytes(input_png(8, 8)).file_name("b.png"));
    let (status, _, _, body) = post_edit(&gw, two, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    openai_error(
        &body,
        "invalid_request_error",
        Some("image"),
        Some("invalid_value"),
    );
    let no_prompt = Form::new().part("image", Part::bytes(input_png(8, 8)).file_name("a.png"));
    let (status, _, _, body) = post_edit(&gw, no_prompt, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    openai_error(
        &body,
        "invalid_request_error",
        Some("prompt"),
        Some("missing_required_parameter"),
    );
    assert_eq!(runner.hits(), 0);

    // Not multipart.
    let res = reqwest::Client::new()
        .post(format!("{gw}/v1/images/edits"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert!(openai_error(&body, "invalid_request_error", None, None).contains("multipart"));
}

#[tokio::test]
async fn unknown_models_are_404s_and_failed_jobs_server_errors() {
    let (runner, gw, _dir) = one_runner_gateway(Behaviour::Fail, &[]).await;
    let (status, _, _, body) = post_edit(
        &gw,
        edit_form(input_png(8, 8), &[("model", "no/such")]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = openai_error(
        &body,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    );
    assert!(message.contains("no/such"), "{message}");
    assert_eq!(runner.hits(), 0);

    let (status, _, _, body) = post_edit(&gw, edit_form(input_png(8, 8), &[]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let message = openai_error(&body, "server_error", None, None);
    assert!(
        message.contains("no orchestrator could do the job"),
        "{message}"
    );
    assert_eq!(runner.hits(), 1);
}

#[tokio::test]
async fn api_keys_guard_the_openai_routes_with_openai_s_401() {
    let (_runner, gw, _dir) = one_runner_gateway(Behaviour::Answer { tag: 1 }, &["k1"]).await;
    for key in [None, Some("wrong")] {
        let (status, _, headers, body) = post_edit(&gw, edit_form(input_png(8, 8), &[]), key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["www-authenticate"], "Bearer");
        openai_error(
            &body,
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        );
        let (status, body) = get_json(&format!("{gw}/v1/models"), key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        openai_error(
            &body,
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        );
    }
    let (status, _, _, body) = post_edit(&gw, edit_form(input_png(8, 8), &[]), Some("k1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get_json(&format!("{gw}/v1/models"), Some("k1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn models_lists_what_the_ready_runners_serve_in_openai_s_shape() {
    let a = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let b = fake_runner(Behaviour::Answer { tag: 2 }, None).await;
    let o1 = orchestrator(
        json!([external("org/model", true, 1.0, "USD", &a.url)]),
        OrchestratorConfig::default(),
    )
    .await;
    let o2 = orchestrator(
        json!([
            external("org/model", true, 2.0, "USD", &b.url),
            external("other/model", false, 1.0, "USD", &b.url)
        ]),
        OrchestratorConfig::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o1, &o2])).await;

    let (status, body) = get_json(&format!("{gw}/v1/models"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["org/model", "other/model"]);
    for (m, owner) in data.iter().zip(["org", "other"]) {
        assert_eq!(m.as_object().unwrap().len(), 4, "{m}");
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], owner);
        assert!(m["created"].as_u64().unwrap() > 1_700_000_000, "{m}");
    }

    let (status, one) = get_json(&format!("{gw}/v1/models/other/model"), None).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(&one, &data[1]);
    let (status, body) = get_json(&format!("{gw}/v1/models/no/such"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    openai_error(
        &body,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    );

    // Other OpenAI routes are OpenAI's 404, not an empty one.
    let res = reqwest::Client::new()
        .post(format!("{gw}/v1/images/generations"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.unwrap();
    let message = openai_error(&body, "invalid_request_error", None, Some("unknown_url"));
    assert!(message.contains("/v1/images/generations"), "{message}");
}

#[tokio::test]
async fn an_oversized_body_is_a_413_in_openai_s_shape() {
    let runner = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o = orchestrator_for(&runner, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.limits.max_upload_bytes = 1000;
    let gw = gateway(config).await;
    let big = vec![0u8; 2 << 20];
    let (status, _, _, body) = post_edit(&gw, edit_form(big, &[]), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let message = openai_error(&body, "invalid_request_error", None, None);
    assert!(
        message.contains("larger than the gateway accepts"),
        "{message}"
    );
    assert_eq!(runner.hits(), 0);
}
