//! `tessera-orchestrator`: go-livepeer's Live Runner orchestrator. Runners register by
//! heartbeat (`POST /runners/heartbeat`, `POST /runners/{id}/unregister`; see [`registry`]),
//! `GET /discovery` lists the ready ones with their capacity and price, and
//! `ANY /apps/{runner_id}/app/{path}` takes one of a runner's slots (503 past its capacity)
//! and proxies the call to it with go-livepeer's session headers. The orchestrator's own
//! models (an `aiModels.json` list: in-process, or ai-runner-compatible runners at a URL)
//! are runners in its discovery too; warm in-process models load at start, cold ones on
//! their first call. Offchain, as go-livepeer with `-network offchain`: no payment tickets.

mod backend;
pub mod models;
pub mod registry;
pub mod static_runners;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use tessera_api::live::{
    app_for_model, DiscoveryEntry, DiscoveryRunner, HeartbeatRequest, PriceInfo,
    HEARTBEAT_INTERVAL_SECS, MODE_SINGLE_SHOT, RUNNER_ROUTE_HEADER, SESSION_CONTROL_HEADER,
    SESSION_ID_HEADER, SESSION_TOKEN_HEADER, STATUS_READY,
};
use tessera_api::{ApiError, Limits};
use tokio::net::TcpListener;

use backend::{Backend, LocalModel};
pub use models::{load_models, parse_models, ModelEntry};
use registry::{Registry, RegistryError, Reservation, Upstream};

/// The port go-livepeer orchestrators listen on.
pub const DEFAULT_PORT: u16 = 8936;

