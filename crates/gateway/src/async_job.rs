//! Async jobs (`Prefer: respond-async`): accepted at once with a 202, run in the
//! background over the runner's event stream, watched with `GET /jobs/<id>` and
//! `GET /jobs/<id>/events`, stopped with `POST /jobs/<id>/cancel` or `DELETE /jobs/<id>`.
//!
//! A job's state is its [`JobDocument`]. While the job runs it lives here, in memory, with a
//! broadcast channel of its events; every change of state (running, an image finished, the
//! end) is also written to SQLite ([`JobStore`]), where it stays once the job is over.
//! Events are sent under the same lock that changes the document, so that a late
//! subscriber, who first gets the current state and then the live events, neither misses
//! nor repeats one.
//!
//! Cancelling drops the connection to the runner (through the orchestrator's proxy): the
//! runner's stream is dropped, its `keep_going` turns false and the engine stops within a
//! denoising step; the slot is freed as the proxied call ends. Images finished before stay
//! stored and are the only ones charged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Serialize;
use tessera_api::jobs::{
    event, FinishedImage, JobDocument, JobError, JobStatus, JobUrls, Preview, Progress, Webhook,
    WebhookStatus, EVENT_STREAM, RESPOND_ASYNC,
};
use tessera_api::wire::{ImageResponse, Media};
use tessera_api::{ApiError, Form};
use tokio::sync::{broadcast, watch};

use crate::job::{self, Routed};
use crate::job_store::JobStore;
use crate::ledger::{status as ledger_status, JobRecord};
use crate::quota::Admission;
use crate::select::Candidate;
use crate::webhook::{self, FIELD as WEBHOOK_FIELD};
use crate::Gateway;

/// Events a slow subscriber may fall behind by before it is sent the current state again.
const EVENT_BACKLOG: usize = 1024;

/// Comments sent on quiet event streams, so that proxies keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a gateway that starts says of the jobs it finds unfinished.
pub(crate) const RESTARTED: &str =
    "The gateway restarted while this job was queued or running; it was not finished.";

/// The async jobs of one gateway: those running, in memory, and all of them in SQLite.
pub(crate) struct Jobs {
    store: JobStore,
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// A job being run.
struct Live {
    doc: Mutex<JobDocument>,
    events: broadcast::Sender<Sent>,
    cancel: watch::Sender<bool>,
    /// The final document, once the job is over and it is stored.
    finished: watch::Sender<Option<JobDocument>>,
    /// When the job arrived, for its progress' elapsed time.
    started: Instant,
}

/// One event as subscribers get it.
#[derive(Debug, Clone)]
struct Sent {
    name: &'static str,
    data: String,
}

impl Sent {
    fn new(name: &'static str, data: &impl Serialize) -> Self {
        Self {
            name,
            // Serialising these plain structs cannot fail.
            data: serde_json::to_string(data).unwrap_or_else(|_| "{}".into()),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self.name, event::DONE | event::ERROR | event::CANCELLED)
    }
}

/// How a job ended.
enum Outcome {
    Succeeded,
    Failed(JobError),
    Cancelled,
}

/// How one attempt at one orchestrator went.
enum Streamed {
    Done {
        secs: f64,
    },
    /// The request itself is bad: any other orchestrator would say the same.
    Refused(JobError),
    /// This orchestrator could not do it; another may.
    Failed(String),
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded documents stay valid whatever a panicking holder was doing.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// Opens the jobs table in the ledger's SQLite file and fails the jobs a previous run
    /// left unfinished (recording them in the ledger as failed). Returns those too: their
    /// webhooks are still to be sent ([`send_webhooks`]).
    pub(crate) fn open(
        path: &std::path::Path,
        ledger: &crate::Ledger,
    ) -> anyhow::Result<(Self, Vec<JobDocument>)> {
        let store = JobStore::open(path)?;
        let failed = store.fail_unfinished(RESTARTED, now_secs())?;
        for doc in &failed {
            tracing::warn!(job = %doc.id, "job left unfinished by a restart marked failed");
            ledger.record(&ledger_record(doc))?;
        }
        let jobs = Self {
            store,
            live: Mutex::new(HashMap::new()),
        };
        Ok((jobs, failed))
    }

