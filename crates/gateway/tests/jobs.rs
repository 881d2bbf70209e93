//! Jobs people can watch, end to end on loopback: gateway → orchestrator (its HTTP proxy)
//! → a tessera runner serving the tiny instruct-pix2pix fixture with the real engine. The
//! runner's model is the engine's `Editor` behind a gate the test controls (hold before an
//! image, hold after a given step), so that what is asserted follows from the order of
//! events, never from timing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use tessera_engine::editor::{Editor, EditorConfig};
use tessera_engine::hub::ModelStore;
use tessera_engine::image_io::RgbImage;
use tessera_engine::safety::SharedSafetyChecker;
use tessera_gateway::GatewayConfig;
use tessera_orchestrator::OrchestratorConfig;
use tessera_runner::{Generated, ImageRequest, Model, ModelStep, Runner, RunnerConfig};

const MODEL: &str = "tessera/tiny";

/// What the test controls of the runner's model and what it sees of it.
#[derive(Clone, Default)]
struct Gate {
    /// Images start only once this is set.
    open: Arc<AtomicBool>,
    /// After this step of the image with this seed, the model waits for its client to
    /// leave (the only way on).
    hold_after: Option<(u64, usize)>,
    /// (seed, step) of every step the engine finished.
    steps: Arc<Mutex<Vec<(u64, usize)>>>,
    /// Images the model stopped making because nobody waited for them any more.
    stopped: Arc<AtomicUsize>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn steps(&self) -> Vec<(u64, usize)> {
        self.steps.lock().unwrap().clone()
    }
}

