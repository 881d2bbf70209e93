//! The runner's state shared by the requests: what it serves, how loading went, the queue to
//! the worker that owns the model, and the metrics.

use std::future::Future;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::http::StatusCode;
use tessera_engine::editor::{Editor, EditorConfig};
use tessera_engine::hub::ModelStore;
use tessera_engine::safety::SharedSafetyChecker;
use tokio::sync::{mpsc, oneshot};

use tessera_api::wire::Health;
use tessera_api::{defaults, ApiError, Limits};

use crate::config::RunnerConfig;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::worker::{self, Events, Job, JobEvent, Queue, Reply};

/// A handle on the runner; cheap to clone, one per request.
#[derive(Clone)]
pub struct Runner {
    shared: Shared,
    queue: Queue,
}

/// The part the worker thread shares with the requests.
#[derive(Clone)]
pub(crate) struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    model_id: String,
    auth_token: Option<String>,
    version: String,
    limits: Limits,
    /// Unset while loading; then `Ok`, or why the model could not be loaded.
    loaded: OnceLock<Result<(), String>>,
    /// Jobs waiting for the worker.
    queued: AtomicIsize,
    /// Seconds recent jobs took (an exponential moving average, as f64 bits; `u64::MAX`
    /// until the first job ends): what a 503's `Retry-After` is computed from.
    recent_job_secs: AtomicU64,
    metrics: Metrics,
}

/// Weight of the newest job in [`Inner::recent_job_secs`]: recent jobs count most, one odd
/// job does not decide.
const RECENT_JOB_WEIGHT: f64 = 0.3;

impl Runner {
    /// Starts loading `config`'s model on the worker thread (resolving the id in the model
    /// directory, downloading it if allowed and missing) and returns at once. A bad device
    /// name or pipeline is an error here, before anything is loaded.
    pub fn start(config: &RunnerConfig) -> anyhow::Result<Self> {
        let device = tessera_engine::device::parse(&config.device)?;
        let store = ModelStore::new(&config.model_dir);
        let safety = SharedSafetyChecker::new(store, &config.safety_checker, device);
        Self::start_sharing(config, Arc::new(safety))
    }

    /// [`Runner::start`] with a safety checker shared with other runners of the process (an
    /// orchestrator serving several models loads the checker once).
    pub fn start_sharing(
        config: &RunnerConfig,
        safety: Arc<SharedSafetyChecker>,
    ) -> anyhow::Result<Self> {
        let device = tessera_engine::device::parse(&config.device)?;
        let editor = EditorConfig {
            model_id: config.model_id.clone(),
            store: ModelStore::new(&config.model_dir).with_max_lora_mib(config.max_lora_mib),
            dtype: tessera_engine::device::parse_dtype(&config.dtype, &device)?,
            device,
            safety,
        };
        Ok(Self::start_with(config, move || load_editor(&editor)))
    }

    /// Starts a runner whose model comes from `load`, run on the worker thread: what `start`
    /// does with the engine's loader, and the way to serve a model built some other way.
    /// `config`'s device and model directory are not used. An empty `auth_token` means
    /// none, as ai-runner reads `AUTH_TOKEN`.
    pub fn start_with<M, F>(config: &RunnerConfig, load: F) -> Self
    where
        M: Model + 'static,
        F: FnOnce() -> anyhow::Result<M> + Send + 'static,
    {
        let shared = Shared {
            inner: Arc::new(Inner {
                model_id: config.model_id.clone(),
                auth_token: config.auth_token.clone().filter(|t| !t.is_empty()),
                version: config.version.clone(),
                limits: config.limits.clone(),
                loaded: OnceLock::new(),
                queued: AtomicIsize::new(0),
                recent_job_secs: AtomicU64::new(u64::MAX),
                metrics: Metrics::new(),
            }),
        };
        let queue = worker::spawn(shared.clone(), config.queue_depth, load);
        Self { shared, queue }
    }

    /// The id requests must name in `model_id` (or leave empty).
    pub fn model_id(&self) -> &str {
        self.shared.model_id()
    }