    fn live(&self, id: &str) -> Option<Arc<Live>> {
        lock(&self.live).get(id).cloned()
    }
}

impl Live {
    /// Changes the document under the lock; `event`, built from the changed document, is
    /// sent under the same lock. Returns the document as it now is.
    fn update(
        &self,
        change: impl FnOnce(&mut JobDocument),
        event: impl FnOnce(&JobDocument) -> Option<Sent>,
    ) -> JobDocument {
        let mut doc = lock(&self.doc);
        change(&mut doc);
        if let Some(sent) = event(&doc) {
            // No subscriber is fine: nobody is watching.
            let _ = self.events.send(sent);
        }
        doc.clone()
    }

    /// The current state as events, and the live events after it.
    fn subscribe(&self) -> (Vec<Sent>, broadcast::Receiver<Sent>) {
        let doc = lock(&self.doc);
        (replay(&doc), self.events.subscribe())
    }
}

/// A job's state as the events a late subscriber gets first: its finished images and
/// latest progress, or its final event once it is over.
fn replay(doc: &JobDocument) -> Vec<Sent> {
    if let Some(last) = final_event(doc) {
        return vec![last];
    }
    let mut out: Vec<Sent> = finished_images(doc)
        .into_iter()
        .map(|i| Sent::new(event::IMAGE, &i))
        .collect();
    if let Some(p) = &doc.progress {
        out.push(Sent::new(event::PROGRESS, p));
    }
    out
}

fn finished_images(doc: &JobDocument) -> Vec<FinishedImage> {
    doc.images
        .iter()
        .enumerate()
        .map(|(i, m)| FinishedImage {
            index: i as u32,
            url: m.url.clone(),
            seed: m.seed,
            nsfw: m.nsfw,
        })
        .collect()
}

/// The event that ends a finished job's stream.
fn final_event(doc: &JobDocument) -> Option<Sent> {
    let images = || ImageResponse {
        images: doc.images.clone(),
    };
    match doc.status {
        JobStatus::Succeeded => Some(Sent::new(event::DONE, &images())),
        JobStatus::Cancelled => Some(Sent::new(event::CANCELLED, &images())),
        JobStatus::Failed => Some(Sent::new(
            event::ERROR,
            &doc.error.clone().unwrap_or(JobError {
                status: 500,
                msg: "the job failed".into(),
            }),
        )),
        JobStatus::Queued | JobStatus::Running => None,
    }
}

/// The ledger's row for a job, from its document.
fn ledger_record(doc: &JobDocument) -> JobRecord {
    let status = match (doc.status, &doc.error) {
        (JobStatus::Succeeded, _) => ledger_status::OK,
        (JobStatus::Cancelled, _) => ledger_status::CANCELLED,
        (_, Some(e)) if (400..500).contains(&e.status) => ledger_status::REJECTED,
        _ => ledger_status::FAILED,
    };
    let finished = doc.finished_at.unwrap_or_else(now_secs);
    JobRecord {
        request_id: doc.id.clone(),
        created_at: doc.created_at as i64,
        model_id: doc.model_id.clone(),
        orchestrator: doc.orchestrator.clone(),
        input_pixels: doc.input_pixels,
        outputs: doc.images.len() as u32,
        price_per_pixel: doc.price_per_pixel,
        currency: doc.currency.clone(),
        fee: doc.fee,
        latency_ms: ((finished - doc.created_at).max(0.0) * 1000.0) as u64,
        attempts: doc.attempts,
        status: status.into(),
        error: doc.error.as_ref().map(|e| e.msg.clone()),
    }
}

/// `POST /image-to-image` with `Prefer: respond-async`: the request is checked as the
/// runner would check it, then answered 202 with the job's document while it runs.
pub(crate) async fn submit(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Bytes,
    admission: Option<Admission>,
) -> Response {
    match accept(gateway, headers, body, admission).await {
        Ok(doc) => {
            let mut response = (StatusCode::ACCEPTED, Json(&doc)).into_response();
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&doc.urls.get) {
                headers.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&doc.id) {
                headers.insert("x-request-id", v);
            }
            headers.insert(
                "preference-applied",
                HeaderValue::from_static(RESPOND_ASYNC),
            );
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn accept(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Bytes,
    admission: Option<Admission>,
) -> Result<JobDocument, ApiError> {
    let mut form = Form::read(headers, body).await?;
    let webhook = webhook_url(gateway, &form).await?;
    form.parts.retain(|p| p.name != WEBHOOK_FIELD);
    let config = &gateway.inner.config;
    let job = job::inspect(form, &config.default_model, config.limits.max_image_side)?;
    // What any runner would refuse is refused now, with its words, rather than after the
    // 202.
    let checked = job::check_as_runner(gateway, &job)?;
    job::choose(gateway, &job.model_id, job.pixels)?;

    let id = uuid::Uuid::new_v4().simple().to_string();
    let doc = JobDocument {
        urls: JobUrls::of(gateway.base_url(), &id),
        id: id.clone(),
        status: JobStatus::Queued,
        created_at: now_secs(),
        finished_at: None,
        progress: None,
        images: Vec::new(),
        error: None,
        previews: checked.previews,
        webhook: webhook.map(|url| Webhook {
            url,
            status: WebhookStatus::Pending,
            attempts: 0,
            error: None,
        }),
        model_id: job.model_id.clone(),
        orchestrator: None,
        attempts: 0,
        input_pixels: job.pixels,
        price_per_pixel: None,
        currency: None,
        fee: None,
    };
    persist(gateway, doc.clone())
        .await
        .map_err(|e| ApiError::internal("cannot store the job", format!("{e:#}")))?;
    let live = Arc::new(Live {
        doc: Mutex::new(doc.clone()),
        events: broadcast::channel(EVENT_BACKLOG).0,
        cancel: watch::channel(false).0,
        finished: watch::channel(None).0,
        started: Instant::now(),
    });
    lock(&gateway.inner.jobs.live).insert(id, live.clone());
    tokio::spawn(run(gateway.clone(), live, job, admission));
    Ok(doc)
}

/// The request's `webhook_url`, checked; a 400 saying what is wrong with it.
async fn webhook_url(gateway: &Gateway, form: &Form) -> Result<Option<String>, ApiError> {
    let Some(url) = form
        .text(WEBHOOK_FIELD)?
        .map(str::trim)
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let config = &gateway.inner.webhooks;
    if config.secret.is_none() {
        return Err(ApiError::bad_request(
            "webhook_url: this gateway sends no webhooks (it has no webhook secret).",
        ));
    }
    webhook::target(url, config.allow_private)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(Some(url.to_owned()))
}

/// Writes `doc` to SQLite, off the async threads.
async fn persist(gateway: &Gateway, doc: JobDocument) -> anyhow::Result<()> {
    let store = gateway.inner.jobs.store.clone();
    tokio::task::spawn_blocking(move || store.put(&doc)).await?
}

/// [`persist`], for changes after the 202: a failure is logged, the job goes on.
async fn persist_logged(gateway: &Gateway, doc: JobDocument) {
    if let Err(e) = persist(gateway, doc).await {
        tracing::error!(error = %format!("{e:#}"), "cannot store a job's state");
    }
}

/// Runs the job until it ends or is cancelled, then records how it ended.
/// `admission`, the client key's place, is held until the job has ended.
async fn run(gateway: Gateway, live: Arc<Live>, job: Routed, admission: Option<Admission>) {
    let mut cancel = live.cancel.subscribe();
    let outcome = tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => Outcome::Cancelled,
        outcome = drive(&gateway, &live, &job) => outcome,
    };
    finish(&gateway, &live, &job, outcome).await;
    drop(admission);
}

/// Tries the orchestrators in order, as the synchronous path does, over their event streams.
async fn drive(gateway: &Gateway, live: &Live, job: &Routed) -> Outcome {
    let candidates = match job::choose(gateway, &job.model_id, job.pixels) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(JobError::from(&e)),
    };
    let config = &gateway.inner.config;
    let deadline = Instant::now() + Duration::from_secs_f64(config.total_timeout_secs);
    let per_attempt = Duration::from_secs_f64(config.attempt_timeout_secs);
    let mut errors = Vec::new();
    for candidate in candidates.into_iter().take(config.max_attempts as usize) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            errors.push("out of time".to_owned());
            break;
        }
        live.update(
            |doc| {
                doc.attempts += 1;
                doc.orchestrator = Some(candidate.orchestrator.clone());
                doc.price_per_pixel = Some(candidate.offer.price.price_per_pixel);
                doc.currency = Some(candidate.offer.price.currency.to_string());
                // A retry starts over.
                doc.images.clear();
                doc.progress = None;
            },
            |_| None,
        );
        match attempt(gateway, live, &candidate, job, per_attempt.min(left)).await {
            Streamed::Done { secs } => {
                gateway.inner.registry.record_latency(
                    &candidate.url,
                    &job.model_id,
                    secs / (job.pixels.max(1) * job.steps) as f64,
                );
                return Outcome::Succeeded;
            }
            Streamed::Refused(e) => return Outcome::Failed(e),
            Streamed::Failed(why) => {
                tracing::warn!(orchestrator = %candidate.url, error = %why, "async job failed; trying the next orchestrator");
                errors.push(format!("{}: {why}", candidate.url));
            }
        }
    }
    Outcome::Failed(JobError::from(&ApiError::unavailable(format!(
        "no orchestrator could do the job: {}",
        errors.join("; ")
    ))))
}

