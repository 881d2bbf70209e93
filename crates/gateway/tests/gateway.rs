//! Gateway → orchestrator(s) → runner, all real servers on loopback ports. The runners
//! are fakes that answer known PNGs, fail, hang or block, so that pricing, selection,
//! retries, storage, the ledger and client auth can be checked without a model.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera_api::price::UnitPrice;
use tessera_gateway::ledger::Ledger;
use tessera_orchestrator::OrchestratorConfig;

/// A maximum price per pixel in USD.
fn usd(max: f64) -> UnitPrice {
    serde_json::from_value(json!({"price_per_unit": max, "currency": "USD"})).unwrap()
}

async fn ledger_row(gateway: &str, id: &str, key: Option<&str>) -> Value {
    let (status, row) = get_json(&format!("{gateway}/jobs/{id}"), key).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    row
}

#[tokio::test]
async fn the_cheapest_orchestrator_within_the_maximum_gets_the_job_and_the_fee_is_per_input_pixel()
{
    let dear = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let cheap = fake_runner(Behaviour::Answer { tag: 2 }, None).await;
    let wei = fake_runner(Behaviour::Answer { tag: 3 }, None).await;
    let o_dear = orchestrator_for(&dear, true, 2.0).await;
    let o_cheap = orchestrator_for(&cheap, true, 1.0).await;
    let o_wei = orchestrator(
        json!([external("org/model", true, 0.001, "wei", &wei.url)]),
        OrchestratorConfig::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o_dear, &o_cheap, &o_wei]);
    config.max_price.insert("default".into(), usd(1.5));
    let gw = gateway(config).await;

    let (status, id, body) = post_job(
        &gw,
        form(input_png(16, 8), &[("num_images_per_prompt", "3")]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((dear.hits(), cheap.hits(), wei.hits()), (0, 1, 0));
    let row = ledger_row(&gw, &id, None).await;
    assert_eq!(row["orchestrator"], json!(o_cheap));
    assert_eq!(row["model_id"], "org/model");
    assert_eq!(row["input_pixels"], 16 * 8 * 3);
    assert_eq!(row["price_per_pixel"], 1.0);
    assert_eq!(row["currency"], "USD");
    assert_eq!(row["fee"], (16.0 * 8.0 * 3.0) * 1.0);
    assert_eq!(row["outputs"], 3);
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["status"], "ok");
    assert_eq!(row["error"], Value::Null);
}

#[tokio::test]
async fn nothing_within_the_maximum_price_is_a_503_and_nobody_is_paid() {
    let runner = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o = orchestrator_for(&runner, true, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.max_price.insert("default".into(), usd(100.0));
    config.max_price.insert("org/model".into(), usd(0.5));
    let gw = gateway(config).await;
    let (status, id, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg(&body).contains("within the maximum price"), "{body}");
    assert_eq!(runner.hits(), 0);
    let row = ledger_row(&gw, &id, None).await;
    assert_eq!(
        (row["status"].as_str(), row["fee"].clone()),
        (Some("failed"), Value::Null)
    );
}

#[tokio::test]
async fn warm_orchestrators_come_before_cold_ones_then_cheaper_ones() {
    let cold = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let warm_dear = fake_runner(Behaviour::Answer { tag: 2 }, None).await;
    let warm_cheap = fake_runner(Behaviour::Answer { tag: 3 }, None).await;
    let o_cold = orchestrator_for(&cold, false, 0.1).await;
    let o_dear = orchestrator_for(&warm_dear, true, 3.0).await;
    let o_cheap = orchestrator_for(&warm_cheap, true, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o_cold, &o_dear, &o_cheap])).await;
    let (status, _, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (cold.hits(), warm_dear.hits(), warm_cheap.hits()),
        (0, 0, 1)
    );
}

