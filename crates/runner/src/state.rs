//! The runner's one model: loaded in the background while the server already answers
//! `/health`, then shared by the requests, one inference at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use axum::http::StatusCode;
use candle_core::Device;
use serde::Serialize;
use tessera_engine::hub::ModelStore;
use tessera_engine::pipelines::{self, ImagePipeline};

use crate::config::RunnerConfig;
use crate::error::ApiError;

/// The loaded pipeline. The async mutex queues requests without holding threads, and keeps
/// one inference at a time: a second run would only halve the speed of both.
pub(crate) type SharedPipeline = Arc<tokio::sync::Mutex<Box<dyn ImagePipeline>>>;

/// What `GET /health` reports (ai-runner's values; `IDLE` comes with on-demand loading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    Loading,
    Ok,
    Error,
}

/// A handle on the runner's state; cheap to clone, one per request.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    model_id: String,
    auth_token: Option<String>,
    /// Unset while loading; then the pipeline, or why it could not be loaded.
    model: OnceLock<Result<SharedPipeline, String>>,
}

impl Runner {
    /// Starts loading `config`'s model on a background thread (resolving the id in the model
    /// directory, downloading it if allowed and missing) and returns at once. A bad device
    /// name is an error here, before anything is loaded.
    pub fn start(config: &RunnerConfig) -> anyhow::Result<Self> {
        let device = tessera_engine::device::parse(&config.device)?;
        let store = ModelStore::new(&config.model_dir);
        let id = config.model_id.clone();
        Ok(Self::start_with(
            config.model_id.clone(),
            config.auth_token.clone(),
            move || load_model(&store, &id, &device),
        ))
    }

    /// Starts a runner whose pipeline comes from `load`, run on a background thread: what
    /// `start` does with the engine's loader, and the way to serve a pipeline built some
    /// other way. An empty `auth_token` means none, as ai-runner reads `AUTH_TOKEN`.
    pub fn start_with<F>(model_id: String, auth_token: Option<String>, load: F) -> Self
    where
        F: FnOnce() -> anyhow::Result<Box<dyn ImagePipeline>> + Send + 'static,
    {
        let runner = Self {
            inner: Arc::new(Inner {
                model_id,
                auth_token: auth_token.filter(|t| !t.is_empty()),
                model: OnceLock::new(),
            }),
        };
        let loading = runner.clone();
        let spawned = std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || loading.finish_loading(load));
        if let Err(e) = spawned {
            runner.set_model(Err(format!("cannot start the loader thread: {e}")));
        }
        runner
    }

    /// The id requests must name in `model_id` (or leave empty).
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    pub(crate) fn auth_token(&self) -> Option<&str> {
        self.inner.auth_token.as_deref()
    }

    pub fn health(&self) -> Health {
        match self.inner.model.get() {
            None => Health::Loading,
            Some(Ok(_)) => Health::Ok,
            Some(Err(_)) => Health::Error,
        }
    }

    /// The pipeline, or the error a request gets while there is none: 503 while loading
    /// (it will come), 500 with the reason when loading failed (it will not).
    pub(crate) fn pipeline(&self) -> Result<SharedPipeline, ApiError> {
        match self.inner.model.get() {
            Some(Ok(pipeline)) => Ok(pipeline.clone()),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The model is still loading; try again shortly.",
            )),
            Some(Err(why)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The model failed to load: {why}"),
            )),
        }
    }

    /// Runs `load` and records its outcome; a panicking loader counts as a failed load,
    /// so that health never stays LOADING forever.
    fn finish_loading<F>(&self, load: F)
    where
        F: FnOnce() -> anyhow::Result<Box<dyn ImagePipeline>>,
    {
        let started = Instant::now();
        let outcome = match catch_unwind(AssertUnwindSafe(load)) {
            Ok(Ok(pipeline)) => {
                tracing::info!(
                    model = %self.model_id(),
                    pipeline = pipeline.name(),
                    secs = started.elapsed().as_secs_f64(),
                    "model loaded"
                );
                Ok(Arc::new(tokio::sync::Mutex::new(pipeline)))
            }
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(panic) => Err(format!("the loader panicked: {}", panic_message(&*panic))),
        };
        if let Err(why) = &outcome {
            tracing::error!(model = %self.model_id(), error = %why, "model failed to load");
        }
        self.set_model(outcome);
    }

    fn set_model(&self, outcome: Result<SharedPipeline, String>) {
        // Only the one loader thread ever sets it.
        let _ = self.inner.model.set(outcome);
    }
}

/// The engine's loader: the folder for the id (or the folder given), then the pipeline its
/// `model_index.json` names, in the device's default precision.
fn load_model(
    store: &ModelStore,
    id: &str,
    device: &Device,
) -> anyhow::Result<Box<dyn ImagePipeline>> {
    let folder = store.resolve_id_or_dir(id, None)?;
    let dtype = tessera_engine::device::default_dtype(device);
    pipelines::load(&folder, device, dtype).with_context(|| format!("loading {}", folder.display()))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