    pub fn pipeline(&self) -> &'static str {
        defaults::PIPELINE
    }

    pub fn version(&self) -> &str {
        &self.shared.inner.version
    }

    pub fn health(&self) -> Health {
        match self.shared.inner.loaded.get() {
            None => Health::Loading,
            Some(Ok(())) => Health::Ok,
            Some(Err(_)) => Health::Error,
        }
    }

    pub(crate) fn auth_token(&self) -> Option<&str> {
        self.shared.inner.auth_token.as_deref()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.shared.inner.limits
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        self.shared.metrics()
    }

    /// A 503 while the model loads, a 500 saying why once its load failed.
    fn ready(&self) -> Result<(), ApiError> {
        match self.shared.inner.loaded.get() {
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The model is still loading; try again shortly.",
            )),
            Some(Err(why)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The model failed to load: {why}"),
            )),
            Some(Ok(())) => Ok(()),
        }
    }

    /// Queues `job` for the model and waits for its images. Dropping the returned future
    /// (the client went away) lets the worker skip or stop the job.
    pub(crate) async fn run(&self, job: Job) -> Reply {
        self.ready()?;
        let result = self.queue.submit(&self.shared, job, None)?;
        answer(self.waiting(), result).await
    }

    /// Queues `job` with a watcher: its events arrive on the receiver, which closes once the
    /// answer is ready. Dropping the returned future stops the job as `run`'s does.
    pub(crate) fn watch(
        &self,
        job: Job,
    ) -> Result<
        (
            mpsc::UnboundedReceiver<JobEvent>,
            impl Future<Output = Reply> + Send + 'static,
        ),
        ApiError,
    > {
        self.ready()?;
        let (events, watcher): (Events, _) = mpsc::unbounded_channel();
        let result = self.queue.submit(&self.shared, job, Some(events))?;
        // Made now, not when the answer is first awaited: a stream dropped before its
        // events are over counts as a client gone too.
        Ok((watcher, answer(self.waiting(), result)))
    }

    fn waiting(&self) -> Waiting {
        Waiting {
            shared: self.shared.clone(),
            answered: false,
        }
    }
}

/// Waits for the worker's answer, counting a client that leaves before it.
async fn answer(mut waiting: Waiting, result: oneshot::Receiver<Reply>) -> Reply {
    let reply = result.await.unwrap_or_else(|_| {
        tracing::error!("the worker dropped a job without answering");
        Err(ApiError::pipeline())
    });
    waiting.answered = true;
    reply
}

/// A request waiting for the worker; dropped unanswered, its client went away (which is
/// worth counting: clients giving up is what an overloaded runner looks like).
struct Waiting {
    shared: Shared,
    answered: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.answered {
            tracing::info!("client gone before its images were ready");
            self.shared.metrics().client_gone();
        }
    }
}

impl Shared {
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Records the load's outcome; only the worker thread ever sets it, once.
    pub fn loaded(&self, outcome: Result<(), String>) {
        let _ = self.inner.loaded.set(outcome);
    }

    /// Adds `delta` to the number of waiting jobs and publishes it.
    pub fn queued_changed(&self, delta: isize) {
        let now = self.inner.queued.fetch_add(delta, Ordering::SeqCst) + delta;
        self.inner.metrics.set_queue_depth(now.max(0) as usize);
    }

    /// Jobs waiting for the worker now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::SeqCst).max(0) as usize
    }

    /// Folds the seconds a job took into the recent average. Only the worker thread calls
    /// it, so a load and a store need no compare-and-swap.
    pub fn job_took(&self, secs: f64) {
        let average = match self.recent_job_secs() {
            Some(old) => RECENT_JOB_WEIGHT * secs + (1.0 - RECENT_JOB_WEIGHT) * old,
            None => secs,
        };
        self.inner
            .recent_job_secs
            .store(average.to_bits(), Ordering::Relaxed);
    }

    /// How long recent jobs took, once one has ended.
    pub fn recent_job_secs(&self) -> Option<f64> {
        match self.inner.recent_job_secs.load(Ordering::Relaxed) {
            u64::MAX => None,
            bits => Some(f64::from_bits(bits)),
        }
    }
}

/// The engine's loader: the model the id names (with its forced settings), or the folder
/// given, in the device's default precision.
fn load_editor(config: &EditorConfig) -> anyhow::Result<Editor> {
    let editor = Editor::load(config).with_context(|| format!("loading {}", config.model_id))?;
    tracing::info!(pipeline = editor.pipeline_name(), "pipeline ready");
    Ok(editor)
}
