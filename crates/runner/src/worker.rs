//! The worker: one thread that loads the model, owns it, and runs queued jobs one after
//! another, off the async runtime. The queue is bounded; a job whose client has gone away is
//! dropped unrun (or stopped between images), and a panicking model fails its job, not the
//! process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use tessera_api::jobs::{FinishedImage, Preview, Progress};
use tessera_api::output::data_url;
use tessera_api::retry::retry_after_secs;
use tessera_api::{ImageFormat, OutputFormat};
use tessera_engine::image_io::RgbImage;
use tokio::sync::{mpsc, oneshot};

use tessera_api::wire::Media;
use tessera_api::ApiError;

use crate::encode::encode;
use crate::engine_error::engine_error;
use crate::model::{ImageRequest, Model, ModelStep};
use crate::state::Shared;

/// A checked request: the decoded image and every image to make from it.
#[derive(Debug)]
pub struct Job {
    pub image: RgbImage,
    /// One per output image, in order (`seed + i`).
    pub images: Vec<ImageRequest>,
    /// The file format of the results.
    pub output: OutputFormat,
    /// Whether a watcher wants `preview` events.
    pub previews: bool,
}

pub(crate) type Reply = Result<Vec<Media>, ApiError>;

/// What a job's watcher is told while it runs (the answer itself comes as the [`Reply`]).
#[derive(Debug)]
pub(crate) enum JobEvent {
    Progress(Progress),
    Preview(Preview),
    Image(FinishedImage),
}

pub(crate) type Events = mpsc::UnboundedSender<JobEvent>;

struct Task {
    job: Job,
    reply: oneshot::Sender<Reply>,
    /// Dropped (which ends the watcher's stream of events) only after the reply is sent.
    events: Option<Events>,
}

/// The sending end of the queue.
#[derive(Clone)]
pub(crate) struct Queue {
    sender: SyncSender<Task>,
}

impl Queue {
    /// Queues `job` and returns where its result will arrive, or 503 when the queue is full.
    /// `events`, when given, is told of the job's progress and images as they come.
    pub fn submit(
        &self,
        shared: &Shared,
        job: Job,
        events: Option<Events>,
    ) -> Result<oneshot::Receiver<Reply>, ApiError> {
        let (reply, result) = oneshot::channel();
        // Counted before the send, so that the worker's decrement can never come first.
        shared.queued_changed(1);
        match self.sender.try_send(Task { job, reply, events }) {
            Ok(()) => Ok(result),
            Err(e) => {
                shared.queued_changed(-1);
                match e {
                    TrySendError::Full(_) => Err(ApiError::Busy {
                        retry_after_secs: retry_after_secs(
                            shared.queued() + 1,
                            shared.recent_job_secs(),
                        ),
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
    for Task { job, reply, events } in queue {
        shared.queued_changed(-1);
        if reply.is_closed() {
            tracing::info!("client gone: queued job dropped");
            continue;
        }
        let started = Instant::now();
        let keep_going = || !reply.is_closed();
        let watcher = Watcher {
            events: events.as_ref(),
            started,
            previews: job.previews,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            run_job(&mut model, &job, &keep_going, &watcher)
        }))
        .unwrap_or_else(|panic| {
            tracing::error!(panic = panic_message(&*panic), "the model panicked");
            Err(ApiError::pipeline())
        });
        let secs = started.elapsed().as_secs_f64();
        shared.metrics().inference_seconds(secs);
        shared.job_took(secs);
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
        drop(events);
    }
}

/// Where a job's events go, if anywhere.
struct Watcher<'a> {
    events: Option<&'a Events>,
    started: Instant,
    previews: bool,
}

/// Latents previews are sent about this many times per image.
const PREVIEWS_PER_IMAGE: usize = 10;

/// Preview JPEGs are small and cheap; their quality matters little.
const PREVIEW_QUALITY: u8 = 70;

impl Watcher<'_> {
    fn send(&self, event: JobEvent) {
        if let Some(events) = self.events {
            // A watcher gone is a client gone; keep_going stops the job.
            let _ = events.send(event);
        }
    }

    /// After step `step.step` of image `index` of `images`: its progress, and every few
    /// steps (not the last: the image itself follows) a preview when one was asked for.
    fn step(&self, index: usize, images: usize, step: &ModelStep<'_>) {
        if self.events.is_none() {
            return;
        }
        let progress = Progress::at(
            step.step as u32,
            step.steps as u32,
            index as u32,
            images as u32,
            self.started.elapsed().as_secs_f64(),
        );
        self.send(JobEvent::Progress(progress));
        let every = step.steps.div_ceil(PREVIEWS_PER_IMAGE).max(1);
        if self.previews && step.step.is_multiple_of(every) && step.step < step.steps {
            let jpeg = OutputFormat {
                format: ImageFormat::Jpeg,
                quality: PREVIEW_QUALITY,
            };
            match (step.preview)().map(|rgb| encode(&rgb, jpeg)) {
                Some(Ok(bytes)) => self.send(JobEvent::Preview(Preview {
                    image: index as u32,
                    step: step.step as u32,
                    url: data_url(ImageFormat::Jpeg, &bytes),
                })),
                Some(Err(e)) => tracing::warn!(error = %e, "cannot encode a preview"),
                None => {}
            }
        }
    }
}

/// The job's images, one after another (ai-runner's way to stay within device memory),
/// stopping once nobody waits for them.
fn run_job<M: Model>(
    model: &mut M,
    job: &Job,
    keep_going: &dyn Fn() -> bool,
    watcher: &Watcher<'_>,
) -> Reply {
    let mut media = Vec::with_capacity(job.images.len());
    let count = job.images.len();
    for (index, request) in job.images.iter().enumerate() {
        if !keep_going() {
            tracing::info!("client gone: job stopped");
            return Err(ApiError::pipeline());
        }
        let out = model
            .generate(&job.image, request, keep_going, &mut |step| {
                watcher.step(index, count, &step)
            })
            .map_err(|e| match e {
                tessera_engine::Error::Cancelled => {
                    tracing::info!("client gone: job stopped");
                    ApiError::pipeline()
                }
                other => engine_error(other),
            })?;
        let bytes = encode(&out.image, job.output).map_err(|e| {
            tracing::error!(error = %e, "cannot encode the model's output");
            ApiError::pipeline()
        })?;
        let image = Media {
            url: data_url(job.output.format, &bytes),
            seed: request.seed,
            nsfw: out.nsfw,
        };
        watcher.send(JobEvent::Image(FinishedImage {
            index: index as u32,
            url: image.url.clone(),
            seed: image.seed,
            nsfw: image.nsfw,
        }));
        media.push(image);
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
