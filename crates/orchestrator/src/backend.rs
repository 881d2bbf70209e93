//! What runs an orchestrator's jobs: in-process `tessera_runner::Runner`s (called through
//! the runner's own router as a tower service) and external runners over HTTP. Both get
//! the job's multipart form as the gateway sent it, and both answer with the runner's
//! response, so the orchestrator handles them alike.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
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

    /// Sends the form to an external runner with its token; an unreachable or timed-out
    /// runner is a 502 naming it.
    pub(super) async fn forward_external(
        &self,
        url: &str,
        token: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let mut request = self
            .client
            .post(format!("{url}/image-to-image"))
            .timeout(self.config.runner_timeout)
            .body(body);
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        let failed = |e: reqwest::Error| {
            tracing::warn!(runner = url, error = %e, "external runner failed");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("the runner at {url} failed: {e}"),
            )
        };
        let answer = request.send().await.map_err(failed)?;
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = answer.bytes().await.map_err(failed)?;
        let mut response = (status, bytes).into_response();
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        Ok(response)
    }
}

/// Sends the form to an in-process runner through its router.
pub(super) async fn forward_local(runner: Runner, headers: &HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let request = Request::post("/image-to-image")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body));
    match request {
        Ok(request) => match tessera_runner::router(runner).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(e) => ApiError::internal("cannot build the runner request", e).into_response(),
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