/// Whether a runner's refusal is the request's fault (any other runner would refuse it).
fn refused(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// One try at one orchestrator: the job posted with `Accept: text/event-stream`, its events
/// followed until the answer. A runner that answers plain JSON (ai-runner itself) is
/// taken too, without progress.
async fn attempt(
    gateway: &Gateway,
    live: &Live,
    candidate: &Candidate,
    job: &Routed,
    timeout: Duration,
) -> Streamed {
    let started = Instant::now();
    let request = gateway
        .inner
        .client
        .post(format!("{}/image-to-image", candidate.url))
        .header(header::ACCEPT, EVENT_STREAM)
        .timeout(timeout)
        .multipart(job::to_reqwest(&job.form));
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) if e.is_timeout() => return Streamed::Failed(format!("no answer in {timeout:?}")),
        Err(e) => return Streamed::Failed(format!("{e}")),
    };
    let status = answer.status();
    let is_stream = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(EVENT_STREAM));
    if !status.is_success() || !is_stream {
        let body = match answer.bytes().await {
            Ok(b) => b,
            Err(e) => return Streamed::Failed(format!("reading the answer: {e}")),
        };
        if status.is_success() {
            let answer: ImageResponse = match serde_json::from_slice(&body) {
                Ok(a) => a,
                Err(e) => return Streamed::Failed(format!("not a runner answer: {e}")),
            };
            return match store_answer(gateway, live, &answer).await {
                Ok(()) => Streamed::Done {
                    secs: started.elapsed().as_secs_f64(),
                },
                Err(why) => Streamed::Failed(why),
            };
        }
        let msg =
            job::detail_msg(&body).unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        if refused(status.as_u16()) {
            return Streamed::Refused(JobError {
                status: status.as_u16(),
                msg,
            });
        }
        return Streamed::Failed(format!("{status}: {msg}"));
    }
    let mut events = answer.bytes_stream().eventsource();
    while let Some(next) = events.next().await {
        let e = match next {
            Ok(e) => e,
            Err(e) => return Streamed::Failed(format!("reading the runner's events: {e}")),
        };
        let handled = match e.event.as_str() {
            event::PROGRESS => match parse::<Progress>(&e.data) {
                Ok(p) => {
                    on_progress(gateway, live, p).await;
                    Ok(())
                }
                Err(why) => Err(why),
            },
            event::PREVIEW => parse(&e.data).map(|p: Preview| {
                live.update(
                    |_| {},
                    |doc| doc.previews.then(|| Sent::new(event::PREVIEW, &p)),
                );
            }),
            event::IMAGE => match parse::<FinishedImage>(&e.data) {
                Ok(image) => on_image(gateway, live, image).await,
                Err(why) => Err(why),
            },
            event::DONE => {
                return match parse::<ImageResponse>(&e.data) {
                    Ok(answer) => match store_answer(gateway, live, &answer).await {
                        Ok(()) => Streamed::Done {
                            secs: started.elapsed().as_secs_f64(),
                        },
                        Err(why) => Streamed::Failed(why),
                    },
                    Err(why) => Streamed::Failed(why),
                }
            }
            event::ERROR => {
                return match parse::<JobError>(&e.data) {
                    Ok(e) if refused(e.status) => Streamed::Refused(e),
                    Ok(e) => Streamed::Failed(format!("{}: {}", e.status, e.msg)),
                    Err(why) => Streamed::Failed(why),
                }
            }
            // Events of later versions are not ours to understand.
            _ => Ok(()),
        };
        if let Err(why) = handled {
            return Streamed::Failed(why);
        }
    }
    Streamed::Failed("the runner's event stream ended before its answer".into())
}

