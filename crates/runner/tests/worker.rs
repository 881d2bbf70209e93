//! The worker behind the HTTP API, with fake models: the bounded queue and its 503, clients
//! that go away, and models that fail or panic.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use reqwest::StatusCode;
use tessera_engine::Error;
use tessera_runner::{Generated, RunnerConfig};

#[tokio::test(flavor = "multi_thread")]
async fn model_errors_become_ai_runners_answers() {
    // The prompt picks the failure.
    let base = fake_server(config("m", None), |image, request, _| {
        match request.params.prompt.as_str() {
            "oom" => Err(Error::Model(
                "CUDA_ERROR_OUT_OF_MEMORY: out of memory".into(),
            )),
            "bad" => Err(Error::InvalidInput(
                "LoRa repository 'x/y' not found".into(),
            )),
            "broken" => Err(Error::Model("a weight is missing".into())),
            "panic" => panic!("the model fell over"),
            _ => echo(image, request, &|| true),
        }
    })
    .await;
    let cases = [
        (
            "oom",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Out of memory error. Try reducing input image resolution.",
        ),
        (
            "bad",
            StatusCode::BAD_REQUEST,
            "LoRa repository 'x/y' not found",
        ),
        (
            "broken",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Image-to-image pipeline error.",
        ),
        (
            "panic",
            StatusCode::INTERNAL_SERVER_ERROR,
            "Image-to-image pipeline error.",
        ),
    ];
    for (prompt, status, expected) in cases {
        let a = post(
            &base,
            "/image-to-image",
            valid_form(&[("prompt", prompt)]),
            None,
        )
        .await;
        assert_eq!(a.status, status, "{prompt}: {}", a.body);
        assert_eq!(msg(&a.body), expected, "{prompt}");
    }
    // The worker survives a panic and serves the next request; nsfw is per image.
    let form = valid_form(&[("seed", "7"), ("safety_check", "true")]);
    let a = post(&base, "/image-to-image", form, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let flags: Vec<(u64, bool)> = a.body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seed"].as_u64().unwrap(), m["nsfw"].as_bool().unwrap()))
        .collect();
    assert_eq!(flags, [(7, true), (8, false)]);
}

/// A model that reports each image it starts, then waits for the test's go-ahead (or for its
/// client to leave, when the prompt says so).
struct Gate {
    started: tokio::sync::mpsc::UnboundedReceiver<u64>,
    go: mpsc::Sender<()>,
    seeds: Arc<Mutex<Vec<u64>>>,
}

async fn gated_server(queue_depth: usize) -> (String, Gate) {
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let seeds = Arc::new(Mutex::new(Vec::new()));
    let seen = seeds.clone();
    let config = RunnerConfig {
        queue_depth,
        ..config("m", None)
    };
    let base = fake_server(config, move |image, request, keep_going| {
        seen.lock().unwrap().push(request.seed);
        started_tx.send(request.seed).unwrap();
        if request.params.prompt == "wait for my client to leave" {
            while keep_going() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        } else {
            go_rx.recv().unwrap();
        }
        Ok(Generated {
            image: image.clone(),
            nsfw: false,
        })
    })
    .await;
    (base, Gate { started, go, seeds })
}

async fn metrics_page(base: &str) -> String {
    get_text(base, "/metrics").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_with_retry_after() {
    let (base, mut gate) = gated_server(1).await;
    let one = |seed: &str| valid_form(&[("seed", seed), ("num_images_per_prompt", "1")]);
    let running = tokio::spawn({
        let (base, form) = (base.clone(), one("1"));
        async move { post(&base, "/image-to-image", form, None).await }
    });
    assert_eq!(gate.started.recv().await, Some(1));
    let queued = tokio::spawn({
        let (base, form) = (base.clone(), one("2"));
        async move { post(&base, "/image-to-image", form, None).await }
    });
    wait_for(|| async {
        (metric(&metrics_page(&base).await, "tessera_runner_queue_depth") == Some(1.0))
            .then_some(())
    })
    .await;

    let a = post(&base, "/image-to-image", one("3"), None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.headers["retry-after"], "5");
    assert!(msg(&a.body).contains("queue is full"), "{}", a.body);

    // Released, both waiting requests finish, one after the other.
    gate.go.send(()).unwrap();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    assert_eq!(gate.started.recv().await, Some(2));
    gate.go.send(()).unwrap();
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
    assert_eq!(*gate.seeds.lock().unwrap(), [1, 2]);
    let page = metrics_page(&base).await;
    assert_eq!(metric(&page, "tessera_runner_queue_depth"), Some(0.0));
    assert_eq!(
        metric(&page, r#"tessera_runner_requests_total{status="503"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_the_work_ahead_at_the_recent_pace() {
    let (base, mut gate) = gated_server(1).await;
    let one = |seed: &str| valid_form(&[("seed", seed), ("num_images_per_prompt", "1")]);
    let send = |seed: &'static str| {
        let (base, form) = (base.clone(), one(seed));
        tokio::spawn(async move { post(&base, "/image-to-image", form, None).await })
    };
    // A first job held for 1.5 s sets the pace.
    let first = send("1");
    assert_eq!(gate.started.recv().await, Some(1));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    gate.go.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    // Then one job runs and one waits: two ahead of the next client.
    let running = send("2");
    assert_eq!(gate.started.recv().await, Some(2));
    let queued = send("3");
    wait_for(|| async {
        (metric(&metrics_page(&base).await, "tessera_runner_queue_depth") == Some(1.0))
            .then_some(())
    })
    .await;
    let a = post(&base, "/image-to-image", one("4"), None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    let retry_after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (3..=60).contains(&retry_after),
        "two jobs ahead at >= 1.5 s each: Retry-After {retry_after}"
    );
    gate.go.send(()).unwrap();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    assert_eq!(gate.started.recv().await, Some(3));
    gate.go.send(()).unwrap();
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_job_whose_client_left_is_dropped() {
    let (base, mut gate) = gated_server(4).await;
    let one = |seed: &str| valid_form(&[("seed", seed), ("num_images_per_prompt", "1")]);
    let running = tokio::spawn({
        let (base, form) = (base.clone(), one("1"));
        async move { post(&base, "/image-to-image", form, None).await }
    });
    assert_eq!(gate.started.recv().await, Some(1));
    let leaving = tokio::spawn({
        let (base, form) = (base.clone(), one("2"));
        async move { post(&base, "/image-to-image", form, None).await }
    });
    wait_for(|| async {
        (metric(&metrics_page(&base).await, "tessera_runner_queue_depth") == Some(1.0))
            .then_some(())
    })
    .await;
    // The client hangs up while its job waits; the server notices.
    leaving.abort();
    wait_for(|| async {
        (metric(
            &metrics_page(&base).await,
            "tessera_runner_clients_gone_total",
        ) == Some(1.0))
        .then_some(())
    })
    .await;
    gate.go.send(()).unwrap();
    assert_eq!(running.await.unwrap().status, StatusCode::OK);

    // The next job runs; the abandoned one never reached the model.
    let next = tokio::spawn({
        let (base, form) = (base.clone(), one("3"));
        async move { post(&base, "/image-to-image", form, None).await }
    });
    assert_eq!(gate.started.recv().await, Some(3));
    gate.go.send(()).unwrap();
    assert_eq!(next.await.unwrap().status, StatusCode::OK);
    assert_eq!(*gate.seeds.lock().unwrap(), [1, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_whose_client_left_stops() {
    let (base, mut gate) = gated_server(4).await;
    let leaving = tokio::spawn({
        let form = valid_form(&[
            ("seed", "10"),
            ("num_images_per_prompt", "3"),
            ("prompt", "wait for my client to leave"),
        ]);
        let base = base.clone();
        async move { post(&base, "/image-to-image", form, None).await }
    });
    assert_eq!(gate.started.recv().await, Some(10));
    // The model sees keep_going turn false and returns; no further image is started.
    leaving.abort();
    let next = tokio::spawn({
        let form = valid_form(&[("seed", "20"), ("num_images_per_prompt", "1")]);
        let base = base.clone();
        async move { post(&base, "/image-to-image", form, None).await }
    });
    assert_eq!(gate.started.recv().await, Some(20));
    gate.go.send(()).unwrap();
    assert_eq!(next.await.unwrap().status, StatusCode::OK);
    assert_eq!(*gate.seeds.lock().unwrap(), [10, 20]);
}
