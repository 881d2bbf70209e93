//! `tessera-orchestrator`: serves gateways' jobs with the models of an `aiModels.json` list, in
//! in-process runners or external ai-runner-compatible ones, advertises them with their
//! prices at `GET /capabilities`, and refuses work past each model's capacity with `503
//! insufficient capacity` so that gateways try elsewhere.

mod backend;
pub mod models;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use tessera_api::auth::bearer_accepted;
use tessera_api::capabilities::{Capabilities, OfferedModel};
use tessera_api::price::PixelPrice;
use tessera_api::{ApiError, Form, Limits};

use backend::{Backend, LocalModel};
pub use models::{load_models, parse_models, ModelEntry};

/// The message gateways look for to try another orchestrator.
pub const INSUFFICIENT_CAPACITY: &str = "insufficient capacity";

/// The port go-livepeer orchestrators listen on.
pub const DEFAULT_PORT: u16 = 8936;

/// How the orchestrator runs its models, beyond the model list.
#[derive(Clone)]
pub struct OrchestratorConfig {
    /// Gateways must send `Authorization: Bearer <secret>`; `None` leaves jobs open.
    pub secret: Option<String>,
    /// Hub-cache model directory of the in-process runners.
    pub model_dir: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`, for the in-process runners.
    pub device: String,
    /// The NSFW safety checker of the in-process runners (hub id or folder), one for all.
    pub safety_checker: String,
    /// Cold models kept loaded at once. Loading one more first unloads the least recently
    /// used idle cold model, so that memory holds the warm models and this many others.
    pub max_cold_loaded: usize,
    /// How long a job waits for its model to load before it is refused.
    pub load_timeout: Duration,
    /// How long an external runner may take over one job.
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
            model_dir: tessera_engine::hub::default_model_dir(),
            device: "cpu".into(),
            safety_checker: tessera_engine::safety::DEFAULT_MODEL_ID.into(),
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
            .field("model_dir", &self.model_dir)
            .field("device", &self.device)
            .field("safety_checker", &self.safety_checker)
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
    secret: Vec<String>,
    models: Vec<Served>,
    backends: backend::Backends,
}

/// One model of the list and what serves it.
struct Served {
    entry: ModelEntry,
    price: PixelPrice,
    /// One permit per job the model may run at once.
    slots: Arc<Semaphore>,
    backend: Backend,
}

impl Orchestrator {
    /// Builds the orchestrator for `models` (see [`crate::models::load_models`]) and starts
    /// loading the warm in-process ones in the background.
    pub fn start(models: Vec<ModelEntry>, config: OrchestratorConfig) -> anyhow::Result<Self> {
        let backends = backend::Backends::new(&config)?;
        let models = models
            .into_iter()
            .map(|entry| {
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
                Ok(Served {
                    slots: Arc::new(Semaphore::new(entry.capacity as usize)),
                    entry,
                    price,
                    backend,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                secret: config
                    .secret
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect(),
                models,
                backends,
            }),
        })
    }

    /// What `GET /capabilities` answers.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            models: self
                .inner
                .models
                .iter()
                .map(|m| OfferedModel {
                    pipeline: m.entry.pipeline.clone(),
                    model_id: m.entry.model_id.clone(),
                    warm: match &m.backend {
                        Backend::External { .. } => m.entry.warm,
                        Backend::Local(local) => m.entry.warm || local.is_loaded(),
                    },
                    price: m.price,
                    capacity: m.entry.capacity,
                    free: m.slots.available_permits() as u32,
                })
                .collect(),
        }
    }

    /// The served model a request names; an empty name means the first warm model (or the
    /// first model), as a runner takes an empty `model_id` for its own.
    fn find(&self, model_id: &str) -> Result<usize, ApiError> {
        let models = &self.inner.models;
        let found = if model_id.is_empty() {
            models
                .iter()
                .position(|m| m.entry.warm)
                .or((!models.is_empty()).then_some(0))
        } else {
            models.iter().position(|m| m.entry.model_id == model_id)
        };
        found.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{model_id}' is not served by this orchestrator"),
            )
        })
    }

    /// Runs one job: finds its model, takes a slot (or refuses), and hands the form as sent
    /// to the model's runner, whose answer is the job's answer.
    async fn run(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
        let form = Form::read(headers, body.clone()).await?;
        let index = self.find(form.text("model_id")?.unwrap_or_default())?;
        let served = &self.inner.models[index];
        let _slot = served
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::unavailable(INSUFFICIENT_CAPACITY))?;
        match &served.backend {
            Backend::External { url, token } => {
                self.inner
                    .backends
                    .forward_external(url, token.as_deref(), headers, body)
                    .await
            }
            Backend::Local(local) => {
                let runner = self.local_runner(index, local).await?;
                let response = backend::forward_local(runner.clone(), headers, body).await;
                local.drop_if_failed(&runner);
                Ok(response)
            }
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
    /// job is refused as past capacity, so that the gateway tries elsewhere.
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
            let idle = loaded
                .into_iter()
                .filter(|(i, _)| {
                    let m = &self.inner.models[*i];
                    m.slots.available_permits() == m.entry.capacity as usize
                })
                .min_by_key(|(_, t)| *t);
            let Some((victim, _)) = idle else {
                return Err(ApiError::unavailable(INSUFFICIENT_CAPACITY));
            };
            if let Backend::Local(local) = &self.inner.models[victim].backend {
                tracing::info!(model = %self.inner.models[victim].entry.model_id, "unloading idle cold model");
                local.unload();
            }
        }
    }
}

/// The orchestrator's HTTP API.
pub fn router(orchestrator: Orchestrator) -> Router {
    let body_limit = orchestrator.inner.backends.limits().max_body_bytes();
    Router::new()
        .route("/image-to-image", post(image_to_image))
        .route("/image-to-image/", post(image_to_image))
        .route("/capabilities", get(capabilities))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(orchestrator)
}

/// Serves `orchestrator` on a listener bound by the caller until Ctrl-C or SIGTERM.
pub async fn serve_on(listener: TcpListener, orchestrator: Orchestrator) -> anyhow::Result<()> {
    tessera_api::shutdown::serve(listener, router(orchestrator), "orchestrator").await
}

async fn image_to_image(
    State(orchestrator): State<Orchestrator>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !orchestrator.inner.secret.is_empty()
        && !bearer_accepted(&headers, &orchestrator.inner.secret)
    {
        return ApiError::Unauthorized.into_response();
    }
    let body = match body {
        Ok(body) => body,
        Err(r) => return ApiError::body_rejected(r, "orchestrator").into_response(),
    };
    orchestrator
        .run(&headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn capabilities(State(orchestrator): State<Orchestrator>) -> Json<Capabilities> {
    Json(orchestrator.capabilities())
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "OK"}))
}