fn parse<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, String> {
    serde_json::from_str(data).map_err(|e| format!("an unusable event from the runner: {e}"))
}

/// A step done: the job is running (stored as such at its first step), its progress timed
/// from the job's arrival.
async fn on_progress(gateway: &Gateway, live: &Live, p: Progress) {
    let elapsed = live.started.elapsed().as_secs_f64();
    let progress = Progress::at(p.step, p.steps, p.image, p.images, elapsed);
    let mut started = false;
    let doc = live.update(
        |doc| {
            started = doc.status == JobStatus::Queued;
            doc.status = JobStatus::Running;
            doc.progress = Some(progress);
        },
        |doc| doc.progress.as_ref().map(|p| Sent::new(event::PROGRESS, p)),
    );
    if started {
        persist_logged(gateway, doc).await;
    }
}

/// An image finished: stored under its index, listed, announced with its stored URL.
async fn on_image(gateway: &Gateway, live: &Live, image: FinishedImage) -> Result<(), String> {
    let output = job::decode_media(&image.media())?;
    let id = lock(&live.doc).id.clone();
    let media = job::store_one(gateway, &id, image.index as usize, output)
        .await
        .map_err(|e| e.message())?;
    let doc = live.update(
        |doc| place(&mut doc.images, image.index as usize, media.clone()),
        |_| {
            Some(Sent::new(
                event::IMAGE,
                &FinishedImage {
                    index: image.index,
                    url: media.url.clone(),
                    seed: media.seed,
                    nsfw: media.nsfw,
                },
            ))
        },
    );
    persist_logged(gateway, doc).await;
    Ok(())
}

