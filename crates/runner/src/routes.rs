//! The HTTP routes: `GET /health` and `POST /image-to-image` (each also with a trailing
//! slash, as ai-runner registers them), behind a bearer check for inference.

use std::time::Instant;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tessera_engine::image_io::{self, RgbImage};
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::ImagePipeline;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::form::{ImageToImageForm, Job};
use crate::state::{Health, Runner, SharedPipeline};

/// Largest request body: room for a 4K PNG and the form around it. Past it, 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The runner's HTTP API over `runner`'s model.
pub fn router(runner: Runner) -> Router {
    let inference = Router::new()
        .route("/image-to-image", post(image_to_image))
        .route("/image-to-image/", post(image_to_image))
        .route_layer(middleware::from_fn_with_state(
            runner.clone(),
            require_bearer,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/health/", get(health))
        .merge(inference)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(runner)
}

#[derive(Serialize)]
struct HealthBody {
    status: Health,
}

async fn health(State(runner): State<Runner>) -> Json<HealthBody> {
    Json(HealthBody {
        status: runner.health(),
    })
}

/// FastAPI's 404 body.
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

/// With an auth token configured, inference needs `Authorization: Bearer <token>`. It runs
/// before the body is read, so an unauthenticated client learns nothing about its form.
async fn require_bearer(State(runner): State<Runner>, req: Request, next: Next) -> Response {
    match runner.auth_token() {
        Some(expected) if !bearer_matches(req.headers(), expected) => {
            ApiError::Unauthorized.into_response()
        }
        _ => next.run(req).await,
    }
}

/// The scheme is case-insensitive (RFC 7235); the token is compared in constant time so
/// that response times do not reveal how much of a guess was right.
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && bool::from(token.as_bytes().ct_eq(expected.as_bytes()))
}

#[derive(Serialize)]
struct ImageResponse {
    images: Vec<Media>,
}

#[derive(Serialize)]
struct Media {
    /// `data:image/png;base64,...`
    url: String,
    seed: u64,
    /// Always false here: requests that ask for the (not yet built) check are refused.
    nsfw: bool,
}

async fn image_to_image(
    State(runner): State<Runner>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<ImageResponse>, ApiError> {
    let multipart = multipart.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let job = ImageToImageForm::read(multipart)
        .await?
        .into_job(runner.model_id())?;
    let image = decode(job.image.clone()).await?;
    let pipeline = runner.pipeline()?;
    let images = generate(pipeline, job, image).await?;
    Ok(Json(ImageResponse { images }))
}

/// Decodes the upload off the async threads (a large PNG takes a while); any failure is
/// the client's image, a 400 naming the field.
async fn decode(bytes: axum::body::Bytes) -> Result<RgbImage, ApiError> {
    tokio::task::spawn_blocking(move || image_io::decode(&bytes))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "image decoding task failed");
            ApiError::pipeline()
        })?
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))
}

/// Waits for the model, then runs every image of the job on a blocking thread.
async fn generate(
    pipeline: SharedPipeline,
    job: Job,
    image: RgbImage,
) -> Result<Vec<Media>, ApiError> {
    let pipeline = pipeline.lock_owned().await;
    tokio::task::spawn_blocking(move || run_job(pipeline.as_ref(), &job, &image))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "inference task failed");
            ApiError::pipeline()
        })?
}

/// One pipeline run per image, image `i` from its own generator seeded `seed + i`, so that
/// any one image can be reproduced alone from its seed.
fn run_job(
    pipeline: &dyn ImagePipeline,
    job: &Job,
    image: &RgbImage,
) -> Result<Vec<Media>, ApiError> {
    let started = Instant::now();
    let media = job
        .seeds
        .iter()
        .map(|&seed| {
            let mut noise = TorchCpuNoise::new(seed);
            let out = pipeline
                .run(&job.params, image, &mut noise, &mut |_, _| {})
                .map_err(inference_error)?;
            let png = encode_first_png(&out.images).map_err(|e| {
                tracing::error!(error = %e, "cannot encode the pipeline's output");
                ApiError::pipeline()
            })?;
            Ok(Media {
                url: format!(
                    "data:image/png;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(png)
                ),
                seed,
                nsfw: false,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    tracing::info!(
        images = media.len(),
        steps = job.params.num_inference_steps,
        width = image.width,
        height = image.height,
        secs = started.elapsed().as_secs_f64(),
        "image-to-image done"
    );
    Ok(media)
}

/// The first image of an NHWC [0, 1] batch as PNG bytes.
fn encode_first_png(images: &candle_core::Tensor) -> tessera_engine::Result<Vec<u8>> {
    let rgb = image_io::to_rgb8(images)?
        .into_iter()
        .next()
        .ok_or_else(|| tessera_engine::Error::Model("the pipeline returned no image".into()))?;
    image_io::encode_png(&rgb)
}

/// The client's fault (an image the pipeline cannot take) is a 400 with the reason; running
/// out of device memory gets ai-runner's advice; anything else is logged and a generic 500.
fn inference_error(e: tessera_engine::Error) -> ApiError {
    if let tessera_engine::Error::InvalidInput(msg) = e {
        return ApiError::bad_request(msg);
    }
    let text = e.to_string();
    tracing::error!(error = %text, "image-to-image pipeline error");
    if text.to_ascii_lowercase().contains("out of memory") {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Out of memory error. Try reducing input image resolution.",
        )
    } else {
        ApiError::pipeline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert!(bearer_matches(&auth("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(&auth("bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&auth("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&auth("Bearer s3cret "), "s3cret"));
        assert!(!bearer_matches(&auth("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&auth("s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }
}