#[tokio::test]
async fn once_measured_the_faster_orchestrator_wins_over_the_cheaper_one() {
    // The slow one takes a second more per job: far beyond the 25% noise step.
    let slow = fake_runner(
        Behaviour::Slow {
            tag: 1,
            millis: 1000,
        },
        None,
    )
    .await;
    let fast = fake_runner(Behaviour::Answer { tag: 2 }, None).await;
    let o_slow = orchestrator_for(&slow, true, 1.0).await;
    let o_fast = orchestrator_for(&fast, true, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o_slow, &o_fast])).await;
    let mut served_by = Vec::new();
    for _ in 0..4 {
        let (status, id, body) = post_job(&gw, form(input_png(8, 8), &[]), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let row = ledger_row(&gw, &id, None).await;
        served_by.push(row["orchestrator"].as_str().unwrap().to_owned());
    }
    // Unmeasured: the cheaper first, then the other to measure it; then the faster.
    assert_eq!(
        served_by,
        [o_slow.clone(), o_fast.clone(), o_fast.clone(), o_fast]
    );
}

#[tokio::test]
async fn failures_and_insufficient_capacity_move_the_job_to_the_next_orchestrator() {
    let failing = fake_runner(Behaviour::Fail, None).await;
    let busy = fake_runner(Behaviour::Block { tag: 1 }, None).await;
    let good = fake_runner(Behaviour::Answer { tag: 2 }, None).await;
    let o_failing = orchestrator_for(&failing, true, 1.0).await;
    let o_busy = orchestrator_for(&busy, true, 2.0).await;
    let o_good = orchestrator_for(&good, true, 3.0).await;

    // Fill the busy orchestrator's one slot with a job sent to its runner directly.
    let busy_url = runner_url(&o_busy, "org/model").await;
    let direct = tokio::spawn({
        async move {
            reqwest::Client::new()
                .post(format!("{busy_url}/image-to-image"))
                .multipart(form(input_png(4, 4), &[("model_id", "org/model")]))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    while busy.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let runner = discovered(&o_busy, "org/model").await;
    assert_eq!(
        (&runner["capacity_used"], &runner["capacity_available"]),
        (&json!(1), &json!(0))
    );

    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o_good, &o_busy, &o_failing])).await;
    let (status, id, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((failing.hits(), busy.hits(), good.hits()), (1, 1, 1));
    let row = ledger_row(&gw, &id, None).await;
    assert_eq!(row["attempts"], 3);
    assert_eq!(row["orchestrator"], json!(o_good));
    assert_eq!(row["price_per_pixel"], 3.0);

    busy.release();
    assert_eq!(direct.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_hanging_orchestrator_times_out_and_the_next_one_answers() {
    let hanging = fake_runner(Behaviour::Hang, None).await;
    let good = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o_hanging = orchestrator_for(&hanging, true, 1.0).await;
    let o_good = orchestrator_for(&good, true, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o_hanging, &o_good]);
    config.attempt_timeout_secs = 0.5;
    let gw = gateway(config).await;
    let (status, id, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((hanging.hits(), good.hits()), (1, 1));
    assert_eq!(ledger_row(&gw, &id, None).await["attempts"], 2);
}

#[tokio::test]
async fn when_every_orchestrator_fails_the_client_gets_a_503_naming_them() {
    let a = fake_runner(Behaviour::Fail, None).await;
    let b = fake_runner(Behaviour::Fail, None).await;
    let o_a = orchestrator_for(&a, true, 1.0).await;
    let o_b = orchestrator_for(&b, true, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o_a, &o_b])).await;
    let (status, id, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = msg(&body);
    assert!(
        text.starts_with("no orchestrator could do the job"),
        "{text}"
    );
    assert!(text.contains(&o_a) && text.contains(&o_b), "{text}");
    let row = ledger_row(&gw, &id, None).await;
    assert_eq!(row["status"], "failed");
    assert_eq!(row["attempts"], 2);
    assert!(row["error"]
        .as_str()
        .unwrap()
        .contains("Image-to-image pipeline error."));
}

/// The gateway's `Retry-After` when every orchestrator failed, if any.
async fn retry_after_of(gw: &str) -> (StatusCode, Option<String>) {
    let res = reqwest::Client::new()
        .post(format!("{gw}/image-to-image"))
        .multipart(form(input_png(4, 4), &[]))
        .send()
        .await
        .unwrap();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status(), retry)
}

#[tokio::test]
async fn when_every_orchestrator_is_busy_the_soonest_retry_after_is_passed_on() {
    let slow = fake_runner(Behaviour::Busy { retry_after: 7 }, None).await;
    let soon = fake_runner(Behaviour::Busy { retry_after: 3 }, None).await;
    let failing = fake_runner(Behaviour::Fail, None).await;
    let o_slow = orchestrator_for(&slow, true, 1.0).await;
    let o_soon = orchestrator_for(&soon, true, 2.0).await;
    let o_failing = orchestrator_for(&failing, true, 3.0).await;
    let dir = tempfile::tempdir().unwrap();
    let busy_only = gateway(gateway_config(dir.path(), &[&o_slow, &o_soon])).await;
    assert_eq!(
        retry_after_of(&busy_only).await,
        (StatusCode::SERVICE_UNAVAILABLE, Some("3".to_owned()))
    );
    // One that failed otherwise may fail again at any time: no promise is made.
    let dir = tempfile::tempdir().unwrap();
    let mixed = gateway(gateway_config(dir.path(), &[&o_slow, &o_failing])).await;
    assert_eq!(
        retry_after_of(&mixed).await,
        (StatusCode::SERVICE_UNAVAILABLE, None)
    );
}

#[tokio::test]
async fn each_key_gets_its_limits_with_429_and_retry_after() {
    let blocked = fake_runner(Behaviour::Block { tag: 1 }, None).await;
    let o = orchestrator_for(&blocked, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.api_keys = vec!["key-a".into(), "key-b".into()];
    config.key_limits = tessera_gateway::quota::KeyLimits {
        max_running_jobs: 1,
        requests_per_minute: 3,
    };
    let gw = gateway(config).await;
    let post = |key: &'static str| {
        let gw = gw.clone();
        async move {
            let res = reqwest::Client::new()
                .post(format!("{gw}/image-to-image"))
                .bearer_auth(key)
                .multipart(form(input_png(4, 4), &[]))
                .send()
                .await
                .unwrap();
            let retry = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = res.status();
            (status, retry, res.json::<Value>().await.unwrap())
        }
    };
    // key-a's first job runs (blocked at the runner); its second is over the running limit.
    let first = tokio::spawn(post("key-a"));
    while blocked.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, retry, body) = post("key-a").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    let fingerprint = tessera_gateway::quota::fingerprint("key-a");
    assert!(msg(&body).contains(&fingerprint), "{body}");
    assert!(!msg(&body).contains("\"key-a\""), "{body}");
    // key-b is not held back by key-a.
    blocked.release();
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(post("key-b").await.0, StatusCode::OK);
    // key-a has 1 admitted request this minute (refusals do not count): 2 more pass, the
    // next is over 3 per minute until the first leaves the minute.
    assert_eq!(post("key-a").await.0, StatusCode::OK);
    assert_eq!(post("key-a").await.0, StatusCode::OK);
    let (status, retry, _) = post("key-a").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = retry.unwrap().parse().unwrap();
    assert!((50..=60).contains(&secs), "Retry-After {secs}");
}

