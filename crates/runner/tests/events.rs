//! `POST /image-to-image` with `Accept: text/event-stream`, with fake models that report
//! their steps: the events and their order, the answer at the end, output formats, errors,
//! and a client that leaves stopping the work.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use tessera_engine::image_io::RgbImage;
use tessera_runner::{Generated, ModelStep, Runner, RunnerConfig};

/// A server whose model makes each image in `steps` steps, each with a 4x4 grey preview,
/// and gives the input back.
async fn stepping_server(steps: usize) -> String {
    let model = SteppingModel(
        move |image: &RgbImage,
              request: &tessera_runner::ImageRequest,
              _: &dyn Fn() -> bool,
              on_step: OnStep| {
            if request.params.prompt == "fail" {
                return Err(tessera_engine::Error::Model("a weight is missing".into()));
            }
            let preview = || {
                Some(RgbImage {
                    width: 4,
                    height: 4,
                    data: vec![99; 48],
                })
            };
            for step in 1..=steps {
                on_step(ModelStep {
                    step,
                    steps,
                    preview: &preview,
                });
            }
            Ok(Generated {
                image: image.clone(),
                nsfw: false,
            })
        },
    );
    let base = spawn(Runner::start_with(&config("m", None), move || Ok(model))).await;
    assert_eq!(settled_health(&base).await, "OK");
    base
}

/// Posts `form` asking for events; returns the status, content type and the events (name,
/// data) of the whole stream.
async fn post_events(
    base: &str,
    form: reqwest::multipart::Form,
) -> (StatusCode, String, Vec<(String, Value)>) {
    let res = reqwest::Client::new()
        .post(format!("{base}/image-to-image"))
        .header("accept", "text/event-stream")
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let text = res.text().await.unwrap();
    (status, content_type, parse_events(&text))
}

/// The events of a whole Server-Sent Events body.
fn parse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                    name = Some(n.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data.push_str(d);
                }
            }
            Some((name?, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_has_every_step_image_and_the_answer_last() {
    let base = stepping_server(3).await;
    let form = valid_form(&[
        ("seed", "5"),
        ("previews", "true"),
        ("output_format", "jpeg"),
    ]);
    let (status, content_type, events) = post_events(&base, form).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    // 3 steps: a preview after each but the last, of each of the 2 images.
    assert_eq!(
        names,
        [
            "progress", "preview", "progress", "preview", "progress", "image", "progress",
            "preview", "progress", "preview", "progress", "image", "done"
        ]
    );
    let (_, first) = &events[0];
    assert_eq!(
        (
            &first["step"],
            &first["steps"],
            &first["image"],
            &first["images"]
        ),
        (
            &Value::from(1),
            &Value::from(3),
            &Value::from(0),
            &Value::from(2)
        )
    );
    let (_, preview) = &events[1];
    let url = preview["url"].as_str().unwrap();
    assert!(url.starts_with("data:image/jpeg;base64,"), "{url}");
    use base64::Engine as _;
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(url.strip_prefix("data:image/jpeg;base64,").unwrap())
        .unwrap();
    assert_eq!(image::load_from_memory(&jpeg).unwrap().width(), 4);
    let (_, done) = events.last().unwrap();
    let images = done["images"].as_array().unwrap();
    let announced: Vec<(Value, Value)> = events
        .iter()
        .filter(|(n, _)| n == "image")
        .map(|(_, i)| (i["index"].clone(), i["url"].clone()))
        .collect();
    assert_eq!(
        announced,
        [
            (Value::from(0), images[0]["url"].clone()),
            (Value::from(1), images[1]["url"].clone())
        ]
    );
    assert!(images[0]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/jpeg;base64,"));

    // The plain request gets the same answer, without events.
    let form = valid_form(&[("seed", "5"), ("output_format", "jpeg")]);
    let plain = post(&base, "/image-to-image", form, None).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(&plain.body["images"], &done["images"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_come_before_the_stream_and_failures_as_its_last_event() {
    let base = stepping_server(2).await;
    let (status, content_type, _) =
        post_events(&base, valid_form(&[("output_format", "bmp")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let a = post(
        &base,
        "/image-to-image",
        valid_form(&[("output_quality", "101")]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        msg(&a.body),
        "output_quality must be between 1 and 100, got 101."
    );

    let (status, _, events) = post_events(&base, valid_form(&[("prompt", "fail")])).await;
    assert_eq!(status, StatusCode::OK);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["status"], 500);
    assert_eq!(data["msg"], "Image-to-image pipeline error.");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_stops_the_model_within_a_step() {
    let stopped = Arc::new(AtomicUsize::new(0));
    let steps_done = Arc::new(AtomicUsize::new(0));
    let (seen_stop, seen_steps) = (stopped.clone(), steps_done.clone());
    let model = SteppingModel(
        move |image: &RgbImage,
              _: &tessera_runner::ImageRequest,
              keep_going: &dyn Fn() -> bool,
              on_step: OnStep| {
            for step in 1..=100 {
                on_step(ModelStep {
                    step,
                    steps: 100,
                    preview: &|| None,
                });
                seen_steps.fetch_add(1, Ordering::SeqCst);
                // Step 2 never ends while the client is there.
                while step == 2 && keep_going() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                if !keep_going() {
                    seen_stop.fetch_add(1, Ordering::SeqCst);
                    return Err(tessera_engine::Error::Cancelled);
                }
            }
            Ok(Generated {
                image: image.clone(),
                nsfw: false,
            })
        },
    );
    let base = spawn(Runner::start_with(
        &RunnerConfig {
            queue_depth: 1,
            ..config("m", None)
        },
        move || Ok(model),
    ))
    .await;
    assert_eq!(settled_health(&base).await, "OK");

    let mut res = reqwest::Client::new()
        .post(format!("{base}/image-to-image"))
        .header("accept", "text/event-stream")
        .multipart(valid_form(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Read until the second step is announced, then leave.
    let mut seen = String::new();
    while !seen.contains("\"step\":2") {
        let chunk = res.chunk().await.unwrap().expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);
    wait_for(|| async { (stopped.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    assert_eq!(steps_done.load(Ordering::SeqCst), 2);
    let page = get_text(&base, "/metrics").await;
    assert_eq!(
        metric(&page, "tessera_runner_clients_gone_total"),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_new_fields_and_the_event_stream() {
    let base = stepping_server(1).await;
    let doc = get_json(&base, "/openapi.json").await;
    let body = &doc["components"]["schemas"]["Body_genImageToImage"]["properties"];
    assert_eq!(
        body["output_format"]["enum"],
        serde_json::json!(["png", "jpeg", "webp"])
    );
    assert_eq!(body["output_quality"]["maximum"], 100);
    assert_eq!(body["previews"]["type"], "boolean");
    let required = doc["components"]["schemas"]["Body_genImageToImage"]["required"]
        .as_array()
        .unwrap();
    assert!(!required
        .iter()
        .any(|f| f == "output_format" || f == "previews"));
    let ok = &doc["paths"]["/image-to-image"]["post"]["responses"]["200"]["content"];
    assert!(ok["text/event-stream"]["schema"]["description"]
        .as_str()
        .unwrap()
        .contains("progress"));
    for schema in ["Progress", "Preview", "FinishedImage", "JobError"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}
