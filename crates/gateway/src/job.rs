//! One gateway job, from the client's form to stored results and a ledger row.

use std::io::Cursor;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use tessera_api::output::parse_data_url;
use tessera_api::wire::{ImageResponse, Media};
use tessera_api::{
    defaults, ApiError, CheckedRequest, Form, ImageFormat, ImageToImage, OutputFormat,
};

use crate::ledger::{status, JobRecord};
use crate::select::{rank, Candidate};
use crate::Gateway;

/// What the gateway needs to know about a job before sending it: the form as it goes on,
/// and what pricing and routing read of it.
pub(crate) struct Routed {
    pub form: Form,
    pub model_id: String,
    /// width × height × images of the input.
    pub pixels: u64,
    pub images: u64,
    pub steps: u64,
}

impl Routed {
    /// What `finished` of the job's images are charged for: their share of the pixels.
    pub fn pixels_of(&self, finished: u64) -> u64 {
        self.pixels / self.images.max(1) * finished
    }
}

/// One image of a runner's answer, decoded.
pub(crate) struct Output {
    pub bytes: Bytes,
    pub format: ImageFormat,
    pub seed: u64,
    pub nsfw: bool,
}

/// One stored image of a finished job: where it is served, and its bytes (for answers that
/// carry the image itself, as OpenAI's `b64_json` does).
pub(crate) struct Stored {
    pub media: Media,
    pub bytes: Bytes,
    pub format: ImageFormat,
}

/// Why a job did not succeed, before it is worded for a client.
pub(crate) enum Refusal {
    /// Decided here, or the last of the orchestrators' failures.
    Gateway(ApiError),
    /// Every orchestrator tried was busy; the soonest said to come back after this long.
    Busy {
        error: ApiError,
        retry_after_secs: u64,
    },
    /// The request itself is bad (400, 413, 422): the runner's answer as it came, since any
    /// other orchestrator would say the same.
    Runner {
        status: StatusCode,
        body: Bytes,
        content_type: Option<HeaderValue>,
    },
}