#[tokio::test]
async fn without_orchestrators_jobs_are_refused_with_503_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // One listed orchestrator is not even running.
    let gw = gateway(gateway_config(dir.path(), &["http://127.0.0.1:9"])).await;
    let (status, _, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(msg(&body), "no orchestrator offers model 'org/model'");
    let (status, _, body) = post_job(
        &gw,
        form(input_png(4, 4), &[("model_id", "other/model")]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(msg(&body), "no orchestrator offers model 'other/model'");
}

#[tokio::test]
async fn results_are_stored_one_url_per_image_and_served_as_png() {
    let runner = fake_runner(Behaviour::Answer { tag: 5 }, None).await;
    let o = orchestrator_for(&runner, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o])).await;
    let client = reqwest::Client::new();
    // More jobs and images than go-livepeer's 12-item cache held: all stay served.
    let mut urls = Vec::new();
    for _ in 0..5 {
        let (status, _, body) = post_job(
            &gw,
            form(input_png(4, 4), &[("num_images_per_prompt", "3")]),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let images = body["images"].as_array().unwrap();
        assert_eq!(images.len(), 3);
        for (i, image) in images.iter().enumerate() {
            assert_eq!(image["seed"], 42 + i as u64);
            assert_eq!(image["nsfw"], false);
            urls.push((i as u8, image["url"].as_str().unwrap().to_owned()));
        }
    }
    let mut distinct: Vec<_> = urls.iter().map(|(_, u)| u.clone()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 15, "{urls:?}");
    for (i, url) in &urls {
        assert!(
            url.starts_with("/stream/") && url.ends_with(".png"),
            "{url}"
        );
        let res = client.get(format!("{gw}{url}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "image/png");
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=86400, immutable"
        );
        assert_eq!(res.bytes().await.unwrap(), fake_png(5, *i));
    }
    for bad in [
        "/stream/0123/0.png",
        "/stream/..%2F..%2Fledger/0.png",
        &urls[0].1.replace(".png", ".jpg"),
        &urls[0].1.replace("/0.png", "/7.png"),
    ] {
        let res = client.get(format!("{gw}{bad}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn result_urls_are_absolute_with_a_public_base_url() {
    let runner = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o = orchestrator_for(&runner, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.public_base_url = Some("https://gw.example.com/".into());
    let gw = gateway(config).await;
    let (status, id, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["images"][0]["url"],
        format!("https://gw.example.com/stream/{id}/0.png")
    );
}

#[tokio::test]
async fn api_keys_guard_jobs_and_the_ledger_with_the_runners_401() {
    let runner = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o = orchestrator_for(&runner, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway_config(dir.path(), &[&o]);
    config.api_keys = vec!["key-one".into(), "key-two".into()];
    let gw = gateway(config).await;
    for key in [None, Some("key-on"), Some("key-one-and-more")] {
        let res = reqwest::Client::new()
            .post(format!("{gw}/image-to-image"))
            .multipart(form(input_png(4, 4), &[]));
        let res = match key {
            Some(k) => res.bearer_auth(k),
            None => res,
        };
        let res = res.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, json!({"detail": {"msg": "Invalid bearer token."}}));
    }
    assert_eq!(runner.hits(), 0);
    let (status, id, body) = post_job(&gw, form(input_png(4, 4), &[]), Some("key-two")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = get_json(&format!("{gw}/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(ledger_row(&gw, &id, Some("key-one")).await["status"], "ok");
    // Results stay public: their URLs are unguessable and meant to be shared.
    let url = body["images"][0]["url"].as_str().unwrap();
    let res = reqwest::get(format!("{gw}{url}")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// A BMP header claiming 50000x50000 pixels, with no pixels behind it.
fn huge_bmp_header() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54u32 + 16).to_le_bytes()); // file size
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    b.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    b.extend_from_slice(&50000i32.to_le_bytes());
    b.extend_from_slice(&50000i32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // planes
    b.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
    b.extend_from_slice(&[0; 24]);
    b.extend_from_slice(&[0; 16]);
    b
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason_and_recorded() {
    let runner = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o = orchestrator_for(&runner, true, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o])).await;

    let (status, id, body) = post_job(&gw, form(b"not an image".to_vec(), &[]), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        msg(&body).starts_with("image: not a readable image"),
        "{body}"
    );
    assert_eq!(ledger_row(&gw, &id, None).await["status"], "rejected");

    let (status, _, body) = post_job(&gw, form(huge_bmp_header(), &[]), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg(&body).contains("50000x50000 is not accepted"), "{body}");

    let (status, _, body) = post_job(
        &gw,
        form(input_png(4, 4), &[("num_images_per_prompt", "two")]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(msg(&body), "num_images_per_prompt: 'two' is not an integer");

    let no_image = reqwest::multipart::Form::new().text("prompt", "x");
    let (status, _, body) = post_job(&gw, no_image, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "image"]));

    let res = reqwest::Client::new()
        .post(format!("{gw}/image-to-image"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let oversized = vec![0u8; tessera_api::Limits::default().max_body_bytes() + 1];
    let (status, _, body) = post_job(&gw, form(oversized, &[]), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        msg(&body),
        "The request body is larger than the gateway accepts."
    );
    assert_eq!(runner.hits(), 0);
}

#[tokio::test]
async fn the_orchestrator_lists_its_models_in_discovery_and_proxies_calls_to_them() {
    let runner = fake_runner(Behaviour::Answer { tag: 1 }, Some("runner-token")).await;
    let o = orchestrator(
        json!([{"pipeline": "image-to-image", "model_id": "org/model", "warm": true,
                "price_per_unit": 3, "pixels_per_unit": 4, "currency": "USD", "capacity": 2,
                "url": runner.url, "token": "runner-token"}]),
        OrchestratorConfig::default(),
    )
    .await;
    let (status, listed) = get_json(&format!("{o}/discovery"), None).await;
    assert_eq!(status, StatusCode::OK);
    let url = listed[0]["runners"][0]["url"].as_str().unwrap().to_owned();
    let id = url
        .strip_prefix(&format!("{o}/apps/"))
        .and_then(|rest| rest.strip_suffix("/app"))
        .unwrap_or_else(|| panic!("{url} is not {o}/apps/<id>/app"));
    assert!(id.starts_with("runner_"), "{id}");
    assert_eq!(
        listed,
        json!([{"address": o, "runners": [{
            "url": url, "app": "tessera/image-to-image/org/model",
            "metadata": r#"{"model_id":"org/model","warm":true}"#, "mode": "single-shot",
            "capacity": 2, "capacity_used": 0, "capacity_available": 2,
            "price_info": {"price": 0.75, "currency": "usd", "unit": "pixel"}}]}])
    );
    // A call reaches the runner with the runner's own token.
    let res = reqwest::Client::new()
        .post(format!("{url}/image-to-image"))
        .multipart(form(input_png(4, 4), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    // A runner it does not know is go-livepeer's 404.
    let res = reqwest::Client::new()
        .post(format!("{o}/apps/runner_nobody/app/image-to-image"))
        .multipart(form(input_png(4, 4), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.text().await.unwrap(), "runner not found\n");
    assert_eq!(runner.hits(), 1);
}

/// A runner registering by heartbeat as go-livepeer's Live Runner protocol has it: listed in
/// discovery once it says it is ready, called through the orchestrator with its session
/// headers, gone at once when it unregisters.
#[tokio::test]
async fn live_runners_register_are_discovered_are_called_and_unregister() {
    let runner = fake_runner(Behaviour::Block { tag: 3 }, None).await;
    let o = orchestrator(json!([]), OrchestratorConfig::default()).await;
    let client = reqwest::Client::new();
    let heartbeat = |auth: &str, body: Value| {
        client
            .post(format!("{o}/runners/heartbeat"))
            .header("authorization", auth)
            .json(&body)
            .send()
    };
    let body = json!({"runner_url": runner.url, "app": "tessera/image-to-image/org/model",
                      "mode": "single-shot", "capacity": 1, "status": "ready",
                      "price_info": {"price": "0.25", "currency": "USD", "unit": "fixed"}});
    let res = heartbeat("wrong", body.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.text().await.unwrap(),
        "invalid registration authorization\n"
    );
    let answer: Value = heartbeat(SECRET, body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        answer["runner_id"].as_str().unwrap().to_owned(),
        answer["heartbeat_secret"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        (&answer["heartbeat_interval"], &answer["heartbeat_ttl"]),
        (&json!("5s"), &json!("20s"))
    );
    assert_eq!(answer["session_ids"], json!([]));
    let mut again = body.clone();
    again["runner_id"] = json!(id);
    let res = heartbeat(&secret, again.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let listed = discovered(&o, "org/model").await;
    assert_eq!(listed["url"], json!(format!("{o}/apps/{id}/app")));
    assert_eq!(
        listed["price_info"],
        json!({"price": 0.25, "currency": "usd", "unit": "fixed"})
    );

    // Capacity 1: a second call while the first runs is go-livepeer's 503.
    let url = format!("{o}/apps/{id}/app/image-to-image");
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .multipart(form(input_png(4, 4), &[]))
                .send()
                .await
                .unwrap()
        }
    });
    while runner.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = client
        .post(&url)
        .multipart(form(input_png(4, 4), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        second.text().await.unwrap(),
        "no capacity available for runner\n"
    );
    runner.release();
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(runner.hits(), 1);

    // Through a gateway, priced per job.
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o])).await;
    let (status, id_job, body) = post_job(&gw, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ledger_row(&gw, &id_job, None).await["fee"], 0.25);

    // Unregistered: gone from discovery at once, and the secret is spent.
    let res = client
        .post(format!("{o}/runners/{id}/unregister"))
        .header("authorization", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (_, listed) = get_json(&format!("{o}/discovery"), None).await;
    assert_eq!(listed, json!([{"address": o}]));
    assert_eq!(
        heartbeat(&secret, again).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Runners from a static config (go-livepeer's `-liveRunnerConfig`): listed while their
/// health URL answers, never while it does not.
#[tokio::test]
async fn static_live_runners_are_listed_while_healthy() {
    let runner = fake_runner(Behaviour::Answer { tag: 4 }, None).await;
    let statics = tessera_orchestrator::static_runners::parse(
        &json!({"runners": [
            {"label": "up", "runner_url": runner.url, "health_url": "/health",
             "app": "tessera/image-to-image/org/model", "mode": "single-shot"},
            {"label": "down", "runner_url": "http://127.0.0.1:9", "health_url": "/health",
             "app": "tessera/image-to-image/org/other", "mode": "single-shot"}
        ]})
        .to_string(),
    )
    .unwrap();
    let o = orchestrator(
        json!([]),
        OrchestratorConfig {
            static_runners: statics,
            ..OrchestratorConfig::default()
        },
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (_, body) = get_json(&format!("{o}/discovery"), None).await;
        if let Some(runners) = body[0]["runners"].as_array() {
            break runners.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the healthy static runner was never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["app"], "tessera/image-to-image/org/model");
    let url = listed[0]["url"].as_str().unwrap();
    let (status, _, body) = post_job(url, form(input_png(4, 4), &[]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(runner.hits(), 1);
}

#[tokio::test]
async fn the_ledger_file_totals_jobs_per_orchestrator() {
    let good = fake_runner(Behaviour::Answer { tag: 1 }, None).await;
    let o = orchestrator_for(&good, true, 0.5).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(gateway_config(dir.path(), &[&o])).await;
    for n in ["1", "2"] {
        let (status, _, body) = post_job(
            &gw,
            form(input_png(10, 10), &[("num_images_per_prompt", n)]),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
    let totals = ledger.totals().unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].orchestrator, o);
    assert_eq!((totals[0].jobs, totals[0].succeeded), (2, 2));
    assert_eq!(totals[0].fees, 0.5 * 100.0 * 3.0);
    assert_eq!(ledger.recent(10).unwrap().len(), 2);
}
