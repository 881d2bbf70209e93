//! go-livepeer's Live Runner protocol (v0.9.0+: `ai/runner/live_runner.go`, the routes in
//! `server/ai_http.go`), as tessera's runner, orchestrator and gateway speak it: runners
//! register with an orchestrator by heartbeat, the orchestrator lists them at
//! `GET /discovery` and proxies `ANY /apps/{runner_id}/app/{path}` to them.
//!
//! Field names, defaults and status codes are go-livepeer's. tessera adds one price unit,
//! `pixel` (the price of one input pixel, as the batch image-to-image API priced it), which
//! only tessera gateways understand; a tessera runner registering with go-livepeer uses
//! `fixed`.

use serde::{Deserialize, Serialize};

use crate::defaults;

/// How often go-livepeer wants a heartbeat, and how long it keeps a runner without one.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 5;
pub const HEARTBEAT_TTL_SECS: u64 = 20;

/// The headers an orchestrator sets on each proxied call (go-livepeer writes them
/// `Livepeer-Session-Id` and so on; header names are case-insensitive, and these are
/// lowercase for `HeaderName::from_static`).
pub const RUNNER_ROUTE_HEADER: &str = "livepeer-runner-route";
pub const SESSION_ID_HEADER: &str = "livepeer-session-id";
pub const SESSION_TOKEN_HEADER: &str = "livepeer-session-token";
pub const SESSION_CONTROL_HEADER: &str = "livepeer-session-control";

/// go-livepeer's two runner modes; tessera's runners answer one request per call.
pub const MODE_SINGLE_SHOT: &str = "single-shot";
pub const MODE_PERSISTENT: &str = "persistent";

/// The status that makes a runner discoverable; anything else keeps it registered, hidden.
pub const STATUS_READY: &str = "ready";

/// The app name tessera runners register a model under by default.
pub fn app_for_model(model_id: &str) -> String {
    format!("tessera/{}/{model_id}", defaults::PIPELINE)
}

/// The model a tessera app name serves, if it is one.
pub fn model_of_app(app: &str) -> Option<&str> {
    app.strip_prefix("tessera/")?
        .strip_prefix(defaults::PIPELINE)?
        .strip_prefix('/')
        .filter(|m| !m.is_empty())
}

/// A price as a Live Runner quotes it. go-livepeer takes `usd` per `hour`, `720p` or
/// `fixed` (per request or session); tessera adds `pixel`, per input pixel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceInfo {
    /// A JSON number, or a string holding one (go-livepeer's `json.Number`).
    #[serde(deserialize_with = "crate::price::number_or_string")]
    pub price: f64,
    #[serde(default = "usd")]
    pub currency: String,
    #[serde(default = "hour")]
    pub unit: String,
}

fn usd() -> String {
    "usd".into()
}

fn hour() -> String {
    "hour".into()
}

/// The GPU a runner reports: an object, or (go-livepeer accepts it) a device index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<u64>,
}

/// `POST /runners/heartbeat`'s body (`LiveRunnerHeartbeatRequest`). Unknown fields are
/// ignored, as Go's decoder does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runner_id: String,
    #[serde(default)]
    pub runner_url: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub capacity: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_info: Option<PriceInfo>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "gpu_or_index"
    )]
    pub gpu: Option<Gpu>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_ids: Vec<String>,
}

fn gpu_or_index<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Gpu>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Index(i64),
        Object(Gpu),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::Object(g)) => Some(g),
        Some(Raw::Index(i)) => Some(Gpu {
            id: Some(i.to_string()),
            ..Gpu::default()
        }),
    })
}

/// `POST /runners/heartbeat`'s 200 body (`LiveRunnerHeartbeatResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub runner_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub orchestrator: String,
    /// Go durations: `"5s"`.
    pub heartbeat_interval: String,
    pub heartbeat_ttl: String,
    /// Only in the bootstrap answer: what later heartbeats and the unregister carry as
    /// their `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secret: Option<String>,
    /// Always present, `[]` when empty.
    #[serde(default)]
    pub session_ids: Vec<String>,
}

/// Seconds of a Go duration of one unit (`"5s"`, `"500ms"`, `"1m"`), as the SDK reads it.
pub fn parse_go_duration_secs(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(n * scale)
}

/// One orchestrator's `GET /discovery` entry; the answer is an array of these.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Left out when no runner is ready, as go-livepeer does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<DiscoveryRunner>,
}

/// A ready runner as discovery lists it (`LiveRunnerDiscoveryRunner`): `url` is the
/// orchestrator's `/apps/{runner_id}/app`, never the runner's own address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryRunner {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpu>,
    pub app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    pub mode: String,
    pub capacity: i64,
    pub capacity_used: i64,
    pub capacity_available: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_info: Option<PriceInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_carry_the_model() {
        let app = app_for_model("timbrooks/instruct-pix2pix");
        assert_eq!(app, "tessera/image-to-image/timbrooks/instruct-pix2pix");
        assert_eq!(model_of_app(&app), Some("timbrooks/instruct-pix2pix"));
        assert_eq!(model_of_app("tessera/image-to-image/"), None);
        assert_eq!(model_of_app("live-video-to-video/scope"), None);
    }

    #[test]
    fn go_durations_and_json_numbers_parse() {
        assert_eq!(parse_go_duration_secs("5s"), Some(5.0));
        assert_eq!(parse_go_duration_secs("250ms"), Some(0.25));
        assert_eq!(parse_go_duration_secs("1m30s"), None);
        let p: PriceInfo = serde_json::from_str(r#"{"price": "0.5"}"#).unwrap();
        assert_eq!(
            (p.price, p.currency.as_str(), p.unit.as_str()),
            (0.5, "usd", "hour")
        );
        let h: HeartbeatRequest =
            serde_json::from_str(r#"{"runner_url": "http://r", "app": "a", "gpu": 0}"#).unwrap();
        assert_eq!(h.gpu.unwrap().id.as_deref(), Some("0"));
    }
}
