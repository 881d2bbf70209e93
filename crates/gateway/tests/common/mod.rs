//! Real servers on loopback ports for the network tests: fake ai-runner-compatible runners
//! (a few lines of axum each), orchestrators in front of them, and gateways.

#![allow(dead_code, unused_imports)] // Each test binary uses its own share of these helpers.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use tessera_gateway::{Gateway, GatewayConfig};
use tessera_orchestrator::{parse_models, Orchestrator, OrchestratorConfig};
pub use tessera_testkit::{get_json, msg, png as input_png};
use tokio::net::TcpListener;

/// The secret Live Runners register with at the test orchestrators.
pub const SECRET: &str = "orchestrator-secret";

/// What a fake runner does with a job.
#[derive(Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Answers `num_images_per_prompt` PNGs, image `i` a 2x2 of grey level `tag * 16 + i`.
    Answer { tag: u8 },
    /// Answers ai-runner's generic 500.
    Fail,
    /// Never answers.
    Hang,
    /// Waits until [`FakeRunner::release`] is called, then answers like `Answer`.
    Block { tag: u8 },
    /// Takes `millis` before answering like `Answer`.
    Slow { tag: u8, millis: u64 },
    /// Answers a full queue's 503 with `Retry-After: retry_after`, as the runner does.
    Busy { retry_after: u64 },
}

/// The fields of a form, by name, as sent, in order.
pub type Fields = Vec<(String, Vec<u8>)>;

/// A fake runner and what it saw.
#[derive(Clone)]
pub struct FakeRunner {
    pub url: String,
    hits: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    last: Arc<Mutex<Fields>>,
}

impl FakeRunner {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The fields of the last job it got.
    pub fn last_fields(&self) -> Fields {
        self.last.lock().unwrap().clone()
    }

    /// The last job's text field `name`, if it had one.
    pub fn last_text(&self, name: &str) -> Option<String> {
        self.last_fields()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v).unwrap())
    }

    /// Lets every blocked job through.
    pub fn release(&self) {
        self.gate.add_permits(1000);
    }
}

#[derive(Clone)]
struct FakeState {
    behaviour: Behaviour,
    token: Option<String>,
    hits: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    last: Arc<Mutex<Fields>>,
}

/// The PNG a fake runner answers for image `i` with `tag`.
pub fn fake_png(tag: u8, i: u8) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(2, 2, image::Luma([tag * 16 + i]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn fake_job(State(s): State<FakeState>, headers: HeaderMap, mut form: Multipart) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(token) = &s.token {
        let sent = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if sent != format!("Bearer {token}") {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"detail": {"msg": "Invalid bearer token."}})),
            )
                .into_response();
        }
    }
    let mut images = 1u8;
    let mut fields = Vec::new();
    while let Some(field) = form.next_field().await.unwrap() {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.unwrap().to_vec();
        if name == "num_images_per_prompt" {
            images = std::str::from_utf8(&data).unwrap().parse().unwrap();
        }
        fields.push((name, data));
    }
    *s.last.lock().unwrap() = fields;
    let tag = match s.behaviour {
        Behaviour::Answer { tag } => tag,
        Behaviour::Block { tag } => {
            let _permit = s.gate.acquire().await.unwrap();
            tag
        }
        Behaviour::Slow { tag, millis } => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            tag
        }
        Behaviour::Fail => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"detail": {"msg": "Image-to-image pipeline error."}})),
            )
                .into_response()
        }
        Behaviour::Hang => return std::future::pending::<Response>().await,
        Behaviour::Busy { retry_after } => {
            return tessera_api::ApiError::Busy {
                retry_after_secs: retry_after,
            }
            .into_response()
        }
    };
    let images: Vec<Value> = (0..images)
        .map(|i| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(fake_png(tag, i));
            json!({"url": format!("data:image/png;base64,{b64}"), "seed": 42 + i as u64, "nsfw": false})
        })
        .collect();
    Json(json!({ "images": images })).into_response()
}

pub async fn listen<F, Fut>(serve: F) -> String
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener));
    url
}