impl IntoResponse for Refusal {
    /// In the runner's (ai-runner's) shapes, as `POST /image-to-image` answers.
    fn into_response(self) -> Response {
        match self {
            Self::Gateway(e) => e.into_response(),
            Self::Busy {
                error,
                retry_after_secs,
            } => {
                let mut response = error.into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            Self::Runner {
                status,
                body,
                content_type,
            } => {
                let mut response = (status, body).into_response();
                if let Some(ct) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                response
            }
        }
    }
}

/// A synchronous job once it is over, and recorded.
pub(crate) struct Executed {
    /// The ledger's id of the job (`GET /jobs/<id>`), also for a refused one.
    pub request_id: String,
    pub result: Result<Vec<Stored>, Refusal>,
}

/// How one orchestrator answered.
enum Attempt {
    /// Results, decoded.
    Done(Vec<Output>),
    /// The request itself is bad: see [`Refusal::Runner`].
    Refused(Refusal, String),
    /// This orchestrator could not do it; another may.
    Failed(String),
    /// This orchestrator is busy (503), and maybe said when to come back.
    Busy(String, Option<u64>),
}

/// `POST /image-to-image`: runs the job and answers with its stored images' URLs. The
/// request id is in `X-Request-Id`, for `GET /jobs/<id>`.
pub(super) async fn handle(gateway: &Gateway, headers: &HeaderMap, body: Bytes) -> Response {
    let executed = execute(gateway, Form::read(headers, body).await).await;
    let mut response = match executed.result {
        Ok(stored) => Json(ImageResponse {
            images: stored.into_iter().map(|s| s.media).collect(),
        })
        .into_response(),
        Err(refusal) => refusal.into_response(),
    };
    if let Ok(id) = HeaderValue::from_str(&executed.request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// Runs a job from its form — or records why its request could not become one — and
/// writes it to the ledger, whatever happens. Every synchronous API of the gateway (its
/// own `POST /image-to-image`, OpenAI's `POST /v1/images/edits`) goes through here, so
/// that routing, pricing, storage and the ledger are the same for all of them.
pub(crate) async fn execute(gateway: &Gateway, form: Result<Form, ApiError>) -> Executed {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let mut record = JobRecord {
        request_id: request_id.clone(),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        model_id: String::new(),
        orchestrator: None,
        input_pixels: 0,
        outputs: 0,
        price_per_pixel: None,
        currency: None,
        fee: None,
        latency_ms: 0,
        attempts: 0,
        status: status::FAILED.into(),
        error: None,
    };
    let result = match run(gateway, &mut record, form).await {
        Ok(images) => {
            record.status = status::OK.into();
            Ok(images)
        }
        Err((status, refusal)) => {
            record.status = status.into();
            Err(refusal)
        }
    };
    record.latency_ms = started.elapsed().as_millis() as u64;
    let ledger = gateway.inner.ledger.clone();
    let written = tokio::task::spawn_blocking(move || ledger.record(&record)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot write the ledger"),
        Err(e) => tracing::error!(error = %e, "cannot write the ledger"),
    }
    Executed { request_id, result }
}

type Failure = (&'static str, Refusal);

fn rejected(record: &mut JobRecord, e: ApiError) -> Failure {
    record.error = Some(e.message());
    let kind = if e.status().is_client_error() {
        status::REJECTED
    } else {
        status::FAILED
    };
    (kind, Refusal::Gateway(e))
}

async fn run(
    gateway: &Gateway,
    record: &mut JobRecord,
    form: Result<Form, ApiError>,
) -> Result<Vec<Stored>, Failure> {
    let form = form.map_err(|e| rejected(record, e))?;
    let config = &gateway.inner.config;
    if form.get(crate::webhook::FIELD).is_some() {
        return Err(rejected(
            record,
            ApiError::bad_request(
                "webhook_url is for async requests: send them with 'Prefer: respond-async'.",
            ),
        ));
    }
    let job = inspect(form, &config.default_model, config.limits.max_image_side)
        .map_err(|e| rejected(record, e))?;
    record.model_id = job.model_id.clone();
    record.input_pixels = job.pixels;
    let candidates = choose(gateway, &job.model_id, job.pixels).map_err(|e| rejected(record, e))?;
    let (candidate, results, secs) = dispatch(gateway, record, &job, candidates).await?;
    let fee = candidate.offer.price.fee(job.pixels);
    record.price_per_pixel = Some(candidate.offer.price.price_per_pixel);
    record.currency = Some(candidate.offer.price.currency.to_string());
    record.fee = Some(fee);
    gateway.inner.registry.record_latency(
        &candidate.url,
        &job.model_id,
        secs / (job.pixels.max(1) * job.steps) as f64,
    );
    let images = store_all(gateway, &record.request_id, results)
        .await
        .map_err(|e| rejected(record, e))?;
    record.outputs = images.len() as u32;
    Ok(images)
}

/// Reads what pricing and routing need: the model (the default when empty), the input
/// image's size from its header (no pixel is decoded here), the image count and steps, and
/// checks the output format (so that a bad one is refused before any runner is asked).
pub(crate) fn inspect(
    mut form: Form,
    default_model: &str,
    max_side: u32,
) -> Result<Routed, ApiError> {
    OutputFormat::from_form(&form)?;
    let model_id = match form.text("model_id")?.map(str::trim) {
        None | Some("") => default_model.to_owned(),
        Some(m) => m.to_owned(),
    };
    form.set_text("model_id", &model_id);
    let image = form.get("image").ok_or(ApiError::missing("image"))?;
    let (width, height) = image_size(&image.data, max_side)?;
    let images = form.int("num_images_per_prompt", 1)?;
    if images < 1 {
        return Err(ApiError::bad_request(format!(
            "num_images_per_prompt must be at least 1, not {images}"
        )));
    }
    let steps = form
        .int("num_inference_steps", defaults::NUM_INFERENCE_STEPS.into())?
        .max(1) as u64;
    // Both sides are at most `max_side` (a u32) and the count is capped, so this cannot
    // overflow; an absurd count is the runner's to refuse with its own limits.
    let pixels = u64::from(width) * u64::from(height) * (images.min(1 << 20) as u64);
    Ok(Routed {
        form,
        model_id,
        pixels,
        images: images.clamp(1, 1 << 20) as u64,
        steps,
    })
}

/// The most images per prompt [`check_as_runner`] lets through (runners refuse what is
/// above their own limit).
const MAX_CHECKED_IMAGES: u32 = 4096;

/// Checks a routed job as any runner would, so that what every runner would refuse is
/// refused here, in the runner's words, before a runner is asked. The counts are left to
/// the runners, whose limits may be above this gateway's (as the synchronous path leaves
/// them), within a bound that keeps this check cheap.
pub(crate) fn check_as_runner(gateway: &Gateway, job: &Routed) -> Result<CheckedRequest, ApiError> {
    let counts_unbounded = tessera_api::Limits {
        max_images_per_prompt: MAX_CHECKED_IMAGES,
        max_inference_steps: u32::MAX,
        ..gateway.inner.config.limits.clone()
    };
    ImageToImage::from_form(&job.form)?.check(&job.model_id, &counts_unbounded)
}

/// The input image's width and height, from its header.
pub(crate) fn image_size(bytes: &[u8], max_side: u32) -> Result<(u32, u32), ApiError> {
    let not_an_image = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!(
            "image: not a readable image (PNG, JPEG, WebP, GIF, BMP or TIFF): {e}"
        ))
    };
    let (width, height) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| not_an_image(&e))?
        .into_dimensions()
        .map_err(|e| not_an_image(&e))?;
    if width == 0 || height == 0 || width > max_side || height > max_side {
        return Err(ApiError::bad_request(format!(
            "image: {width}x{height} is not accepted; each side must be 1 to {max_side}"
        )));
    }
    Ok((width, height))
}

/// The orchestrators to try, best first; 503 naming the reason when there are none.
pub(crate) fn choose(
    gateway: &Gateway,
    model_id: &str,
    pixels: u64,
) -> Result<Vec<Candidate>, ApiError> {
    let registry = &gateway.inner.registry;
    if !registry.offered(model_id) {
        return Err(ApiError::unavailable(format!(
            "no orchestrator offers model '{model_id}'"
        )));
    }
    let max = gateway.max_price(model_id);
    let ranked = rank(registry.candidates(model_id, pixels), max);
    if ranked.is_empty() {
        let max = max.map_or(String::new(), |m| {
            format!(" ({} {} per pixel)", m.price_per_pixel, m.currency)
        });
        return Err(ApiError::unavailable(format!(
            "no orchestrator offers model '{model_id}' within the maximum price{max}"
        )));
    }
    Ok(ranked)
}

/// Tries the candidates in order, within the attempt and time limits, until one does the
/// job. Returns the one that did, its results, and how long it took.
async fn dispatch(
    gateway: &Gateway,
    record: &mut JobRecord,
    job: &Routed,
    candidates: Vec<Candidate>,
) -> Result<(Candidate, Vec<Output>, f64), Failure> {
    let config = &gateway.inner.config;
    let deadline = Instant::now() + Duration::from_secs_f64(config.total_timeout_secs);
    let per_attempt = Duration::from_secs_f64(config.attempt_timeout_secs);
    let mut errors = Vec::new();
    // The soonest any busy orchestrator said to come back; `None` once one failed otherwise.
    let mut retry_after: Option<u64> = None;
    let mut all_busy = true;
    for candidate in candidates.into_iter().take(config.max_attempts as usize) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            errors.push("out of time".to_owned());
            all_busy = false;
            break;
        }
        record.attempts += 1;
        record.orchestrator = Some(candidate.orchestrator.clone());
        let started = Instant::now();
        match attempt(gateway, &candidate.url, job, per_attempt.min(left)).await {
            Attempt::Done(results) => {
                return Ok((candidate, results, started.elapsed().as_secs_f64()));
            }
            Attempt::Refused(response, why) => {
                record.error = Some(why);
                return Err((status::REJECTED, response));
            }
            Attempt::Failed(why) => {
                tracing::warn!(orchestrator = %candidate.url, error = %why, "job failed; trying the next orchestrator");
                errors.push(format!("{}: {why}", candidate.url));
                all_busy = false;
            }
            Attempt::Busy(why, said) => {
                // A runner's queue says when; an orchestrator out of slots does not, and
                // one slot frees within a job of this size at the runner's recent pace.
                let secs = said.unwrap_or_else(|| {
                    let job_secs = candidate
                        .latency_score
                        .map(|per_pixel_step| per_pixel_step * (job.pixels * job.steps) as f64);
                    tessera_api::retry::retry_after_secs(1, job_secs)
                });
                tracing::info!(orchestrator = %candidate.url, retry_after = secs, "busy; trying the next orchestrator");
                errors.push(format!("{}: {why}", candidate.url));
                retry_after = Some(retry_after.map_or(secs, |r| r.min(secs)));
            }
        }
    }
    let e = ApiError::unavailable(format!(
        "no orchestrator could do the job: {}",
        errors.join("; ")
    ));
    record.error = Some(e.message());
    // Every one was busy: the client may come back when the first said it would be free.
    match (all_busy, retry_after) {
        (true, Some(retry_after_secs)) => Err((
            status::FAILED,
            Refusal::Busy {
                error: e,
                retry_after_secs,
            },
        )),
        _ => Err((status::FAILED, Refusal::Gateway(e))),
    }
}