/// Waits on the worker thread until `done` says so; false when the client left first.
fn wait(keep_going: &dyn Fn() -> bool, done: impl Fn() -> bool) -> bool {
    while !done() {
        if !keep_going() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

struct GatedEditor {
    editor: Editor,
    gate: Gate,
}

impl Model for GatedEditor {
    fn generate(
        &mut self,
        image: &RgbImage,
        request: &ImageRequest,
        keep_going: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(ModelStep<'_>),
    ) -> tessera_engine::Result<Generated> {
        let gate = self.gate.clone();
        if !wait(keep_going, || gate.open.load(Ordering::SeqCst)) {
            return Err(tessera_engine::Error::Cancelled);
        }
        let result = self
            .editor
            .generate(image, request, keep_going, &mut |step| {
                gate.steps.lock().unwrap().push((request.seed, step.step));
                let held = gate.hold_after == Some((request.seed, step.step));
                on_step(step);
                if held {
                    wait(keep_going, || false);
                }
            });
        if matches!(result, Err(tessera_engine::Error::Cancelled)) {
            gate.stopped.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

fn fixture_folder() -> std::path::PathBuf {
    tessera_testkit::parity_dir().join("models/tiny-instruct-pix2pix")
}

fn square_png() -> Vec<u8> {
    std::fs::read(tessera_testkit::parity_dir().join("inputs/square.png")).unwrap()
}

/// A runner serving the fixture behind `gate`, on a loopback port.
async fn gated_runner(gate: Gate) -> String {
    let config = RunnerConfig {
        model_id: MODEL.into(),
        ..RunnerConfig::default()
    };
    let models = std::env::temp_dir();
    let runner = Runner::start_with(&config, move || {
        let device = tessera_engine::device::parse("cpu")?;
        let editor = Editor::load(&EditorConfig {
            model_id: fixture_folder().to_string_lossy().into_owned(),
            store: ModelStore::new(&models),
            dtype: tessera_engine::device::parse_dtype("f32", &device)?,
            safety: Arc::new(SharedSafetyChecker::new(
                ModelStore::new(&models),
                "unused/checker",
                device.clone(),
            )),
            device,
        })?;
        Ok(GatedEditor { editor, gate })
    });
    let url = listen(|l| tessera_runner::serve_on(l, runner)).await;
    wait_until(|| async {
        let (status, body) = get_json(&format!("{url}/health"), None).await;
        (status == StatusCode::OK && body["status"] == "OK").then_some(())
    })
    .await;
    url
}

/// Gateway → orchestrator (proxying to the runner) → the gated runner. Returns the gateway's
/// and the orchestrator's URLs, and the gateway's data folder.
async fn network(
    gate: Gate,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (String, String, tempfile::TempDir) {
    let runner = gated_runner(gate).await;
    let o = orchestrator(
        json!([external(MODEL, true, 2.0, "USD", &runner)]),
        OrchestratorConfig::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.default_model = MODEL.into();
    config.attempt_timeout_secs = 300.0;
    tweak(&mut config);
    (gateway(config).await, o, dir)
}

/// Polls `probe` until it gives a value (at most 2 minutes: a hung job fails the test).
async fn wait_until<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FIELDS: [(&str, &str); 4] = [
    ("num_inference_steps", "3"),
    ("num_images_per_prompt", "2"),
    ("safety_check", "false"),
    ("seed", "7"),
];

/// Posts an async job; returns the 202's Location and body.
async fn submit(gw: &str, fields: &[(&str, &str)]) -> (String, Value) {
    let res = reqwest::Client::new()
        .post(format!("{gw}/image-to-image"))
        .header("prefer", "respond-async")
        .multipart(form(square_png(), fields))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (location, body)
}

/// A job's event stream, read as it comes.
type Events = std::pin::Pin<Box<dyn futures::Stream<Item = (String, Value)> + Send>>;

async fn subscribe(url: &str) -> Events {
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    Box::pin(res.bytes_stream().eventsource().map(|e| {
        let e = e.unwrap();
        (e.event, serde_json::from_str(&e.data).unwrap())
    }))
}

async fn next(events: &mut Events) -> Option<(String, Value)> {
    tokio::time::timeout(Duration::from_secs(120), events.next())
        .await
        .expect("no event in 2 minutes")
}

async fn rest(events: &mut Events) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(e) = next(events).await {
        out.push(e);
    }
    out
}

async fn bytes(url: &str) -> (String, Vec<u8>) {
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, res.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn async_events_arrive_in_order_and_end_with_the_synchronous_answer() {
    let gate = Gate::default();
    let (gw, _, _dir) = network(gate.clone(), |_| {}).await;
    let mut fields = FIELDS.to_vec();
    fields.push(("previews", "true"));
    let (location, accepted) = submit(&gw, &fields).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/jobs/{id}"));
    assert_eq!(accepted["status"], "queued");
    assert_eq!(
        accepted["urls"],
        json!({"get": location, "events": format!("{location}/events"),
               "cancel": format!("{location}/cancel")})
    );

    // Subscribed while the model waits at its gate: every event is seen live.
    let mut events = subscribe(&format!("{gw}/jobs/{id}/events")).await;
    gate.open();
    let all = rest(&mut events).await;
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let without_previews: Vec<&str> = names.iter().copied().filter(|n| *n != "preview").collect();
    assert_eq!(
        without_previews,
        [
            "progress", "progress", "progress", "image", "progress", "progress", "progress",
            "image", "done"
        ],
        "{names:?}"
    );
    let progress: Vec<(u64, u64, u64, u64)> = all
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, p)| {
            assert!(p["elapsed_secs"].as_f64().unwrap() >= 0.0);
            let field = |k: &str| p[k].as_u64().unwrap();
            (
                field("step"),
                field("steps"),
                field("image"),
                field("images"),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [
            (1, 3, 0, 2),
            (2, 3, 0, 2),
            (3, 3, 0, 2),
            (1, 3, 1, 2),
            (2, 3, 1, 2),
            (3, 3, 1, 2)
        ]
    );
    // Previews: small JPEGs of the latents, before each image's last step.
    let previews: Vec<&Value> = all
        .iter()
        .filter(|(n, _)| n == "preview")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(previews.len(), 4, "{names:?}");
    let url = previews[0]["url"].as_str().unwrap();
    let jpeg = base64_decode(url.strip_prefix("data:image/jpeg;base64,").unwrap());
    assert_eq!(
        image::guess_format(&jpeg).unwrap(),
        image::ImageFormat::Jpeg
    );
    let preview = image::load_from_memory(&jpeg).unwrap();
    let input = image::load_from_memory(&square_png()).unwrap();
    assert_eq!(preview.width(), input.width() / 8);

    let (_, done) = all.last().unwrap();
    let images = done["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);

    // The synchronous answer for the same seed has the same bytes.
    let (status, _, sync) = post_job(&gw, form(square_png(), &FIELDS), None).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    for (a, s) in images.iter().zip(sync["images"].as_array().unwrap()) {
        assert_eq!(a["seed"], s["seed"]);
        let (ct, async_png) = bytes(&format!("{gw}{}", a["url"].as_str().unwrap())).await;
        let (_, sync_png) = bytes(&format!("{gw}{}", s["url"].as_str().unwrap())).await;
        assert_eq!(ct, "image/png");
        assert_eq!(async_png, sync_png);
    }
    // Each image event named the stored image the answer lists.
    let announced: Vec<&Value> = all
        .iter()
        .filter(|(n, _)| n == "image")
        .map(|(_, i)| &i["url"])
        .collect();
    assert_eq!(announced, [&images[0]["url"], &images[1]["url"]]);

    // GET /jobs/<id> says the same, with the ledger's fields.
    let (status, doc) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(&doc["images"], &done["images"]);
    assert_eq!(doc["progress"]["step"], 3);
    assert_eq!(doc["progress"]["image"], 1);
    assert_eq!(doc["model_id"], MODEL);
    assert_eq!(doc["attempts"], 1);
    assert!(doc["orchestrator"].as_str().unwrap().starts_with("http://"));
    let pixels = doc["input_pixels"].as_f64().unwrap();
    assert_eq!(doc["fee"].as_f64().unwrap(), 2.0 * pixels);
    // A late subscriber gets the final event at once, and the stream ends.
    let late = rest(&mut subscribe(&format!("{gw}/jobs/{id}/events")).await).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].0, "done");
    assert_eq!(&late[0].1, done);
    // Cancelling it now is a conflict that names its status.
    let res = reqwest::Client::new()
        .post(format!("{gw}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert!(msg(&body).contains("already succeeded"), "{body}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_stops_the_engine_within_a_step_and_charges_the_finished_images() {
    // Image 1 (seed 8) holds after its first step until its client has gone.
    let gate = Gate {
        hold_after: Some((8, 1)),
        ..Gate::default()
    };
    gate.open();
    let (gw, o, dir) = network(gate.clone(), |_| {}).await;
    let (_, accepted) = submit(&gw, &FIELDS).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    let mut events = subscribe(&format!("{gw}/jobs/{id}/events")).await;
    // Up to the first step of the second image (a late subscriber may get image 0 first
    // as the current state).
    loop {
        let (name, data) = next(&mut events).await.expect("the stream ended early");
        if name == "progress" && data["image"] == 1 {
            assert_eq!(data["step"], 1);
            break;
        }
    }
    let res = reqwest::Client::new()
        .delete(format!("{gw}/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["status"], "cancelled");
    assert_eq!(doc["images"].as_array().unwrap().len(), 1);
    // The stream ends with `cancelled` and no further step.
    let tail = rest(&mut events).await;
    let names: Vec<&str> = tail.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cancelled"], "{names:?}");
    assert_eq!(tail[0].1["images"], doc["images"]);

    // The runner noticed its client leave while it held after step 1 of image 1 and stopped
    // there: the engine never finished step 2 of that image.
    wait_until(|| async { (gate.stopped.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    assert_eq!(
        gate.steps(),
        [(7, 1), (7, 2), (7, 3), (8, 1)],
        "the steps the engine finished"
    );
    // Its slot at the orchestrator is free again.
    wait_until(|| async { (discovered(&o, MODEL).await["capacity_used"] == 0).then_some(()) })
        .await;

    // The finished image stays available; it alone is charged.
    let url = doc["images"][0]["url"].as_str().unwrap();
    let (ct, png) = bytes(&format!("{gw}{url}")).await;
    assert_eq!(ct, "image/png");
    assert!(image::load_from_memory(&png).is_ok());
    let (_, stored) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(stored["status"], "cancelled");
    let pixels = stored["input_pixels"].as_f64().unwrap();
    assert_eq!(stored["fee"].as_f64().unwrap(), 2.0 * pixels / 2.0);
    let ledger = tessera_gateway::Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
    let row = ledger.get(&id).unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.outputs), ("cancelled", 1));
    assert_eq!(row.fee, stored["fee"].as_f64());
    // Cancelling again is a conflict naming the status.
    let res = reqwest::Client::new()
        .post(format!("{gw}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert!(msg(&body).contains("already cancelled"), "{body}");
}

/// A webhook receiver on loopback: what it was sent, and the status it answers with.
async fn receiver(
    answers: Vec<StatusCode>,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, Vec<u8>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let tx = tx.clone();
            let answers = answers.clone();
            async move {
                tx.send((headers, body.to_vec())).unwrap();
                answers.lock().unwrap().next().unwrap_or(StatusCode::OK)
            }
        }),
    );
    let url = listen(|l| async move { Ok(axum::serve(l, app).await?) }).await;
    (format!("{url}/hook"), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_get_the_signed_document_and_private_ones_need_the_flag() {
    let gate = Gate::default();
    gate.open();
    let (gw, o, dir) = network(gate, |c| {
        c.webhook_secret = Some("webhook-secret".into());
        c.webhook_allow_private = true;
    })
    .await;
    // The receiver fails the first delivery: the gateway tries again.
    let (hook, mut received) = receiver(vec![StatusCode::INTERNAL_SERVER_ERROR]).await;
    let mut fields = FIELDS.to_vec();
    fields.push(("webhook_url", &hook));
    let (_, accepted) = submit(&gw, &fields).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["webhook"]["status"], "pending");
    let mut last = None;
    for _ in 0..2 {
        last = Some(
            tokio::time::timeout(Duration::from_secs(120), received.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let (headers, body) = last.unwrap();
    let signature = headers["x-tessera-signature"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"webhook-secret").unwrap();
    mac.update(&body);
    let hex = signature.strip_prefix("sha256=").unwrap();
    let expected: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    mac.verify_slice(&expected).expect("the signature verifies");
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["id"], id.as_str());
    assert_eq!(sent["status"], "succeeded");
    let (_, doc) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(sent["images"], doc["images"]);
    // The document records the delivery once it is over.
    let doc = wait_until(|| async {
        let (_, doc) = get_json(&format!("{gw}/jobs/{id}"), None).await;
        (doc["webhook"]["status"] == "delivered").then_some(doc)
    })
    .await;
    assert_eq!(doc["webhook"]["attempts"], 2);

    // A synchronous request cannot have a webhook.
    let (status, _, body) = post_job(&gw, form(square_png(), &fields), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg(&body).contains("Prefer: respond-async"), "{body}");

    // Without the flag, loopback, private and metadata addresses are refused up front.
    let strict = gateway(another_gateway(dir.path(), &o, |c| {
        c.webhook_secret = Some("s".into());
    }))
    .await;
    for url in [
        hook.as_str(),
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
    ] {
        let res = reqwest::Client::new()
            .post(format!("{strict}/image-to-image"))
            .header("prefer", "respond-async")
            .multipart(form(
                square_png(),
                &[("webhook_url", url), ("safety_check", "false")],
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{url}");
        let body: Value = res.json().await.unwrap();
        assert!(
            msg(&body).contains("this gateway refuses those"),
            "{url}: {body}"
        );
    }
    // A gateway without a secret sends no webhooks.
    let unsigned = gateway(another_gateway(dir.path(), &o, |_| {})).await;
    let res = reqwest::Client::new()
        .post(format!("{unsigned}/image-to-image"))
        .header("prefer", "respond-async")
        .multipart(form(
            square_png(),
            &[("webhook_url", "https://example.com/hook")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert!(msg(&body).contains("no webhook secret"), "{body}");
}

/// The config of one more gateway in front of orchestrator `o`, with its own data under
/// `dir`.
fn another_gateway(
    dir: &std::path::Path,
    o: &str,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> GatewayConfig {
    static N: AtomicUsize = AtomicUsize::new(0);
    let sub = dir.join(format!("gw-{}", N.fetch_add(1, Ordering::SeqCst)));
    let mut config = gateway_config(&sub, &[o]);
    config.default_model = MODEL.into();
    tweak(&mut config);
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn jpeg_and_webp_results_are_stored_and_served_as_what_they_are() {
    let gate = Gate::default();
    gate.open();
    let (gw, _, _dir) = network(gate, |_| {}).await;
    for (format, ext, mime, kind) in [
        ("jpeg", "jpg", "image/jpeg", image::ImageFormat::Jpeg),
        ("webp", "webp", "image/webp", image::ImageFormat::WebP),
    ] {
        let fields = [
            ("num_inference_steps", "2"),
            ("safety_check", "false"),
            ("seed", "3"),
            ("output_format", format),
            ("output_quality", "80"),
        ];
        // Synchronously, and as an async job.
        let (status, _, sync) = post_job(&gw, form(square_png(), &fields), None).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let (_, accepted) = submit(&gw, &fields).await;
        let id = accepted["id"].as_str().unwrap();
        let events = rest(&mut subscribe(&format!("{gw}/jobs/{id}/events")).await).await;
        let (name, done) = events.last().unwrap();
        assert_eq!(name, "done", "{events:?}");
        for answer in [&sync, done] {
            let url = answer["images"][0]["url"].as_str().unwrap();
            assert!(url.ends_with(&format!("/0.{ext}")), "{url}");
            let (ct, data) = bytes(&format!("{gw}{url}")).await;
            assert_eq!(ct, mime);
            assert_eq!(image::guess_format(&data).unwrap(), kind);
            let decoded = image::load_from_memory(&data).unwrap();
            let input = image::load_from_memory(&square_png()).unwrap();
            assert_eq!(decoded.width(), input.width() / 8 * 8);
        }
    }
    // An unknown format is refused, naming the allowed ones, before any runner is asked.
    for prefer in [None, Some("respond-async")] {
        let mut req = reqwest::Client::new()
            .post(format!("{gw}/image-to-image"))
            .multipart(form(square_png(), &[("output_format", "gif")]));
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            msg(&body),
            "output_format must be one of png, jpeg, webp, got 'gif'."
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_gateway_keeps_finished_jobs_and_fails_the_running_ones() {
    // The gate stays shut: the second job never gets past the runner's gate.
    let gate = Gate::default();
    let webhooks = |c: &mut GatewayConfig| {
        c.webhook_secret = Some("webhook-secret".into());
        c.webhook_allow_private = true;
    };
    let (gw, o, dir) = network(gate.clone(), webhooks).await;
    gate.open();
    let (_, done) = submit(&gw, &FIELDS).await;
    let done_id = done["id"].as_str().unwrap().to_owned();
    let finished = rest(&mut subscribe(&format!("{gw}/jobs/{done_id}/events")).await).await;
    assert_eq!(finished.last().unwrap().0, "done");
    gate.open.store(false, Ordering::SeqCst);
    let (hook, mut received) = receiver(Vec::new()).await;
    let mut fields = FIELDS.to_vec();
    fields.push(("webhook_url", &hook));
    let (_, running) = submit(&gw, &fields).await;
    let running_id = running["id"].as_str().unwrap().to_owned();

    // A second gateway on the same data is what a restart finds.
    let mut config = gateway_config(dir.path(), &[&o]);
    config.default_model = MODEL.into();
    webhooks(&mut config);
    let restarted = gateway(config).await;
    let (status, doc) = get_json(&format!("{restarted}/jobs/{done_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["status"], "succeeded");
    for image in doc["images"].as_array().unwrap() {
        let (ct, png) = bytes(&format!("{restarted}{}", image["url"].as_str().unwrap())).await;
        assert_eq!(ct, "image/png");
        assert!(image::load_from_memory(&png).is_ok());
    }
    let replay = rest(&mut subscribe(&format!("{restarted}/jobs/{done_id}/events")).await).await;
    assert_eq!(replay, finished[finished.len() - 1..]);

    let (_, lost) = get_json(&format!("{restarted}/jobs/{running_id}"), None).await;
    assert_eq!(lost["status"], "failed");
    assert!(
        lost["error"]["msg"].as_str().unwrap().contains("restarted"),
        "{lost}"
    );
    let ledger = tessera_gateway::Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
    assert_eq!(ledger.get(&running_id).unwrap().unwrap().status, "failed");
    // Its webhook hears of it from the restarted gateway.
    let (_, body) = tokio::time::timeout(Duration::from_secs(120), received.recv())
        .await
        .unwrap()
        .unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (&sent["id"], &sent["status"]),
        (&lost["id"], &lost["status"])
    );
    // An unknown job is a 404 on every route.
    let missing = "0123456789abcdef0123456789abcdef";
    for (method, path) in [
        ("GET", format!("/jobs/{missing}")),
        ("GET", format!("/jobs/{missing}/events")),
        ("POST", format!("/jobs/{missing}/cancel")),
    ] {
        let res = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{restarted}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
}