/// Puts `media` at `index` of the list (images finish in order; a gap would be a runner's
/// bug, filled by the answer later).
fn place(images: &mut Vec<Media>, index: usize, media: Media) {
    if index < images.len() {
        images[index] = media;
    } else {
        images.push(media);
    }
}

/// The final answer: any image not yet stored (a runner that sent no `image` events) is
/// stored now; the list becomes the answer's.
async fn store_answer(
    gateway: &Gateway,
    live: &Live,
    answer: &ImageResponse,
) -> Result<(), String> {
    if answer.images.is_empty() {
        return Err("no images".into());
    }
    let (id, stored) = {
        let doc = lock(&live.doc);
        (doc.id.clone(), doc.images.len())
    };
    for (index, m) in answer.images.iter().enumerate().skip(stored) {
        let output = job::decode_media(m)?;
        let media = job::store_one(gateway, &id, index, output)
            .await
            .map_err(|e| e.message())?;
        live.update(|doc| place(&mut doc.images, index, media), |_| None);
    }
    Ok(())
}

/// Records the outcome: the document's final state (stored), the ledger row, the final
/// event; then the job leaves memory and its webhook, if any, is sent.
async fn finish(gateway: &Gateway, live: &Live, job: &Routed, outcome: Outcome) {
    let doc = live.update(
        |doc| {
            doc.finished_at = Some(now_secs());
            let (status, error) = match outcome {
                Outcome::Succeeded => (JobStatus::Succeeded, None),
                Outcome::Failed(e) => (JobStatus::Failed, Some(e)),
                Outcome::Cancelled => (JobStatus::Cancelled, None),
            };
            doc.status = status;
            doc.error = error;
            // Only finished images are charged: all of them, or those before a cancel.
            doc.fee = match status {
                JobStatus::Succeeded | JobStatus::Cancelled => doc
                    .price_per_pixel
                    .map(|p| p * job.pixels_of(doc.images.len() as u64) as f64),
                _ => None,
            };
        },
        final_event,
    );
    tracing::info!(job = %doc.id, status = doc.status.as_str(), images = doc.images.len(), "async job over");
    persist_logged(gateway, doc.clone()).await;
    let ledger = gateway.inner.ledger.clone();
    let record = ledger_record(&doc);
    match tokio::task::spawn_blocking(move || ledger.record(&record)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot write the ledger"),
        Err(e) => tracing::error!(error = %e, "cannot write the ledger"),
    }
    lock(&gateway.inner.jobs.live).remove(&doc.id);
    live.finished.send_replace(Some(doc.clone()));
    send_webhooks(gateway, vec![doc]);
}

