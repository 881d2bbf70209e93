//! The HTTP routes, each also with a trailing slash as ai-runner registers them:
//! `POST /image-to-image` (behind a bearer check), `GET /health`, `/hardware/info`,
//! `/hardware/stats`, `/version`, and this runner's `/metrics` and `/openapi.json`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;
use tessera_api::auth::bearer_accepted;
use tessera_api::jobs::{accepts_event_stream, FinishedImage, JobError, Preview, Progress};
use tessera_api::wire::{
    BearerScheme, HTTPError, HTTPValidationError, HardwareInformation, HardwareStats, HealthCheck,
    ImageResponse, ValidationError, Version,
};
use tessera_api::{ApiError, Form, ImageToImage};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::decode::decode_upload;
use crate::hardware;
use crate::model::ImageRequest;
use crate::sse;
use crate::state::Runner;
use crate::worker::Job;

/// The OpenAPI document of these routes, from the wire types of `tessera_api`.
#[derive(OpenApi)]
#[openapi(
    info(title = "tessera runner", description = "An application to run AI pipelines"),
    paths(image_to_image, health, hardware_info, hardware_stats, version),
    components(schemas(
        ImageToImage,
        HTTPValidationError,
        ValidationError,
        Progress,
        Preview,
        FinishedImage,
        JobError
    )),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// The runner's HTTP API over `runner`'s model.
pub fn router(runner: Runner) -> Router {
    let body_limit = runner.limits().max_body_bytes();
    let inference = Router::new()
        .route("/image-to-image", post(image_to_image))
        .route("/image-to-image/", post(image_to_image))
        // A Live Runner is called at the path its orchestrator's discovery URL ends in: the
        // SDK's `call_runner` posts (JSON) to that URL itself, which lands here.
        .route("/", post(image_to_image))
        .route_layer(middleware::from_fn_with_state(
            runner.clone(),
            require_bearer,
        ))
        .route_layer(middleware::from_fn_with_state(
            runner.clone(),
            count_requests,
        ));
    Router::new()
        .merge(both_slashes("/health", get(health)))
        .merge(both_slashes("/hardware/info", get(hardware_info)))
        .merge(both_slashes("/hardware/stats", get(hardware_stats)))
        .merge(both_slashes("/version", get(version)))
        .route("/openapi.json", get(openapi))
        .merge(inference)
        // What the runner has done is the operator's business: with a token, Prometheus
        // scrapes with it (`authorization` in its scrape config).
        .merge(Router::new().route("/metrics", get(metrics)).route_layer(
            middleware::from_fn_with_state(runner.clone(), require_bearer),
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |r, n| {
            tessera_api::oversize::drain_oversized(body_limit, r, n)
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(runner)
}

/// `path` and `path/`, both served by `handler`.
fn both_slashes(path: &str, handler: MethodRouter<Runner>) -> Router<Runner> {
    Router::new()
        .route(path, handler.clone())
        .route(&format!("{path}/"), handler)
}

#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    summary = "Health",
    responses((status = 200, description = "Successful Response", body = HealthCheck))
)]
pub(crate) async fn health(State(runner): State<Runner>) -> Json<HealthCheck> {
    Json(HealthCheck {
        status: runner.health(),
    })
}

#[utoipa::path(
    get,
    path = "/hardware/info",
    operation_id = "hardware_info",
    summary = "Hardware Info",
    responses((status = 200, description = "Successful Response", body = HardwareInformation))
)]
pub(crate) async fn hardware_info(State(runner): State<Runner>) -> Json<HardwareInformation> {
    let gpu_info = tokio::task::spawn_blocking(hardware::gpu_info)
        .await
        .unwrap_or_default();
    Json(HardwareInformation {
        pipeline: runner.pipeline().into(),
        model_id: runner.model_id().into(),
        gpu_info,
    })
}

#[utoipa::path(
    get,
    path = "/hardware/stats",
    operation_id = "hardware_stats",
    summary = "Hardware Stats",
    responses((status = 200, description = "Successful Response", body = HardwareStats))
)]
pub(crate) async fn hardware_stats(State(runner): State<Runner>) -> Json<HardwareStats> {
    let gpu_stats = tokio::task::spawn_blocking(hardware::gpu_stats)
        .await
        .unwrap_or_default();
    Json(HardwareStats {
        pipeline: runner.pipeline().into(),
        model_id: runner.model_id().into(),
        gpu_stats,
    })
}

