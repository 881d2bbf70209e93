//! OpenAI's images API on the gateway (and so on `tessera serve`), for the clients that
//! already speak it (OpenAI's SDKs, LiteLLM, ...):
//!
//! - `POST /v1/images/edits`: OpenAI's multipart form is translated into the gateway's own
//!   image-to-image form ([`edit_request`]) and run through the same job path as
//!   `POST /image-to-image` (routing, pricing, the ledger, stored results), then answered as
//!   OpenAI's `ImagesResponse`;
//! - `GET /v1/models` and `GET /v1/models/{model}`: the models the gateway's ready runners
//!   serve, as OpenAI lists models;
//! - anything else under `/v1`: OpenAI's 404.
//!
//! Errors are OpenAI's shape ([`error`]); API keys are the gateway's bearer keys.

mod edit_request;
mod error;

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use tessera_api::{ApiError, Form, ImageFormat};

use crate::job::{self, Stored};
use crate::Gateway;
use edit_request::{EditRequest, ResponseFormat};
use error::OpenAiError;

/// OpenAI's `ImagesResponse`, with the fields tessera can fill truthfully.
#[derive(Debug, Serialize)]
struct ImagesResponse {
    /// When the images were made (Unix seconds).
    created: u64,
    data: Vec<ImageData>,
    /// Always `opaque`: tessera's images have no alpha channel.
    background: &'static str,
    /// The format of the images made.
    output_format: &'static str,
    /// `WIDTHxHEIGHT` of the images made (the input's, rounded down to the model's multiple
    /// of 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<String>,
}

/// One image of OpenAI's `data`. `seed` and `nsfw` are tessera's own, as
/// `POST /image-to-image` reports them; OpenAI's clients keep unknown fields or ignore them.
#[derive(Debug, Serialize)]
struct ImageData {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64_json: Option<String>,
    seed: u64,
    nsfw: bool,
}

/// One entry of OpenAI's model list.
#[derive(Debug, Serialize)]
struct Model {
    id: String,
    object: &'static str,
    /// When this gateway first saw the model served (Unix seconds): discovery tells no
    /// model's age.
    created: u64,
    owned_by: String,
}

impl Model {
    fn new(id: String, created: u64) -> Self {
        // A hub id's organisation; a model folder or a bare name is the operator's own.
        let owned_by = match id.split_once('/') {
            Some((org, name)) if !org.is_empty() && !name.is_empty() && !name.contains('/') => {
                org.to_owned()
            }
            _ => "tessera".to_owned(),
        };
        Self {
            id,
            object: "model",
            created,
            owned_by,
        }
    }
}

#[derive(Debug, Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

/// `POST /v1/images/edits`.
pub(crate) async fn edits(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !gateway.authorized(&headers) {
        return OpenAiError::unauthorized().into_response();
    }
    let _admission = match gateway.admit(&headers) {
        Ok(admission) => admission,
        Err(over) => return OpenAiError::over_limit(over).into_response(),
    };
    let edit = match read(&gateway, &headers, body).await {
        Ok(edit) => edit,
        Err(e) => return refuse(&gateway, e).await,
    };
    let EditRequest {
        form,
        response_format,
    } = edit;
    let executed = job::execute(&gateway, Ok(form)).await;
    let mut response = match executed.result {
        Ok(stored) => {
            let origin = origin(&gateway, &headers);
            Json(images_response(stored, response_format, &origin)).into_response()
        }
        Err(refusal) => OpenAiError::from_refusal(refusal).into_response(),
    };
    set_request_id(&mut response, &executed.request_id);
    response
}

