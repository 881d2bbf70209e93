//! Jobs people can watch: what a runner streams while it works (`Accept: text/event-stream`
//! on `POST /image-to-image`) and what a gateway says of an async job (`Prefer:
//! respond-async`, `GET /jobs/<id>`, `GET /jobs/<id>/events`, webhooks). One set of types,
//! so that the runner's events are the gateway's events and a client reads both alike.
//!
//! The events, in order: `progress` after every denoising step of every image, `preview`
//! every few steps when the request asked for `previews=true`, `image` as each image is
//! finished, then exactly one of `done` (the answer, as the synchronous request gets it),
//! `error` or (gateway only) `cancelled`. The stream ends after that last event.

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::wire::Media;

/// The `Prefer` preference (RFC 7240) that makes the gateway answer 202 at once.
pub const RESPOND_ASYNC: &str = "respond-async";

/// The media type of the event streams.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Where a webhook's signature is: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-tessera-signature";

/// Event names.
pub mod event {
    pub const PROGRESS: &str = "progress";
    pub const PREVIEW: &str = "preview";
    pub const IMAGE: &str = "image";
    pub const DONE: &str = "done";
    pub const ERROR: &str = "error";
    pub const CANCELLED: &str = "cancelled";
}

/// Whether the request asks for an async answer: `Prefer: respond-async` (one preference
/// among others, in any of the request's `Prefer` headers).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .is_some_and(|token| token.trim().eq_ignore_ascii_case(RESPOND_ASYNC))
        })
}

/// Whether the request asks for an event stream (`Accept: text/event-stream`).
pub fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(EVENT_STREAM))
        })
}

/// Where a job stands in its denoising: after `step` of `steps` steps of image `image`
/// (0-based) of `images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// Denoising steps done of the current image (1 after its first step).
    pub step: u32,
    /// Denoising steps each image takes (after `strength` and forced settings).
    pub steps: u32,
    /// The image being made, from 0.
    pub image: u32,
    /// Images the request makes.
    pub images: u32,
    /// Seconds since the work started (at the runner: since the job left its queue; at the
    /// gateway: since the request arrived).
    pub elapsed_secs: f64,
    /// A linear estimate of the seconds left, from the steps done so far.
    pub remaining_secs: Option<f64>,
}

impl Progress {
    /// The progress after `step` of `steps` of image `image` of `images`, `elapsed_secs`
    /// into the work, with the remaining time extrapolated from the steps done.
    pub fn at(step: u32, steps: u32, image: u32, images: u32, elapsed_secs: f64) -> Self {
        let done = u64::from(image) * u64::from(steps) + u64::from(step);
        let total = u64::from(images) * u64::from(steps);
        let remaining_secs =
            (done > 0).then(|| elapsed_secs / done as f64 * total.saturating_sub(done) as f64);
        Self {
            step,
            steps,
            image,
            images,
            elapsed_secs,
            remaining_secs,
        }
    }
}

/// A cheap look at an image being made: its latents mapped linearly to RGB, as a small JPEG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    pub image: u32,
    pub step: u32,
    /// `data:image/jpeg;base64,...`, at the latents' size (1/8 of the image's sides).
    pub url: String,
}

/// One finished image of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FinishedImage {
    /// Its place in the answer, from 0.
    pub index: u32,
    /// A data URL at the runner; the stored result's URL at the gateway.
    pub url: String,
    pub seed: u64,
    #[serde(default)]
    pub nsfw: bool,
}

impl FinishedImage {
    pub fn media(&self) -> Media {
        Media {
            url: self.url.clone(),
            seed: self.seed,
            nsfw: self.nsfw,
        }
    }
}

/// Why a job failed: the status and message its synchronous request would have got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    pub status: u16,
    pub msg: String,
}

impl From<&crate::ApiError> for JobError {
    fn from(e: &crate::ApiError) -> Self {
        Self {
            status: e.status().as_u16(),
            msg: e.message(),
        }
    }
}

/// Where an async job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted; no runner has started on it yet.
    Queued,
    /// A runner is denoising it.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The routes of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobUrls {
    pub get: String,
    pub events: String,
    pub cancel: String,
}

impl JobUrls {
    /// The routes of job `id`, under `base` (the gateway's public URL, or "" for paths).
    pub fn of(base: &str, id: &str) -> Self {
        let job = format!("{}/jobs/{id}", base.trim_end_matches('/'));
        Self {
            events: format!("{job}/events"),
            cancel: format!("{job}/cancel"),
            get: job,
        }
    }
}

/// How a job's webhook went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// Not sent yet (the job is not finished, or the delivery is being tried).
    Pending,
    Delivered,
    /// Every try within the retry time failed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub url: String,
    pub status: WebhookStatus,
    /// POSTs made so far.
    pub attempts: u32,
    /// Why the last try failed.
    pub error: Option<String>,
}

/// What `GET /jobs/<id>` answers for an async job, and what its webhook receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobDocument {
    /// The job's id, which is also its request id (in the ledger and result URLs).
    pub id: String,
    pub status: JobStatus,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    pub finished_at: Option<f64>,
    /// The latest progress; absent until the first denoising step.
    pub progress: Option<Progress>,
    /// The finished images, as the synchronous answer lists them: all of them once
    /// `succeeded`, those finished before the cancel once `cancelled`.
    pub images: Vec<Media>,
    pub error: Option<JobError>,
    pub urls: JobUrls,
    /// Whether the request asked for `preview` events.
    #[serde(default)]
    pub previews: bool,
    pub webhook: Option<Webhook>,
    // The ledger's fields, as the job goes.
    pub model_id: String,
    /// The orchestrator that took the job last.
    pub orchestrator: Option<String>,
    /// Orchestrators tried.
    pub attempts: u32,
    /// width × height × images of the input.
    pub input_pixels: u64,
    pub price_per_pixel: Option<f64>,
    pub currency: Option<String>,
    /// What the finished images cost: the fee of a cancelled job counts only the images
    /// that were finished.
    pub fee: Option<f64>,
}

/// The `done` event's answer and the synchronous answer alike.
pub type Answer = crate::wire::ImageResponse;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn preferences_and_accept_headers_are_read_as_lists() {
        let mut h = HeaderMap::new();
        assert!(!prefers_async(&h));
        h.insert("prefer", HeaderValue::from_static("wait=10, Respond-Async"));
        assert!(prefers_async(&h));
        h.insert("prefer", HeaderValue::from_static("respond-asynchronously"));
        assert!(!prefers_async(&h));
        h.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream;q=0.9"),
        );
        assert!(accepts_event_stream(&h));
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(!accepts_event_stream(&h));
    }

    #[test]
    fn the_remaining_time_is_extrapolated_over_all_images() {
        // 3 of 4 steps of the first of 2 images in 3 s: 5 steps left at 1 s each.
        let p = Progress::at(3, 4, 0, 2, 3.0);
        assert_eq!(p.remaining_secs, Some(5.0));
        assert_eq!(Progress::at(0, 4, 0, 1, 0.0).remaining_secs, None);
        let urls = JobUrls::of("https://gw/", "abc");
        assert_eq!(urls.get, "https://gw/jobs/abc");
        assert_eq!(urls.cancel, "https://gw/jobs/abc/cancel");
        assert_eq!(
            serde_json::to_value(JobStatus::Cancelled).unwrap(),
            "cancelled"
        );
    }
}
