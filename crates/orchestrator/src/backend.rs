//! What runs an orchestrator's calls: in-process `tessera_runner::Runner`s (called through
//! the runner's own router as a tower service) and runners over HTTP (registered ones, and
//! the external runners of the model list). Both get the call as the client sent it and
//! answer with the runner's response, so the orchestrator handles them alike.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tessera_engine::hub::ModelStore;
use tessera_engine::safety::SharedSafetyChecker;
use tessera_runner::{Runner, RunnerConfig};
use tower::ServiceExt;

use super::OrchestratorConfig;
use tessera_api::wire::Health;
use tessera_api::{ApiError, Limits};

/// How a model's jobs are run.
pub(super) enum Backend {
    External { url: String, token: Option<String> },
    Local(LocalModel),
}

/// What every backend shares: the HTTP client, where local models come from, the limits.
pub(super) struct Backends {
    client: reqwest::Client,
    config: OrchestratorConfig,
    pub(super) max_cold_loaded: usize,
    /// One NSFW checker for every local model, loaded when a request first asks for it.
    safety: Arc<SharedSafetyChecker>,
    /// Held while a model is looked up, evicted or started, so that two requests never load
    /// the same model twice or evict each other's.
    pub(super) loading: tokio::sync::Mutex<()>,
}

impl Backends {
    pub(super) fn new(config: &OrchestratorConfig) -> anyhow::Result<Self> {
        let safety = SharedSafetyChecker::new(
            ModelStore::new(&config.model_dir),
            &config.safety_checker,
            tessera_engine::device::parse(&config.device)?,
        );
        Ok(Self {
            client: reqwest::Client::builder().build()?,
            safety: Arc::new(safety),
            max_cold_loaded: config.max_cold_loaded.max(1),
            config: config.clone(),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Waits while `runner` is loading, up to the load timeout (then 503: the gateway may
    /// find the model warm elsewhere). A failed load is left to the runner to report.
    pub(super) async fn wait_loaded(&self, runner: &Runner) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.config.load_timeout;
        while runner.health() == Health::Loading {
            if Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!(
                    "model {} is still loading",
                    runner.model_id()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Proxies `request` to `base_url` + `/` + `path` (and its query), streaming the body
    /// both ways, with `token` as the bearer when set (ai-runner's `AUTH_TOKEN` of an
    /// external runner). A body past `max_body` is cut off; an unreachable or timed-out
    /// runner is a 502 naming it.
    pub(super) async fn proxy(
        &self,
        base_url: &str,
        token: Option<&str>,
        path: &str,
        request: Request<Body>,
        max_body: usize,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let mut url = format!("{}/{}", base_url.trim_end_matches('/'), path);
        if let Some(query) = parts.uri.query() {
            url.push('?');
            url.push_str(query);
        }
        let body = http_body_util::Limited::new(body, max_body);
        let stream = http_body_util::BodyStream::new(body).filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok::<_, std::io::Error>),
                Err(e) => Some(Err(std::io::Error::other(e))),
            }
        });
        let mut upstream = self
            .client
            .request(parts.method, &url)
            .timeout(self.config.runner_timeout)
            .headers(forwarded_headers(&parts.headers))
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            upstream = upstream.bearer_auth(token);
        }
        let answer = match upstream.send().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(runner = base_url, error = %e, "runner call failed");
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the runner at {base_url} failed: {e}"),
                )
                .into_response();
            }
        };
        let mut response = Response::builder().status(answer.status());
        if let Some(headers) = response.headers_mut() {
            *headers = forwarded_headers(answer.headers());
        }
        response
            .body(Body::from_stream(answer.bytes_stream()))
            .unwrap_or_else(|e| ApiError::internal("cannot pass the answer on", e).into_response())
    }
}

/// The headers of a proxied request or answer: all but the hop-by-hop ones, which belong
/// to one connection (RFC 9110 §7.6.1), and `Host`, which the client sets for the upstream.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Calls an in-process runner through its own router, at `/` + `path` with the query.
pub(super) async fn call_local(runner: Runner, path: &str, request: Request<Body>) -> Response {
    let (mut parts, body) = request.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    match path_and_query.parse() {
        Ok(uri) => parts.uri = uri,
        Err(e) => return ApiError::bad_request(format!("not a usable path: {e}")).into_response(),
    }
    match tessera_runner::router(runner)
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// An in-process model: a runner while loaded, nothing while not.
pub(super) struct LocalModel {
    model_id: String,
    loaded: Mutex<Option<Loaded>>,
}

struct Loaded {
    runner: Runner,
    last_used: Instant,
}

impl LocalModel {
    pub(super) fn new(model_id: &str) -> Self {
        Self {
            model_id: model_id.to_owned(),
            loaded: Mutex::new(None),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Loaded>> {
        // The guarded data is a plain Option, valid whatever a panicking holder left.
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts loading the model in the background and keeps the runner.
    pub(super) fn load(&self, backends: &Backends) -> anyhow::Result<Runner> {
        let config = RunnerConfig {
            model_id: self.model_id.clone(),
            model_dir: backends.config.model_dir.clone(),
            device: backends.config.device.clone(),
            dtype: backends.config.dtype.clone(),
            max_lora_mib: backends.config.max_lora_mib,
            limits: backends.config.limits.clone(),
            ..RunnerConfig::default()
        };
        let runner = Runner::start_sharing(&config, backends.safety.clone())?;
        tracing::info!(model = %self.model_id, "loading model");
        *self.slot() = Some(Loaded {
            runner: runner.clone(),
            last_used: Instant::now(),
        });
        Ok(runner)
    }

    /// The runner if loaded (or loading), marked as just used.
    pub(super) fn touch(&self) -> Option<Runner> {
        let mut slot = self.slot();
        let loaded = slot.as_mut()?;
        loaded.last_used = Instant::now();
        Some(loaded.runner.clone())
    }

    /// Loaded and ready to run.
    pub(super) fn is_loaded(&self) -> bool {
        self.slot()
            .as_ref()
            .is_some_and(|l| l.runner.health() == Health::Ok)
    }

    /// When the model was last used, if it is loaded.
    pub(super) fn last_used(&self) -> Option<Instant> {
        self.slot().as_ref().map(|l| l.last_used)
    }

    /// Forgets the runner; its memory goes when the last job holding it ends.
    pub(super) fn unload(&self) {
        *self.slot() = None;
    }

    /// Forgets a runner whose load failed, so that the next job tries loading again.
    pub(super) fn drop_if_failed(&self, runner: &Runner) {
        if runner.health() == Health::Error {
            let mut slot = self.slot();
            if slot
                .as_ref()
                .is_some_and(|l| l.runner.health() == Health::Error)
            {
                *slot = None;
            }
        }
    }
}
