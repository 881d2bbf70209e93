//! Runners registered from a file rather than by heartbeat: go-livepeer's
//! `-liveRunnerConfig` (`StaticLiveRunnerConfig`, `{"runners": [StaticLiveRunnerConfigEntry]}`).
//! They never expire; instead the orchestrator polls each one's `health_url` every heartbeat
//! interval and lists it only while that answers the expected status.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tessera_api::live::{Gpu, HeartbeatRequest, PriceInfo};

/// How long one health check may take (go-livepeer's client timeout).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// The file's shape.
#[derive(Debug, Deserialize)]
struct StaticConfig {
    runners: Vec<Entry>,
}

/// One `StaticLiveRunnerConfigEntry`. Unknown fields are ignored, as Go's decoder does.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    label: String,
    #[serde(default)]
    routing: String,
    #[serde(default)]
    runner_url: String,
    #[serde(default)]
    health_url: String,
    #[serde(default)]
    healthy_status_code: Option<u16>,
    #[serde(default)]
    app: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    capacity: i64,
    #[serde(default)]
    price_info: Option<PriceInfo>,
    #[serde(default)]
    gpu: Option<Gpu>,
}

/// A runner from the file, checked: what it registers as, and how its health is judged.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticRunner {
    pub label: String,
    pub request: HeartbeatRequest,
    pub health_url: String,
    pub healthy_status_code: u16,
}

/// Reads and checks a runners file (see [`parse`]).
pub fn load(path: &Path) -> anyhow::Result<Vec<StaticRunner>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses a runners file, refusing the whole of it when an entry is wrong (go-livepeer's
/// batch is atomic too), the entry named as `runners[i]`.
pub fn parse(text: &str) -> anyhow::Result<Vec<StaticRunner>> {
    let config: StaticConfig = serde_json::from_str(text).context("not a live runner config")?;
    let mut labels = std::collections::HashSet::new();
    config
        .runners
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let label = e.label.clone();
            let runner = check(e).with_context(|| format!("runners[{i}]"))?;
            if !labels.insert(label) {
                bail!("runners[{i}]: duplicate label");
            }
            Ok(runner)
        })
        .collect()
}

fn check(e: Entry) -> anyhow::Result<StaticRunner> {
    if e.label.is_empty() || e.label.trim() != e.label {
        bail!("label is required and must be trimmed");
    }
    match e.routing.as_str() {
        "" | "runner-id" => {}
        // Routing by label puts the label in the /apps path; not built here.
        "label" => bail!("routing \"label\" is not supported by tessera; use \"runner-id\""),
        other => bail!("routing must be \"runner-id\" or \"label\", not {other:?}"),
    }
    let runner_url = absolute(&e.runner_url).context("invalid runner_url")?;
    let health_url = if e.health_url.starts_with('/') {
        format!(
            "{}{}",
            runner_url.as_str().trim_end_matches('/'),
            e.health_url
        )
    } else {
        absolute(&e.health_url)
            .context("invalid health_url")?
            .to_string()
    };
    let healthy_status_code = e.healthy_status_code.unwrap_or(200);
    if !(100..=599).contains(&healthy_status_code) {
        bail!("healthy_status_code must be between 100 and 599");
    }
    let request = HeartbeatRequest {
        runner_url: e.runner_url,
        app: e.app,
        capacity: e.capacity,
        mode: e.mode,
        price_info: e.price_info,
        version: e.version,
        metadata: e.metadata,
        // Listed once its first health check passes.
        status: "unavailable".into(),
        gpu: e.gpu,
        ..HeartbeatRequest::default()
    };
    Ok(StaticRunner {
        label: e.label,
        request,
        health_url,
        healthy_status_code,
    })
}

fn absolute(url: &str) -> anyhow::Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("{url:?} is not an absolute http(s) URL");
    }
    Ok(parsed)
}

/// Whether the runner answers `GET health_url` with exactly the expected status.
pub async fn healthy(client: &reqwest::Client, runner: &StaticRunner) -> bool {
    client
        .get(&runner.health_url)
        .timeout(HEALTH_TIMEOUT)
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == runner.healthy_status_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_livepeer_static_configs_load() {
        let runners = parse(
            r#"{"runners": [
                {"label": "a", "runner_url": "http://10.0.0.5:8000/base", "health_url": "/health",
                 "app": "tessera/image-to-image/org/m", "mode": "single-shot", "capacity": 2,
                 "price_info": {"price": 0.01, "unit": "fixed"}, "extra": true},
                {"label": "b", "runner_url": "http://r", "health_url": "http://h:1/ok",
                 "healthy_status_code": 204, "app": "x"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(runners[0].health_url, "http://10.0.0.5:8000/base/health");
        assert_eq!(runners[0].healthy_status_code, 200);
        assert_eq!(runners[0].request.capacity, 2);
        assert_eq!(
            (
                runners[1].health_url.as_str(),
                runners[1].healthy_status_code
            ),
            ("http://h:1/ok", 204)
        );
    }

    #[test]
    fn a_wrong_entry_refuses_the_file_naming_it() {
        for (entry, want) in [
            (
                r#"{"runner_url": "http://r", "health_url": "/h", "app": "x"}"#,
                "runners[1]: label is required",
            ),
            (
                r#"{"label": "a", "runner_url": "http://r", "health_url": "/h", "app": "x"}"#,
                "runners[1]: duplicate label",
            ),
            (
                r#"{"label": "c", "runner_url": "ftp://r", "health_url": "/h", "app": "x"}"#,
                "runners[1]: invalid runner_url",
            ),
            (
                r#"{"label": "c", "runner_url": "http://r", "health_url": "h", "app": "x"}"#,
                "runners[1]: invalid health_url",
            ),
            (
                r#"{"label": "c", "runner_url": "http://r", "health_url": "/h", "healthy_status_code": 42}"#,
                "runners[1]: healthy_status_code",
            ),
            (
                r#"{"label": "c", "routing": "label", "runner_url": "http://r", "health_url": "/h"}"#,
                "runners[1]: routing",
            ),
        ] {
            let text = format!(
                r#"{{"runners": [{{"label": "a", "runner_url": "http://r", "health_url": "/h", "app": "x"}}, {entry}]}}"#
            );
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.starts_with(want), "{err}");
        }
    }
}
