//! `tessera-api`: what tessera's roles say to the world, written once. The runner, the
//! orchestrator and the gateway read the same request, answer with the same types and fail
//! with the same bodies: livepeer ai-runner's `POST /image-to-image` form with its defaults
//! ([`defaults`]), FastAPI's error shapes ([`error`]), the limits tessera adds ([`limits`]),
//! bearer auth, and the OpenAPI schemas the runner's document is generated from ([`wire`]).
//!
//! No engine here: the gateway, which runs no model, builds on this crate alone. Without its
//! `http` feature the crate is only the defaults, the limits and the `loras` parser, which
//! the engine and the CLI share.

pub mod defaults;
pub mod limits;
pub mod loras;
mod text;

#[cfg(feature = "http")]
pub mod auth;
#[cfg(feature = "http")]
pub mod error;
#[cfg(feature = "http")]
pub mod form;
#[cfg(feature = "http")]
pub mod jobs;
#[cfg(feature = "http")]
pub mod live;
#[cfg(feature = "http")]
pub mod output;
#[cfg(feature = "http")]
pub mod oversize;
#[cfg(feature = "http")]
pub mod price;
#[cfg(feature = "http")]
pub mod request;
pub mod retry;
#[cfg(feature = "http")]
pub mod serve;
#[cfg(feature = "http")]
pub mod wire;

pub use limits::Limits;
pub use loras::{parse_loras, MAX_LORAS};
pub use text::quoted;

#[cfg(feature = "http")]
pub use error::{ApiError, FieldError};
#[cfg(feature = "http")]
pub use form::Form;
#[cfg(feature = "http")]
pub use output::{ImageFormat, OutputFormat};
#[cfg(feature = "http")]
pub use request::{CheckedRequest, ImageToImage};