#[utoipa::path(
    get,
    path = "/version",
    operation_id = "version",
    summary = "Version",
    responses((status = 200, description = "Successful Response", body = Version))
)]
pub(crate) async fn version(State(runner): State<Runner>) -> Json<Version> {
    Json(Version {
        pipeline: runner.pipeline().into(),
        model_id: runner.model_id().into(),
        version: runner.version().into(),
    })
}

/// Prometheus' text format.
async fn metrics(State(runner): State<Runner>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        runner.metrics().render(),
    )
        .into_response()
}

async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

/// The OpenAPI document, with the JSON form of the request added: the multipart schema with
/// `image` as text (a data URL or base64), since a JSON body cannot carry it as binary.
fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    let mut json_body = schemas["Body_genImageToImage"].clone();
    json_body["properties"]["image"] = json!({
        "type": "string",
        "description": "The image to modify: a data URL (data:image/png;base64,...) or base64.",
    });
    schemas["Body_genImageToImage_json"] = json_body;
    let post = &mut doc["paths"]["/image-to-image"]["post"];
    post["requestBody"]["content"]["application/json"] =
        json!({"schema": {"$ref": "#/components/schemas/Body_genImageToImage_json"}});
    post["responses"]["200"]["content"][tessera_api::jobs::EVENT_STREAM] = json!({
        "schema": {
            "type": "string",
            "description": "With `Accept: text/event-stream`: Server-Sent Events while the job \
                runs. `progress` (Progress) after every denoising step of every image, \
                `preview` (Preview) every few steps when `previews` is true, `image` \
                (FinishedImage) as each image is finished, then `done` (ImageResponse) or \
                `error` (JobError), and the stream ends. Closing the stream stops the job.",
        }
    });
    doc
}

/// FastAPI's 404 body.
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

/// FastAPI's 405 body (`GET /image-to-image`, say).
async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}

/// Counts inference responses by status, the 401s included.
async fn count_requests(State(runner): State<Runner>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    runner.metrics().request(response.status().as_u16());
    response
}

/// With an auth token configured, inference needs `Authorization: Bearer <token>`. It runs
/// before the body is read, so an unauthenticated client learns nothing about its form.
async fn require_bearer(State(runner): State<Runner>, req: Request, next: Next) -> Response {
    match runner.auth_token() {
        Some(expected) if !bearer_accepted(req.headers(), &[expected]) => {
            ApiError::Unauthorized.into_response()
        }
        _ => next.run(req).await,
    }
}

/// Apply image transformations to a provided image.
#[utoipa::path(
    post,
    path = "/image-to-image",
    operation_id = "genImageToImage",
    tag = "generate",
    summary = "Image To Image",
    description = "Apply image transformations to a provided image.",
    // The same fields are taken as a JSON object too (what the Live Runner SDK's `call_runner`
    // sends); `document()` adds that media type.
    request_body(content = ImageToImage, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Successful Response", body = ImageResponse),
        (status = 400, description = "Bad Request", body = HTTPError),
        (status = 401, description = "Unauthorized", body = HTTPError),
        (status = 500, description = "Internal Server Error", body = HTTPError),
        (status = 422, description = "Validation Error", body = HTTPValidationError),
        // Beyond ai-runner's document: what this runner's limits and queue answer.
        (status = 413, description = "Payload Too Large", body = HTTPError),
        (status = 415, description = "Unsupported Media Type", body = HTTPError),
        (status = 503, description = "Service Unavailable", body = HTTPError),
    ),
    security(("HTTPBearer" = []))
)]
pub(crate) async fn image_to_image(
    State(runner): State<Runner>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::body_rejected(r, "runner"))?;
    let form = Form::read(&headers, body).await?;
    let request = ImageToImage::from_form(&form)?.check(runner.model_id(), runner.limits())?;
    let images = ImageRequest::each_image(&request);
    let image = decode(request.image, runner.limits().max_image_side).await?;
    let job = Job {
        image,
        images,
        output: request.output,
        previews: request.previews,
    };
    if accepts_event_stream(&headers) {
        let (events, answer) = runner.watch(job)?;
        return Ok(sse::respond(events, answer));
    }
    let images = runner.run(job).await?;
    Ok(Json(ImageResponse { images }).into_response())
}

/// Decodes the upload off the async threads (a large PNG takes a while); any failure is
/// the client's image, a 400 naming the field.
async fn decode(
    bytes: axum::body::Bytes,
    max_side: u32,
) -> Result<tessera_engine::image_io::RgbImage, ApiError> {
    tokio::task::spawn_blocking(move || decode_upload(&bytes, max_side))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "image decoding task failed");
            ApiError::pipeline()
        })?
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))
}
