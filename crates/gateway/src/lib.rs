//! `tessera-gateway`: the public `POST /image-to-image`. It prices each job by its input
//! pixels, sends it to the best orchestrator within the maximum price (retrying others on
//! failure), stores the results ([`storage`]) and serves them at
//! `/stream/<request-id>/<index>.<ext>`, and records every job in the ledger ([`ledger`],
//! `GET /jobs/<request-id>`). It speaks the runner's form and answers (`tessera_api`), so
//! clients of ai-runner work against it; it runs no model and links no engine.
//!
//! With `Prefer: respond-async` a request is a job people can watch (`async_job`): 202 at
//! once, then `GET /jobs/<id>`, `GET /jobs/<id>/events` (Server-Sent Events), cancel, and a
//! signed webhook ([`webhook`]) when it ends; jobs are kept in SQLite beside the ledger
//! ([`job_store`]) and survive restarts.
//!
//! OpenAI's images API is served too (`openai`): `POST /v1/images/edits` runs through the
//! same job path, and `GET /v1/models` lists the models the ready runners serve.
//! `GET /` is the playground (`playground`): a page that drives this same API from a
//! browser.

mod async_job;
mod config;
mod job;
pub mod job_store;
pub mod ledger;
mod openai;
mod playground;
pub mod quota;
mod registry;
pub mod select;
pub mod storage;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpListener;

use tessera_api::auth::bearer_accepted;
use tessera_api::price::PixelPrice;
use tessera_api::ApiError;

use crate::async_job::Jobs;
use crate::storage::ResultStore;
use crate::webhook::WebhookConfig;
pub use config::{GatewayConfig, DEFAULT_PORT};
pub use ledger::{JobRecord, Ledger, OrchestratorTotals};
use registry::Registry;
pub use storage::StorageConfig;

/// How often stored results past their retention are swept away.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// A handle on the gateway; cheap to clone, one per request.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: GatewayConfig,
    max_prices: HashMap<String, PixelPrice>,
    registry: Registry,
    store: ResultStore,
    ledger: Ledger,
    jobs: Jobs,
    webhooks: WebhookConfig,
    quotas: Arc<quota::Quotas>,
    client: reqwest::Client,
}

impl Gateway {
    /// Opens the result store and the ledger, asks the orchestrators for their runners
    /// once, and keeps refreshing them (and sweeping old results) in the background.
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Self> {
        config.check()?;
        let store = ResultStore::open(
            &config.storage,
            Duration::from_secs_f64(config.retention_hours * 3600.0),
        )?;
        let ledger = Ledger::open(&config.ledger)?;
        let (jobs, interrupted) = Jobs::open(&config.ledger, &ledger)?;
        let webhooks = WebhookConfig {
            secret: config.webhook_secret.clone(),
            allow_private: config.webhook_allow_private,
            retry_for: Duration::from_secs_f64(config.webhook_retry_secs),
        };
        let gateway = Self {
            inner: Arc::new(Inner {
                jobs,
                webhooks,
                quotas: quota::Quotas::new(config.key_limits),
                max_prices: config.max_prices()?,
                registry: Registry::new(&config.orchestrators),
                client: reqwest::Client::builder()
                    .build()
                    .context("building the HTTP client")?,
                store,
                ledger,
                config,
            }),
        };
        // Jobs a restart interrupted have ended (failed): their webhooks say so.
        async_job::send_webhooks(&gateway, interrupted);
        gateway.refresh().await;
        gateway.spawn_background();
        Ok(gateway)
    }

    /// Asks every orchestrator for its runners now.
    pub async fn refresh(&self) {
        self.inner.registry.refresh(&self.inner.client).await;
    }

    /// The refresh and sweep loops. They hold only a weak handle, so they end with the
    /// gateway.
    fn spawn_background(&self) {
        let every = Duration::from_secs_f64(self.inner.config.refresh_secs);
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.registry.refresh(&inner.client).await;
            }
        });
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                match inner.store.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "swept results past their retention"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot sweep results"),
                }
            }
        });
    }

    /// The maximum price per pixel for `model_id`, if any applies.
    fn max_price(&self, model_id: &str) -> Option<&PixelPrice> {
        let prices = &self.inner.max_prices;
        prices.get(model_id).or_else(|| prices.get("default"))
    }

    /// What result and job URLs start with: the public base URL, or nothing (paths).
    fn base_url(&self) -> &str {
        self.inner
            .config
            .public_base_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let keys = &self.inner.config.api_keys;
        keys.is_empty() || bearer_accepted(headers, keys)
    }

    /// A place under the limits of the caller's key, once [`Gateway::authorized`] has let
    /// it in; `None` when no keys are configured (nothing to count by).
    fn admit(&self, headers: &HeaderMap) -> Result<Option<quota::Admission>, quota::OverLimit> {
        if self.inner.config.api_keys.is_empty() {
            return Ok(None);
        }
        let key = tessera_api::auth::bearer_token(headers).unwrap_or_default();
        let admitted = self.inner.quotas.admit(key, std::time::Instant::now());
        if let Err(over) = &admitted {
            tracing::info!(retry_after = over.retry_after_secs, "{}", over.message);
        }
        admitted.map(Some)
    }
}

