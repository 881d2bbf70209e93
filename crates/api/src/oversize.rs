//! Delivering the 413 for a body that declares itself too large.
//!
//! A server that answers before reading a large body and then closes the connection resets
//! it under a client that is still writing: the client sees `Broken pipe` or `Connection
//! reset`, not the 413 (reqwest, Python's requests and curl all can, depending on timing). So
//! a request whose `Content-Length` is past the limit has its body read and thrown away first
//! — up to [`DRAIN_CAP_BYTES`] and for at most [`DRAIN_TIMEOUT`], so that nobody can make the
//! server read forever — and the role's own handler then refuses it as usual, from a stand-in
//! body of the same excess length, so the 413 says exactly what it says for any other
//! oversized body.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;

/// The most an oversized body is read to deliver its 413; past it the connection is simply
/// closed after the answer, as before.
pub const DRAIN_CAP_BYTES: u64 = 256 << 20;
/// The longest an oversized body is read for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An axum middleware (`middleware::from_fn(move |r, n| drain_oversized(limit, r, n))`):
/// drains a body whose declared length exceeds `limit` before the handler refuses it.
pub async fn drain_oversized(limit: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limit as u64 && n <= DRAIN_CAP_BYTES) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let mut frames = body.into_data_stream();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(_)) = frames.next().await {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(declared, "gave up draining an oversized body");
    }
    // Past the limit is all the handler's limit needs to refuse it: zeros, from one static
    // chunk, so that a refused request costs no allocation of its size.
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let chunks = (limit + 1).div_ceil(ZEROS.len());
    let stand_in = futures::stream::iter(
        (0..chunks).map(|_| Ok::<_, std::convert::Infallible>(Bytes::from_static(&ZEROS))),
    );
    next.run(Request::from_parts(parts, Body::from_stream(stand_in)))
        .await
}
