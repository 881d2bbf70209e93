//! Fuzzing what an orchestrator reads from operators and from runners: `aiModels.json`,
//! the Live Runner config (`runners.json`), and heartbeat bodies as
//! `POST /runners/heartbeat` takes them (parsed, then registered, renewed, listed and
//! unregistered). Each input must end in a value or an error, never a panic; see
//! `tessera_testkit::fuzz`.

use tessera_api::live::HeartbeatRequest;
use tessera_orchestrator::registry::Registry;
use tessera_orchestrator::{parse_models, static_runners};
use tessera_testkit::fuzz::{CountingAlloc, Fuzz};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const JSON_TOKENS: &[&str] = &[
    "\"",
    "\\u0000",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "1e999",
    "0.0",
    "18446744073709551616",
    "\"usd\"",
    "\"wei\"",
    "\"pixel\"",
    "\"hour\"",
];

fn seeds(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn fuzz_ai_models_json() {
    let seeds = seeds(&[
        r#"[{"pipeline": "image-to-image", "model_id": "timbrooks/instruct-pix2pix", "warm": true, "price_per_unit": 4768371, "pixels_per_unit": 1}]"#,
        r#"[{"pipeline": "image-to-image", "model_id": "ByteDance/SDXL-Lightning", "price_per_unit": 0.5, "currency": "USD", "url": "http://127.0.0.1:9000", "token": "secret", "capacity": 2},
            {"pipeline": "image-to-image", "model_id": "stabilityai/sd-turbo", "price_per_unit": "3e-9", "pixels_per_unit": 1000, "optimization_flags": {"SFAST": true}}]"#,
    ]);
    Fuzz::new("ai_models_json", seeds)
        .dictionary(JSON_TOKENS)
        .run(|input| {
            parse_models(&String::from_utf8_lossy(input))
                .is_ok_and(|models| models.iter().all(|m| m.price().is_ok()))
        });
}

#[test]
fn fuzz_runners_json() {
    let seeds = seeds(&[
        r#"{"runners": [{"label": "a", "routing": "", "runner_url": "http://127.0.0.1:8000", "health_url": "http://127.0.0.1:8000/health", "healthy_status_code": 200, "app": "image-to-image/timbrooks/instruct-pix2pix", "version": "1", "metadata": "{}", "mode": "single-shot", "capacity": 1, "price_info": {"price": 1, "currency": "usd", "unit": "pixel"}}]}"#,
        r#"{"runners": []}"#,
    ]);
    Fuzz::new("runners_json", seeds)
        .dictionary(JSON_TOKENS)
        .run(|input| static_runners::parse(&String::from_utf8_lossy(input)).is_ok());
}

/// A registry per input, as a fresh orchestrator has one.
#[test]
fn fuzz_heartbeat() {
    let seeds = seeds(&[
        r#"{"runner_url": "http://127.0.0.1:8001", "app": "image-to-image/timbrooks/instruct-pix2pix", "capacity": 1, "price_info": {"price": 0.000001, "currency": "usd", "unit": "pixel"}, "version": "0.1", "metadata": "{\"warm\": true}", "status": "ready", "gpu": {"id": "0", "name": "H200", "memory_total": 150000000000, "memory_free": 1}}"#,
        r#"{"runner_id": "r-1", "runner_url": "http://[::1]:8001/base", "app": "live-video-to-video/comfy", "capacity": 4, "mode": "single-shot", "gpu": 3, "session_ids": ["a", "b"], "status": "busy"}"#,
    ]);
    Fuzz::new("heartbeat", seeds)
        .dictionary(JSON_TOKENS)
        .run(|input| {
            let Ok(request) = serde_json::from_slice::<HeartbeatRequest>(input) else {
                return false;
            };
            let registry = Registry::new(
                Some("bootstrap".to_owned()),
                "http://127.0.0.1:8935".to_owned(),
            );
            let Ok(first) = registry.heartbeat(request.clone(), "bootstrap") else {
                return false;
            };
            let secret = first.heartbeat_secret.unwrap_or_default();
            let mut again = request;
            again.runner_id = first.runner_id.clone();
            let renewed = registry.heartbeat(again, &secret).is_ok();
            let _ = registry.ready();
            let unregistered = registry.unregister(&first.runner_id, &secret).is_ok();
            let _ = registry.purge_expired();
            renewed && unregistered
        });
}
