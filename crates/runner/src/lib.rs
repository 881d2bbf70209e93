//! `tessera-runner`: one warm model behind livepeer ai-runner's HTTP API, so that clients
//! and orchestrators written for ai-runner work unchanged.
//!
//! The model loads on the worker thread that then owns it, while the server already
//! answers: `GET /health` says `LOADING`, then `OK` (or `ERROR`, with the reason in the log
//! and in the 500 that requests get). `POST /image-to-image` takes ai-runner's multipart
//! form, checks what ai-runner does not (ranges, sizes, the image header), and queues the
//! job for the worker (bounded: past it, 503 with `Retry-After`); the answer is data URLs
//! in the asked `output_format` (PNG by default). With `Accept: text/event-stream` the same
//! request streams the job's progress, previews and images as Server-Sent Events and ends
//! with the answer ([`tessera_api::jobs`]); a client that leaves stops the work within a
//! denoising step. `/hardware/*`, `/version`, `/metrics` (Prometheus) and `/openapi.json` complete the
//! API.
//!
//! The model is the engine's `Editor` (forced turbo/Lightning settings, LoRA adapters, the
//! NSFW safety checker); the worker depends only on the [`Model`] trait, which tests
//! implement with fakes.

mod config;
mod decode;
pub mod encode;
mod engine_error;
mod hardware;
mod live;
mod metrics;
mod model;
mod routes;
mod sse;
mod state;
mod worker;

use tokio::net::TcpListener;

pub use config::RunnerConfig;
pub use live::Registration;
pub use model::{Generated, ImageRequest, Model, ModelStep};
pub use routes::{router, ApiDoc};
pub use state::Runner;

/// Serves `runner` on a listener bound by the caller (tests bind port 0), until Ctrl-C or
/// SIGTERM; requests in flight are finished first.
pub async fn serve_on(listener: TcpListener, runner: Runner) -> anyhow::Result<()> {
    tracing::info!(model = runner.model_id(), "runner serving");
    tessera_api::serve::serve(listener, router(runner), "runner").await
}
