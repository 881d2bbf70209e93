//! The worker: one thread that loads the model, owns it, and runs queued jobs one after
//! another, off the async runtime. The queue is bounded; a job whose client has gone away is
//! dropped unrun (or stopped between images), and a panicking model fails its job, not the
//! process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use base64::Engine as _;
use tessera_engine::image_io::{self, RgbImage};
use tokio::sync::oneshot;

use tessera_api::wire::Media;
use tessera_api::ApiError;

use crate::engine_error::engine_error;
use crate::model::{ImageRequest, Model};
use crate::state::Shared;

/// A checked request: the decoded image and every image to make from it.
#[derive(Debug)]
pub struct Job {
    pub image: RgbImage,
    /// One per output image, in order (`seed + i`).
    pub images: Vec<ImageRequest>,
}

pub(crate) type Reply = Result<Vec<Media>, ApiError>;

struct Task {
    job: Job,
    reply: oneshot::Sender<Reply>,
}

/// The sending end of the queue.
#[derive(Clone)]
pub(crate) struct Queue {
    sender: SyncSender<Task>,
}

/// How long a client refused for a full queue is told to wait: about one short edit.
const RETRY_AFTER_SECS: u64 = 5;

impl Queue {
    /// Queues `job` and returns where its result will arrive, or 503 when the queue is full.
    pub fn submit(&self, shared: &Shared, job: Job) -> Result<oneshot::Receiver<Reply>, ApiError> {
        let (reply, result) = oneshot::channel();
        // Counted before the send, so that the worker's decrement can never come first.
        shared.queued_changed(1);
        match self.sender.try_send(Task { job, reply }) {
            Ok(()) => Ok(result),
            Err(e) => {
                shared.queued_changed(-1);
                match e {
                    TrySendError::Full(_) => Err(ApiError::Busy {
                        retry_after_secs: RETRY_AFTER_SECS,
                    }),
                    TrySendError::Disconnected(_) => {
                        tracing::error!("the worker thread is gone");
                        Err(ApiError::pipeline())
                    }
                }
            }
        }
    }
}

/// Starts the worker thread: it runs `load`, records the outcome in `shared`, then serves
/// the queue (of `depth` waiting jobs) until every sender is dropped.
pub(crate) fn spawn<M, F>(shared: Shared, depth: usize, load: F) -> Queue
where
    M: Model + 'static,
    F: FnOnce() -> anyhow::Result<M> + Send + 'static,
{
    let (sender, receiver) = std::sync::mpsc::sync_channel(depth);
    let worker_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("model-worker".into())
        .spawn(move || {
            if let Some(model) = load_model(&worker_shared, load) {
                serve(&worker_shared, model, receiver);
            }
        });
    if let Err(e) = spawned {
        shared.loaded(Err(format!("cannot start the worker thread: {e}")));
    }
    Queue { sender }
}

/// Runs the loader; a panicking one counts as a failed load, so that health never stays
/// LOADING forever.
fn load_model<M, F>(shared: &Shared, load: F) -> Option<M>
where
    F: FnOnce() -> anyhow::Result<M>,
{
    let started = Instant::now();
    let outcome = match catch_unwind(AssertUnwindSafe(load)) {
        Ok(Ok(model)) => Ok(model),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!("the loader panicked: {}", panic_message(&*panic))),
    };
    match outcome {
        Ok(model) => {
            tracing::info!(
                model = shared.model_id(),
                secs = started.elapsed().as_secs_f64(),
                "model loaded"
            );
            shared.loaded(Ok(()));
            Some(model)
        }
        Err(why) => {
            tracing::error!(model = shared.model_id(), error = %why, "model failed to load");
            shared.loaded(Err(why));
            None
        }
    }
}

fn serve<M: Model>(shared: &Shared, mut model: M, queue: Receiver<Task>) {
    for Task { job, reply } in queue {
        shared.queued_changed(-1);
        if reply.is_closed() {
            tracing::info!("client gone: queued job dropped");
            continue;
        }
        let started = Instant::now();
        let keep_going = || !reply.is_closed();
        let result = catch_unwind(AssertUnwindSafe(|| run_job(&mut model, &job, &keep_going)))
            .unwrap_or_else(|panic| {
                tracing::error!(panic = panic_message(&*panic), "the model panicked");
                Err(ApiError::pipeline())
            });
        let secs = started.elapsed().as_secs_f64();
        shared.metrics().inference_seconds(secs);
        if let Ok(media) = &result {
            shared.metrics().images_generated(media.len() as u64);
            tracing::info!(
                images = media.len(),
                steps = job.images[0].params.num_inference_steps,
                width = job.image.width,
                height = job.image.height,
                secs,
                "image-to-image done"
            );
        }
        // The client may have gone meanwhile; then nobody wants the result.
        let _ = reply.send(result);
    }
}

/// The job's images, one after another (ai-runner's way to stay within device memory),
/// stopping between images once nobody waits for them.
fn run_job<M: Model>(model: &mut M, job: &Job, keep_going: &dyn Fn() -> bool) -> Reply {
    let mut media = Vec::with_capacity(job.images.len());
    for request in &job.images {
        if !keep_going() {
            tracing::info!("client gone: job stopped");
            return Err(ApiError::pipeline());
        }
        let out = model
            .generate(&job.image, request, keep_going)
            .map_err(engine_error)?;
        let png = image_io::encode_png(&out.image).map_err(|e| {
            tracing::error!(error = %e, "cannot encode the model's output as PNG");
            ApiError::pipeline()
        })?;
        media.push(Media {
            url: format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(png)
            ),
            seed: request.seed,
            nsfw: out.nsfw,
        });
    }
    Ok(media)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