/// The request, read, translated and checked as a runner would check it, with the model
/// known to be served.
async fn read(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<EditRequest, OpenAiError> {
    let body = body.map_err(|r| OpenAiError::from_api(ApiError::body_rejected(r, "gateway")))?;
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !multipart {
        return Err(OpenAiError::bad_request(
            "POST /v1/images/edits takes a multipart/form-data body, with the image as a file.",
        ));
    }
    let openai = Form::read(headers, body)
        .await
        .map_err(OpenAiError::from_api)?;
    let config = &gateway.inner.config;
    let mut edit = edit_request::translate(openai, config.limits.max_image_side)?;
    let routed = job::inspect(
        edit.form,
        &config.default_model,
        config.limits.max_image_side,
    )
    .map_err(OpenAiError::from_api)?;
    if !gateway.inner.registry.offered(&routed.model_id) {
        gateway.refresh().await;
        if !gateway.inner.registry.offered(&routed.model_id) {
            return Err(OpenAiError::model_not_found(&routed.model_id));
        }
    }
    job::check_as_runner(gateway, &routed).map_err(OpenAiError::from_api)?;
    edit.form = routed.form;
    Ok(edit)
}

/// Answers a refused request, recording it in the ledger as every request is.
async fn refuse(gateway: &Gateway, e: OpenAiError) -> Response {
    let recorded = job::execute(gateway, Err(ApiError::new(e.status, e.message.clone()))).await;
    let mut response = e.into_response();
    set_request_id(&mut response, &recorded.request_id);
    response
}

fn set_request_id(response: &mut Response, id: &str) {
    if let Ok(id) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", id);
    }
}

fn images_response(
    stored: Vec<Stored>,
    response_format: ResponseFormat,
    origin: &str,
) -> ImagesResponse {
    // What the runner made, which is what was asked for.
    let output_format = match stored.first().map(|s| s.format) {
        Some(ImageFormat::Jpeg) => "jpeg",
        Some(ImageFormat::Webp) => "webp",
        _ => "png",
    };
    let size = stored.first().and_then(|s| {
        let (w, h) = image::ImageReader::new(Cursor::new(&s.bytes))
            .with_guessed_format()
            .ok()?
            .into_dimensions()
            .ok()?;
        Some(format!("{w}x{h}"))
    });
    let data = stored
        .into_iter()
        .map(|s| {
            let (url, b64_json) = match response_format {
                ResponseFormat::Url => (Some(absolute(origin, &s.media.url)), None),
                ResponseFormat::B64Json => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&s.bytes)),
                ),
            };
            ImageData {
                url,
                b64_json,
                seed: s.media.seed,
                nsfw: s.media.nsfw,
            }
        })
        .collect();
    ImagesResponse {
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        data,
        background: "opaque",
        output_format,
        size,
    }
}

/// Where the client reached this gateway, for absolute result URLs: OpenAI's clients fetch
/// `url` as it is, so a path alone will not do. The configured public URL when there is
/// one, else the request's `Host` (https when a proxy says so in `X-Forwarded-Proto`).
fn origin(gateway: &Gateway, headers: &HeaderMap) -> String {
    let base = gateway.base_url();
    if !base.is_empty() {
        return String::new();
    }
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()) && !h.contains('/'))
    else {
        return String::new();
    };
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split(',').next().unwrap_or("").trim() == "https");
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// A stored result's URL, absolute: it already is when a public URL is configured.
fn absolute(origin: &str, url: &str) -> String {
    if url.starts_with('/') {
        format!("{origin}{url}")
    } else {
        url.to_owned()
    }
}

/// `GET /v1/models`: the models some ready runner serves, asking the orchestrators again
/// when none is known.
pub(crate) async fn list_models(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    if !gateway.authorized(&headers) {
        return OpenAiError::unauthorized().into_response();
    }
    let registry = &gateway.inner.registry;
    if registry.models().is_empty() {
        gateway.refresh().await;
    }
    let data = registry
        .models()
        .into_iter()
        .map(|(id, created)| Model::new(id, created))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

/// `GET /v1/models/{model}`; the id may hold slashes (`org/name`).
pub(crate) async fn get_model(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Response {
    if !gateway.authorized(&headers) {
        return OpenAiError::unauthorized().into_response();
    }
    let registry = &gateway.inner.registry;
    if !registry.models().contains_key(&model) {
        gateway.refresh().await;
    }
    match registry.models().remove(&model) {
        Some(created) => Json(Model::new(model, created)).into_response(),
        None => OpenAiError::model_not_found(&model).into_response(),
    }
}

/// Any other path under `/v1`.
pub(crate) async fn unknown(method: Method, uri: Uri) -> Response {
    OpenAiError::unknown_url(method.as_str(), uri.path()).into_response()
}