/// A fake runner on a loopback port; with `token`, it wants that bearer token.
pub async fn fake_runner(behaviour: Behaviour, token: Option<&str>) -> FakeRunner {
    let state = FakeState {
        behaviour,
        token: token.map(str::to_owned),
        hits: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        last: Arc::new(Mutex::new(Vec::new())),
    };
    let (hits, gate, last) = (state.hits.clone(), state.gate.clone(), state.last.clone());
    let app = Router::new()
        .route("/image-to-image", post(fake_job))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(state);
    let url = listen(|l| async move { Ok(axum::serve(l, app).await?) }).await;
    FakeRunner {
        url,
        hits,
        gate,
        last,
    }
}

/// One `aiModels.json` entry for an external runner.
pub fn external(
    model: &str,
    warm: bool,
    price_per_unit: f64,
    currency: &str,
    runner: &str,
) -> Value {
    json!({"pipeline": "image-to-image", "model_id": model, "warm": warm,
           "price_per_unit": price_per_unit, "pixels_per_unit": 1, "currency": currency,
           "url": runner})
}

/// An orchestrator serving `models` (a JSON model list), taking registrations with
/// [`SECRET`].
pub async fn orchestrator(models: Value, config: OrchestratorConfig) -> String {
    let models = parse_models(&models.to_string()).unwrap();
    let config = OrchestratorConfig {
        secret: Some(SECRET.into()),
        ..config
    };
    let orchestrator = Orchestrator::start(models, config).unwrap();
    listen(|l| tessera_orchestrator::serve_on(l, orchestrator)).await
}

/// An orchestrator with one externally served model.
pub async fn orchestrator_for(runner: &FakeRunner, warm: bool, price: f64) -> String {
    orchestrator(
        json!([external("org/model", warm, price, "USD", &runner.url)]),
        OrchestratorConfig::default(),
    )
    .await
}

/// The URL of the runner serving `model_id` in `orchestrator`'s discovery (what a gateway
/// calls: `<orchestrator>/apps/<runner_id>/app`).
pub async fn runner_url(orchestrator: &str, model_id: &str) -> String {
    let runner = discovered(orchestrator, model_id).await;
    runner["url"].as_str().unwrap().to_owned()
}

/// The discovery entry of the runner serving `model_id`; panics when none is listed.
pub async fn discovered(orchestrator: &str, model_id: &str) -> Value {
    let (status, body) = get_json(&format!("{orchestrator}/discovery"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let app = tessera_api::live::app_for_model(model_id);
    body[0]["runners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["app"] == app.as_str())
        .unwrap_or_else(|| panic!("no runner for {model_id} in {body}"))
        .clone()
}

/// A gateway config over `orchestrators`, storing under `dir`.
pub fn gateway_config(dir: &Path, orchestrators: &[&str]) -> GatewayConfig {
    GatewayConfig {
        orchestrators: orchestrators.iter().map(|s| s.to_string()).collect(),
        default_model: "org/model".into(),
        storage: tessera_gateway::StorageConfig::Local {
            path: dir.join("results"),
        },
        ledger: dir.join("ledger.sqlite"),
        attempt_timeout_secs: 2.0,
        ..GatewayConfig::default()
    }
}

pub async fn gateway(config: GatewayConfig) -> String {
    let gateway = Gateway::start(config).await.unwrap();
    listen(|l| tessera_gateway::serve_on(l, gateway)).await
}

/// A `width`x`height` PNG input.
/// A job form with `image` and extra text fields.
pub fn form(image: Vec<u8>, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new().text("prompt", "make it blue").part(
        "image",
        Part::bytes(image)
            .file_name("in.png")
            .mime_str("image/png")
            .unwrap(),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

/// Posts a job; returns status, request id and JSON body.
pub async fn post_job(base: &str, form: Form, key: Option<&str>) -> (StatusCode, String, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/image-to-image"))
        .timeout(Duration::from_secs(120))
        .multipart(form);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let id = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.json().await.unwrap();
    (status, id, body)
}
