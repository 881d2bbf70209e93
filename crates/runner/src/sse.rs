//! `POST /image-to-image` with `Accept: text/event-stream`: the job's events as Server-Sent
//! Events while it runs (`progress`, `preview`, `image`), then its answer as one `done` (or
//! `error`) event, and the end of the stream. The stream owns the job's reply channel, so a
//! client that goes away drops it, and the worker's `keep_going` turns false: the job stops
//! within a denoising step.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tessera_api::jobs::{event, JobError};
use tessera_api::wire::ImageResponse;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::worker::{JobEvent, Reply};

/// Comments sent while a step runs: a long step would otherwise write nothing, and a
/// client that left would only be noticed at the next event.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The event stream of a job watched through `events`, ending with `answer`.
pub(crate) fn respond(
    events: UnboundedReceiver<JobEvent>,
    answer: impl Future<Output = Reply> + Send + 'static,
) -> Response {
    let start = Some((events, Box::pin(answer)));
    let stream = futures::stream::unfold(start, |state| async move {
        let (mut events, answer) = state?;
        let next = match events.recv().await {
            Some(e) => (job_event(&e), Some((events, answer))),
            // The worker drops the sender only after it has answered.
            None => (final_event(answer.await), None),
        };
        Some((Ok::<_, Infallible>(next.0), next.1))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn job_event(e: &JobEvent) -> Event {
    match e {
        JobEvent::Progress(p) => json_event(event::PROGRESS, p),
        JobEvent::Preview(p) => json_event(event::PREVIEW, p),
        JobEvent::Image(i) => json_event(event::IMAGE, i),
    }
}

fn final_event(reply: Reply) -> Event {
    match reply {
        Ok(images) => json_event(event::DONE, &ImageResponse { images }),
        Err(e) => json_event(event::ERROR, &JobError::from(&e)),
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    // Serialising these plain structs cannot fail.
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Event::default().event(name).data(data)
}
