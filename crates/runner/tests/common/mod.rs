//! What the HTTP tests share: servers on loopback ports, multipart requests, fake models.

#![allow(dead_code, unused_imports)] // Each test file uses its own part of this module.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use tessera_engine::image_io::RgbImage;
use tessera_runner::{serve_on, Generated, ImageRequest, Model, ModelStep, Runner, RunnerConfig};
use tokio::net::TcpListener;

pub use tessera_testkit::{decode_data_url, fixtures_dir as fixtures, msg};

pub fn model_folder() -> String {
    tessera_testkit::parity_dir()
        .join("models/tiny-instruct-pix2pix")
        .to_string_lossy()
        .into_owned()
}

pub fn input_png() -> Vec<u8> {
    std::fs::read(tessera_testkit::parity_dir().join("inputs/square.png")).unwrap()
}

pub fn config(model_id: &str, auth_token: Option<&str>) -> RunnerConfig {
    RunnerConfig {
        model_id: model_id.into(),
        auth_token: auth_token.map(str::to_owned),
        ..RunnerConfig::default()
    }
}

/// Serves `runner` on a free loopback port; the server lives as long as the test's runtime.
pub async fn spawn(runner: Runner) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_on(listener, runner));
    base
}

/// `GET base+path`, which must answer 200, as JSON.
pub async fn get_json(base: &str, path: &str) -> Value {
    let (status, body) = tessera_testkit::get_json(&format!("{base}{path}"), None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}");
    body
}

pub async fn get_text(base: &str, path: &str) -> String {
    get_text_as(base, path, None).await
}

/// `GET path` with `token` as the bearer token, if any; the body of its 200.
pub async fn get_text_as(base: &str, path: &str, token: Option<&str>) -> String {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "GET {path}");
    res.text().await.unwrap()
}

pub async fn health(base: &str) -> String {
    get_json(base, "/health").await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `/health` until it leaves LOADING, and returns what it became.
pub async fn settled_health(base: &str) -> String {
    wait_for(|| async { Some(health(base).await).filter(|s| s != "LOADING") }).await
}

/// Polls `probe` until it gives a value (at most 2 minutes: a hung server fails the test).
pub async fn wait_for<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "still waiting after 2 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled sample (or `name{labels}`) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn image_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes)
        .file_name("in.png")
        .mime_str("image/png")
        .unwrap()
}

/// A request the runner accepts: 2 steps, 2 images, no safety check, then `fields`.
pub fn valid_form(fields: &[(&str, &str)]) -> Form {
    form_with_image(input_png(), fields)
}

pub fn form_with_image(image: Vec<u8>, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .text("prompt", "make it blue")
        .part("image", image_part(image))
        .text("num_inference_steps", "2")
        .text("num_images_per_prompt", "2")
        .text("safety_check", "false");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub async fn post(base: &str, path: &str, form: Form, token: Option<&str>) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    Answer {
        status,
        headers,
        body,
    }
}

/// A model made of a closure, to test the runner without diffusion. It reports no steps.
pub struct FnModel<F>(pub F);

impl<F> Model for FnModel<F>
where
    F: FnMut(&RgbImage, &ImageRequest, &dyn Fn() -> bool) -> tessera_engine::Result<Generated>
        + Send,
{
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        keep_going: &dyn Fn() -> bool,
        _on_step: &mut dyn FnMut(ModelStep<'_>),
    ) -> tessera_engine::Result<Generated> {
        (self.0)(image, request, keep_going)
    }
}

/// A model made of a closure that also reports steps.
pub struct SteppingModel<F>(pub F);

pub type OnStep<'a> = &'a mut dyn FnMut(ModelStep<'_>);

impl<F> Model for SteppingModel<F>
where
    F: FnMut(
            &RgbImage,
            &ImageRequest,
            &dyn Fn() -> bool,
            OnStep,
        ) -> tessera_engine::Result<Generated>
        + Send,
{
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        keep_going: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(ModelStep<'_>),
    ) -> tessera_engine::Result<Generated> {
        (self.0)(image, request, keep_going, on_step)
    }
}

/// A fake-model server that has finished loading.
pub async fn fake_server<F>(config: RunnerConfig, model: F) -> String
where
    F: FnMut(&RgbImage, &ImageRequest, &dyn Fn() -> bool) -> tessera_engine::Result<Generated>
        + Send
        + 'static,
{
    let base = spawn(Runner::start_with(&config, move || Ok(FnModel(model)))).await;
    assert_eq!(settled_health(&base).await, "OK");
    base
}

/// Gives the input image back; when asked for a safety check, odd seeds are flagged.
pub fn echo(
    image: &RgbImage,
    request: &ImageRequest,
    _keep_going: &dyn Fn() -> bool,
) -> tessera_engine::Result<Generated> {
    Ok(Generated {
        image: image.clone(),
        nsfw: request.safety_check && request.seed % 2 == 1,
    })
}