/// Sends the webhooks of `docs` (finished jobs) in the background.
pub(crate) fn send_webhooks(gateway: &Gateway, docs: Vec<JobDocument>) {
    for doc in docs {
        if let Some(hook) = &doc.webhook {
            let url = hook.url.clone();
            tokio::spawn(send_webhook(gateway.clone(), doc, url));
        }
    }
}

/// Delivers the final document to the job's webhook and records how that went.
async fn send_webhook(gateway: Gateway, mut doc: JobDocument, url: String) {
    let body = serde_json::to_vec(&doc).unwrap_or_default();
    let delivery = webhook::deliver(&gateway.inner.webhooks, &url, body).await;
    doc.webhook = Some(Webhook {
        url,
        status: delivery.status,
        attempts: delivery.attempts,
        error: delivery.error,
    });
    persist_logged(&gateway, doc).await;
}

/// `GET /jobs/<id>` of an async job: its document, `None` for ids of no async job.
pub(crate) async fn document(gateway: &Gateway, id: &str) -> anyhow::Result<Option<JobDocument>> {
    if let Some(live) = gateway.inner.jobs.live(id) {
        return Ok(Some(lock(&live.doc).clone()));
    }
    let store = gateway.inner.jobs.store.clone();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || store.get(&id)).await?
}

/// `POST /jobs/<id>/cancel` and `DELETE /jobs/<id>`: stops a queued or running job and
/// answers its final document; a finished job is a 409 naming its status.
pub(crate) async fn cancel(gateway: &Gateway, id: &str) -> Response {
    let Some(live) = gateway.inner.jobs.live(id) else {
        return match document(gateway, id).await {
            Ok(Some(doc)) => already(&doc),
            Ok(None) => no_such_job(),
            Err(e) => ApiError::internal("cannot read the job", format!("{e:#}")).into_response(),
        };
    };
    let mut finished = live.finished.subscribe();
    live.cancel.send_replace(true);
    let doc = match finished.wait_for(Option::is_some).await {
        Ok(doc) => doc.clone(),
        Err(_) => None,
    };
    match doc {
        Some(doc) if doc.status == JobStatus::Cancelled => Json(doc).into_response(),
        // It ended another way before the cancel reached it.
        Some(doc) => already(&doc),
        None => ApiError::internal("the job vanished", id).into_response(),
    }
}

fn already(doc: &JobDocument) -> Response {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "job {} is already {}; only queued or running jobs can be cancelled.",
            doc.id,
            doc.status.as_str()
        ),
    )
    .into_response()
}

pub(crate) fn no_such_job() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "no such job").into_response()
}

/// `GET /jobs/<id>/events`: the job's current state, then its events as they come, until
/// its final event.
pub(crate) async fn events(gateway: &Gateway, id: &str) -> Response {
    let (first, live) = match gateway.inner.jobs.live(id) {
        Some(live) => {
            let (first, receiver) = live.subscribe();
            (first, Some((live, receiver)))
        }
        None => match document(gateway, id).await {
            Ok(Some(doc)) => (final_event(&doc).into_iter().collect(), None),
            Ok(None) => return no_such_job(),
            Err(e) => {
                return ApiError::internal("cannot read the job", format!("{e:#}")).into_response()
            }
        },
    };
    let ended = first.iter().any(Sent::is_final);
    let first = futures::stream::iter(first);
    let rest = futures::stream::unfold(live.filter(|_| !ended), |state| async move {
        let (live, mut receiver) = state?;
        match receiver.recv().await {
            Ok(sent) => {
                let next = (!sent.is_final()).then_some((live, receiver));
                Some((vec![sent], next))
            }
            // Fell behind: the current state again, then on.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (again, receiver) = live.subscribe();
                let next = (!again.iter().any(Sent::is_final)).then_some((live, receiver));
                Some((again, next))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .flat_map(futures::stream::iter);
    let stream = first.chain(rest).map(|sent| {
        Ok::<_, std::convert::Infallible>(Event::default().event(sent.name).data(sent.data))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