/// How the orchestrator runs, beyond the model list.
#[derive(Clone)]
pub struct OrchestratorConfig {
    /// The secret runners bootstrap their registration with (go-livepeer's `-orchSecret`);
    /// `None` takes no registrations: only the orchestrator's own models are served.
    pub secret: Option<String>,
    /// Runners registered from a file (go-livepeer's `-liveRunnerConfig`), health-polled.
    pub static_runners: Vec<static_runners::StaticRunner>,
    /// The base URL discovery advertises and runners are told (go-livepeer's
    /// `-serviceAddr`); `None`: `http://` and the `Host` the request came to.
    pub public_url: Option<String>,
    /// Hub-cache model directory of the in-process runners.
    pub model_dir: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`, for the in-process runners.
    pub device: String,
    /// `auto`, `f32`, `f16` or `bf16`, for the in-process runners.
    pub dtype: String,
    /// The NSFW safety checker of the in-process runners (hub id or folder), one for all.
    pub safety_checker: String,
    /// The largest LoRA weights file a request may name, in MiB, for the in-process runners.
    pub max_lora_mib: u64,
    /// Cold models kept loaded at once. Loading one more first unloads the least recently
    /// used idle cold model, so that memory holds the warm models and this many others.
    pub max_cold_loaded: usize,
    /// How long a call waits for its model to load before it is refused.
    pub load_timeout: Duration,
    /// How long a proxied call may take.
    pub runner_timeout: Duration,
    /// The request limits: the body size here, and everything else in the in-process
    /// runners (as `tessera runner` takes them), so that an orchestrator serves what a
    /// runner with the same limits would.
    pub limits: Limits,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            secret: None,
            static_runners: Vec::new(),
            public_url: None,
            model_dir: tessera_engine::hub::default_model_dir(),
            device: "cpu".into(),
            dtype: "auto".into(),
            safety_checker: tessera_engine::safety::DEFAULT_MODEL_ID.into(),
            max_lora_mib: tessera_engine::lora::DEFAULT_MAX_LORA_MIB,
            max_cold_loaded: 1,
            load_timeout: Duration::from_secs(600),
            runner_timeout: Duration::from_secs(600),
            limits: Limits::default(),
        }
    }
}

impl std::fmt::Debug for OrchestratorConfig {
    // Written out so that the secret never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("static_runners", &self.static_runners)
            .field("public_url", &self.public_url)
            .field("model_dir", &self.model_dir)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("safety_checker", &self.safety_checker)
            .field("max_lora_mib", &self.max_lora_mib)
            .field("max_cold_loaded", &self.max_cold_loaded)
            .field("load_timeout", &self.load_timeout)
            .field("runner_timeout", &self.runner_timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A handle on the orchestrator; cheap to clone, one per request.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    models: Vec<Served>,
    backends: backend::Backends,
    public_url: Option<String>,
}

/// One model of the list, what serves it, and its runner id in the registry.
struct Served {
    entry: ModelEntry,
    backend: Backend,
    runner_id: String,
}

impl Orchestrator {
    /// Builds the orchestrator for `models` (see [`models::load_models`]), starts loading
    /// the warm in-process ones in the background, and sweeps expired registrations every
    /// heartbeat interval. Call it inside a tokio runtime.
    pub fn start(models: Vec<ModelEntry>, config: OrchestratorConfig) -> anyhow::Result<Self> {
        let backends = backend::Backends::new(&config)?;
        let public_url = config
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned());
        let registry = Registry::new(
            config.secret.clone(),
            public_url.clone().unwrap_or_default(),
        );
        let models = models
            .into_iter()
            .enumerate()
            .map(|(index, entry)| {
                let price = entry.price()?;
                let backend = match &entry.url {
                    Some(url) => Backend::External {
                        url: url.trim_end_matches('/').to_owned(),
                        token: entry.token.clone(),
                    },
                    None => Backend::Local(LocalModel::new(&entry.model_id)),
                };
                if let Backend::Local(local) = &backend {
                    if entry.warm {
                        local.load(&backends)?;
                    }
                }
                let runner_id = registry.add_local(
                    index,
                    HeartbeatRequest {
                        runner_url: "http://in-process.invalid".into(),
                        app: app_for_model(&entry.model_id),
                        capacity: i64::from(entry.capacity),
                        mode: MODE_SINGLE_SHOT.into(),
                        price_info: Some(PriceInfo {
                            price: price.price_per_pixel,
                            currency: price.currency.to_string().to_lowercase(),
                            unit: "pixel".into(),
                        }),
                        status: STATUS_READY.into(),
                        ..HeartbeatRequest::default()
                    },
                );
                Ok(Served {
                    entry,
                    backend,
                    runner_id,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let statics = config
            .static_runners
            .iter()
            .map(|r| {
                let id = registry
                    .add_static(r.request.clone())
                    .map_err(|e| anyhow::anyhow!("live runner {}: {}", r.label, e.msg))?;
                Ok((id, r.clone()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let orchestrator = Self {
            inner: Arc::new(Inner {
                registry,
                models,
                backends,
                public_url,
            }),
        };
        orchestrator.spawn_sweep();
        orchestrator.spawn_health_checks(statics);
        Ok(orchestrator)
    }

    /// Purges expired registrations every heartbeat interval, as go-livepeer's
    /// `expiryLoop`; the loop holds a weak handle and ends with the orchestrator.
    fn spawn_sweep(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_INTERVAL_SECS));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.registry.purge_expired();
            }
        });
    }

    /// Polls each static runner's health every heartbeat interval, as go-livepeer's
    /// `healthLoop`: listed while `health_url` answers the expected status, hidden when not.
    fn spawn_health_checks(&self, statics: Vec<(String, static_runners::StaticRunner)>) {
        if statics.is_empty() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_INTERVAL_SECS));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                for (id, runner) in &statics {
                    let healthy = static_runners::healthy(&client, runner).await;
                    inner
                        .registry
                        .set_status(id, if healthy { STATUS_READY } else { "unavailable" });
                }
            }
        });
    }

    /// What `GET /discovery` answers, with `base` as the orchestrator's address.
    pub fn discovery(&self, base: &str) -> Vec<DiscoveryEntry> {
        for m in &self.inner.models {
            let warm = match &m.backend {
                Backend::External { .. } => m.entry.warm,
                Backend::Local(local) => m.entry.warm || local.is_loaded(),
            };
            let metadata = json!({"model_id": m.entry.model_id, "warm": warm}).to_string();
            self.inner
                .registry
                .set_local_metadata(&m.runner_id, metadata);
        }
        let runners = self
            .inner
            .registry
            .ready()
            .into_iter()
            .map(|(id, r, used)| DiscoveryRunner {
                url: format!("{base}/apps/{id}/app"),
                gpu: r.gpu,
                app: r.app,
                version: r.version,
                metadata: r.metadata,
                mode: r.mode,
                capacity: r.capacity,
                capacity_used: used as i64,
                capacity_available: r.capacity - used as i64,
                price_info: r.price_info,
            })
            .collect();
        vec![DiscoveryEntry {
            address: base.to_owned(),
            runners,
        }]
    }

    /// The address to advertise: the configured one, else the one the caller used.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.inner.public_url {
            return url.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    /// One proxied call: a slot of the runner, held until the answer has been sent.
    async fn call(&self, runner_id: &str, path: &str, request: Request) -> Response {
        let max_body = self.inner.backends.limits().max_body_bytes();
        if content_length(request.headers()).is_some_and(|n| n > max_body) {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is larger than the orchestrator accepts.",
            )
            .into_response();
        }
        let reservation = match self.inner.registry.reserve(runner_id) {
            Ok(r) => r,
            Err(e) => return go_error(e),
        };
        let base = self.base_url(request.headers());
        let mut request = request;
        session_headers(&mut request, &reservation, &base);
        let response = match reservation.upstream.clone() {
            Upstream::Registered { runner_url } => {
                self.inner
                    .backends
                    .proxy(&runner_url, None, path, request, max_body)
                    .await
            }
            Upstream::Local(index) => self.call_model(index, path, request, max_body).await,
        };
        hold_until_sent(response, reservation)
    }

    /// A call to one of the orchestrator's own models.
    async fn call_model(
        &self,
        index: usize,
        path: &str,
        request: Request,
        max_body: usize,
    ) -> Response {
        let served = &self.inner.models[index];
        match &served.backend {
            Backend::External { url, token } => {
                self.inner
                    .backends
                    .proxy(url, token.as_deref(), path, request, max_body)
                    .await
            }
            Backend::Local(local) => match self.local_runner(index, local).await {
                Ok(runner) => {
                    let response = backend::call_local(runner.clone(), path, request).await;
                    local.drop_if_failed(&runner);
                    response
                }
                Err(e) => e.into_response(),
            },
        }
    }

    /// The in-process runner of model `index`, loaded if it is not (unloading an idle cold
    /// model first when too many are loaded), once it has finished loading.
    async fn local_runner(
        &self,
        index: usize,
        local: &LocalModel,
    ) -> Result<tessera_runner::Runner, ApiError> {
        let runner = {
            let _one_load_at_a_time = self.inner.backends.loading.lock().await;
            match local.touch() {
                Some(runner) => runner,
                None => {
                    self.make_room_for_cold(index)?;
                    local.load(&self.inner.backends).map_err(|e| {
                        ApiError::internal("the model could not be started", format!("{e:#}"))
                    })?
                }
            }
        };
        self.inner.backends.wait_loaded(&runner).await?;
        Ok(runner)
    }

    /// Unloads least recently used idle cold models until loading model `index` keeps the
    /// number of loaded cold models within the limit; when every loaded one is busy, the
    /// call is refused as past capacity, so that the gateway tries elsewhere.
    fn make_room_for_cold(&self, index: usize) -> Result<(), ApiError> {
        if self.inner.models[index].entry.warm {
            return Ok(());
        }
        let limit = self.inner.backends.max_cold_loaded;
        loop {
            let loaded: Vec<(usize, std::time::Instant)> = self
                .inner
                .models
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.entry.warm)
                .filter_map(|(i, m)| match &m.backend {
                    Backend::Local(local) => local.last_used().map(|t| (i, t)),
                    Backend::External { .. } => None,
                })
                .collect();
            if loaded.len() < limit {
                return Ok(());
            }
            // The call asking holds a slot of model `index` itself.
            let idle = loaded
                .into_iter()
                .filter(|(i, _)| {
                    *i != index
                        && self
                            .inner
                            .registry
                            .calls_running(&self.inner.models[*i].runner_id)
                            == 0
                })
                .min_by_key(|(_, t)| *t);
            let Some((victim, _)) = idle else {
                return Err(ApiError::unavailable("no capacity available for runner"));
            };
            if let Backend::Local(local) = &self.inner.models[victim].backend {
                tracing::info!(model = %self.inner.models[victim].entry.model_id, "unloading idle cold model");
                local.unload();
            }
        }
    }
}

/// The orchestrator's HTTP API: go-livepeer's Live Runner routes.
pub fn router(orchestrator: Orchestrator) -> Router {
    Router::new()
        .route("/runners/heartbeat", post(heartbeat))
        .route("/runners/{runner_id}/unregister", post(unregister))
        .route("/discovery", get(discovery))
        .route("/apps/{runner_id}/app", any(app_root))
        .route("/apps/{runner_id}/app/", any(app_root))
        .route("/apps/{runner_id}/app/{*path}", any(app_path))
        .route("/health", get(health))
        .with_state(orchestrator)
}

/// Serves `orchestrator` on a listener bound by the caller until Ctrl-C or SIGTERM.
pub async fn serve_on(listener: TcpListener, orchestrator: Orchestrator) -> anyhow::Result<()> {
    tessera_api::serve::serve(listener, router(orchestrator), "orchestrator").await
}

/// go-livepeer's `http.Error`: the message and a newline, as plain text.
fn go_error(e: RegistryError) -> Response {
    (
        e.status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        format!("{}\n", e.msg),
    )
        .into_response()
}

/// The whole `Authorization` value: Live Runner secrets have no scheme.
fn authorization(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Heartbeat bodies are small; one past this is refused before it is parsed.
const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;

async fn heartbeat(State(o): State<Orchestrator>, headers: HeaderMap, body: Bytes) -> Response {
    if body.len() > MAX_HEARTBEAT_BYTES {
        return go_error(RegistryError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            msg: "heartbeat body too large".into(),
        });
    }
    let request: HeartbeatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return go_error(RegistryError {
                status: StatusCode::BAD_REQUEST,
                msg: e.to_string(),
            })
        }
    };
    match o.inner.registry.heartbeat(request, authorization(&headers)) {
        Ok(mut answer) => {
            if answer.orchestrator.is_empty() {
                answer.orchestrator = o.base_url(&headers);
            }
            Json(answer).into_response()
        }
        Err(e) => go_error(e),
    }
}

async fn unregister(
    State(o): State<Orchestrator>,
    Path(runner_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match o
        .inner
        .registry
        .unregister(&runner_id, authorization(&headers))
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => go_error(e),
    }
}

async fn discovery(State(o): State<Orchestrator>, headers: HeaderMap) -> Json<Vec<DiscoveryEntry>> {
    Json(o.discovery(&o.base_url(&headers)))
}

async fn app_root(
    State(o): State<Orchestrator>,
    Path(runner_id): Path<String>,
    request: Request,
) -> Response {
    o.call(&runner_id, "", request).await
}

async fn app_path(
    State(o): State<Orchestrator>,
    Path((runner_id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    o.call(&runner_id, &path, request).await
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "OK"}))
}

/// go-livepeer's headers on a proxied call, replacing any the client sent.
fn session_headers(request: &mut Request, reservation: &Reservation, base: &str) {
    let control = format!(
        "{base}/runner/{}/session/{}",
        reservation.runner_id, reservation.session_id
    );
    let headers = request.headers_mut();
    for (name, value) in [
        (RUNNER_ROUTE_HEADER, reservation.runner_id.as_str()),
        (SESSION_ID_HEADER, reservation.session_id.as_str()),
        (SESSION_TOKEN_HEADER, reservation.session_token.as_str()),
        (SESSION_CONTROL_HEADER, control.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(header::HeaderName::from_static(name), v);
        }
    }
}

/// The response with the slot tied to its body: released when the body has been sent, or
/// when the client goes away and the body is dropped.
fn hold_until_sent(response: Response, reservation: Reservation) -> Response {
    use futures::StreamExt;
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &reservation;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}