/// The gateway's HTTP API.
pub fn router(gateway: Gateway) -> Router {
    let body_limit = gateway.inner.config.limits.max_body_bytes();
    Router::new()
        .route("/image-to-image", post(image_to_image))
        .route("/image-to-image/", post(image_to_image))
        .route("/stream/{request_id}/{file}", get(stream))
        .route("/jobs/{request_id}", get(job_record).delete(cancel_job))
        .route("/jobs/{request_id}/cancel", post(cancel_job))
        .route("/jobs/{request_id}/events", get(job_events))
        .route("/health", get(health))
        .route("/v1/images/edits", post(openai::edits))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*model}", get(openai::get_model))
        .route("/v1/{*rest}", any(openai::unknown))
        .merge(playground::routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |r, n| {
            tessera_api::oversize::drain_oversized(body_limit, r, n)
        }))
        .with_state(gateway)
}

/// Serves `gateway` on a listener bound by the caller until Ctrl-C or SIGTERM.
pub async fn serve_on(listener: TcpListener, gateway: Gateway) -> anyhow::Result<()> {
    tessera_api::serve::serve(listener, router(gateway), "gateway").await
}

async fn image_to_image(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !gateway.authorized(&headers) {
        return ApiError::Unauthorized.into_response();
    }
    let admission = match gateway.admit(&headers) {
        Ok(admission) => admission,
        Err(over) => return too_many_requests(over),
    };
    match body {
        Ok(body) if tessera_api::jobs::prefers_async(&headers) => {
            async_job::submit(&gateway, &headers, body, admission).await
        }
        Ok(body) => {
            let answer = job::handle(&gateway, &headers, body).await;
            drop(admission);
            answer
        }
        Err(r) => ApiError::body_rejected(r, "gateway").into_response(),
    }
}

/// A key over its limits: 429 with `Retry-After`, in the runner's error shape.
fn too_many_requests(over: quota::OverLimit) -> Response {
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, over.message).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(over.retry_after_secs),
    );
    response
}

/// A stored result. Names are checked before the store is asked, so that no path can
/// reach outside the results.
async fn stream(
    State(gateway): State<Gateway>,
    Path((request_id, file)): Path<(String, String)>,
) -> Response {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such result").into_response();
    let Some(format) = job::image_file_format(&file) else {
        return not_found();
    };
    if !job::valid_request_id(&request_id) {
        return not_found();
    }
    match gateway.inner.store.get(&request_id, &file).await {
        Ok(Some(image)) => {
            let max_age = gateway.inner.store.retention().as_secs();
            let cache = format!("public, max-age={max_age}, immutable");
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(format.mime()),
                    ),
                    (
                        header::CACHE_CONTROL,
                        HeaderValue::from_str(&cache)
                            .unwrap_or(HeaderValue::from_static("no-cache")),
                    ),
                ],
                image,
            )
                .into_response()
        }
        Ok(None) => not_found(),
        Err(e) => {
            ApiError::internal("cannot read the stored result", format!("{e:#}")).into_response()
        }
    }
}

/// An async job's document; for the id of a synchronous request, its ledger record as
/// before.
async fn job_record(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Response {
    if !gateway.authorized(&headers) {
        return ApiError::Unauthorized.into_response();
    }
    match async_job::document(&gateway, &request_id).await {
        Ok(Some(doc)) => return Json(doc).into_response(),
        Ok(None) => {}
        Err(e) => {
            return ApiError::internal("cannot read the job", format!("{e:#}")).into_response()
        }
    }
    let ledger = gateway.inner.ledger.clone();
    let found = tokio::task::spawn_blocking(move || ledger.get(&request_id)).await;
    match found {
        Ok(Ok(Some(job))) => Json(job).into_response(),
        Ok(Ok(None)) => async_job::no_such_job(),
        Ok(Err(e)) => {
            ApiError::internal("cannot read the ledger", format!("{e:#}")).into_response()
        }
        Err(e) => ApiError::internal("cannot read the ledger", e).into_response(),
    }
}

async fn cancel_job(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !gateway.authorized(&headers) {
        return ApiError::Unauthorized.into_response();
    }
    async_job::cancel(&gateway, &id).await
}

async fn job_events(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !gateway.authorized(&headers) {
        return ApiError::Unauthorized.into_response();
    }
    async_job::events(&gateway, &id).await
}

/// `OK` while some ready runner serves the default model (asking the orchestrators again
/// when none does), else a 503: a load balancer should not send jobs here.
async fn health(State(gateway): State<Gateway>) -> Response {
    let model = &gateway.inner.config.default_model;
    if !gateway.inner.registry.offered(model) {
        gateway.refresh().await;
    }
    if gateway.inner.registry.offered(model) {
        Json(json!({"status": "OK"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "ERROR", "detail": {"msg": format!("no ready runner serves {model}")}})),
        )
            .into_response()
    }
}