/// Sends the job to one orchestrator and sorts its answer.
async fn attempt(gateway: &Gateway, url: &str, job: &Routed, timeout: Duration) -> Attempt {
    let request = gateway
        .inner
        .client
        .post(format!("{url}/image-to-image"))
        .timeout(timeout)
        .multipart(to_reqwest(&job.form));
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) if e.is_timeout() => return Attempt::Failed(format!("no answer in {timeout:?}")),
        Err(e) => return Attempt::Failed(format!("{e}")),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let content_type = headers.get(header::CONTENT_TYPE).cloned();
    let body = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => return Attempt::Failed(format!("reading the answer: {e}")),
    };
    if status.is_success() {
        return match decode_results(&body) {
            Ok(results) => Attempt::Done(results),
            Err(why) => Attempt::Failed(format!("unusable results: {why}")),
        };
    }
    let msg = detail_msg(&body).unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY
    ) {
        let refusal = Refusal::Runner {
            status,
            body,
            content_type,
        };
        return Attempt::Refused(refusal, msg);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Attempt::Busy(format!("{status}: {msg}"), retry_after_header(&headers));
    }
    Attempt::Failed(format!("{status}: {msg}"))
}

/// `Retry-After` in seconds (the form runners send; an HTTP date is not taken).
fn retry_after_header(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `detail.msg` of an error body in the runner's shape.
pub(crate) fn detail_msg(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["detail"]["msg"].as_str().map(str::to_owned)
}

/// The images of a runner's answer, out of their data URLs.
fn decode_results(body: &[u8]) -> Result<Vec<Output>, String> {
    let images: ImageResponse =
        serde_json::from_slice(body).map_err(|e| format!("not a runner answer: {e}"))?;
    if images.images.is_empty() {
        return Err("no images".into());
    }
    images.images.iter().map(decode_media).collect()
}

/// One image of a runner's answer, out of its data URL.
pub(crate) fn decode_media(m: &Media) -> Result<Output, String> {
    let (format, bytes) = parse_data_url(&m.url)?;
    Ok(Output {
        bytes: Bytes::from(bytes),
        format,
        seed: m.seed,
        nsfw: m.nsfw,
    })
}

/// Stores each image under its own name.
async fn store_all(
    gateway: &Gateway,
    request_id: &str,
    results: Vec<Output>,
) -> Result<Vec<Stored>, ApiError> {
    let mut images = Vec::with_capacity(results.len());
    for (i, result) in results.into_iter().enumerate() {
        let (bytes, format) = (result.bytes.clone(), result.format);
        match store_one(gateway, request_id, i, result).await {
            Ok(media) => images.push(Stored {
                media,
                bytes,
                format,
            }),
            Err(e) => {
                // The client gets an error, not these URLs: the images before it go too.
                gateway.inner.store.remove_request(request_id).await;
                return Err(e);
            }
        }
    }
    Ok(images)
}

/// Stores image `index` of a request as `<request-id>/<index>.<ext>` and answers with its
/// URL (absolute when a public base URL is configured).
pub(crate) async fn store_one(
    gateway: &Gateway,
    request_id: &str,
    index: usize,
    result: Output,
) -> Result<Media, ApiError> {
    let file = format!("{index}.{}", result.format.extension());
    if let Err(e) = gateway
        .inner
        .store
        .put(request_id, &file, result.bytes)
        .await
    {
        if crate::storage::is_storage_full(&e) {
            tracing::error!(error = %format!("{e:#}"), "result storage full");
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the gateway's result storage is full; try again later",
            ));
        }
        return Err(ApiError::internal(
            "cannot store the results",
            format!("{e:#}"),
        ));
    }
    Ok(Media {
        url: format!("{}/stream/{request_id}/{file}", gateway.base_url()),
        seed: result.seed,
        nsfw: result.nsfw,
    })
}

/// The form for reqwest, to send on. Built anew for each try: reqwest consumes it.
pub(crate) fn to_reqwest(form: &Form) -> reqwest::multipart::Form {
    form.parts
        .iter()
        .fold(reqwest::multipart::Form::new(), |out, p| {
            let whole = || reqwest::multipart::Part::stream(reqwest::Body::from(p.data.clone()));
            // A type reqwest cannot parse is dropped; the runner sniffs the image anyway.
            let mut part = match &p.content_type {
                Some(ct) => whole().mime_str(ct).unwrap_or_else(|_| whole()),
                None => whole(),
            };
            if let Some(f) = &p.file_name {
                part = part.file_name(f.clone());
            }
            out.part(p.name.clone(), part)
        })
}

/// Request ids are the gateway's own: 32 lowercase hex digits.
pub(super) fn valid_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Stored images are `<index>.<ext>`, their index in the answer and their format's
/// extension; the format of a valid name.
pub(super) fn image_file_format(file: &str) -> Option<ImageFormat> {
    let (name, ext) = file.split_once('.')?;
    let index_ok = !name.is_empty() && name.len() <= 4 && name.bytes().all(|b| b.is_ascii_digit());
    index_ok.then(|| ImageFormat::from_extension(ext)).flatten()
}
