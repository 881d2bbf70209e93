//! Error responses in ai-runner's (FastAPI's) shapes, which existing clients parse:
//! `{"detail":{"msg":"..."}}` for everything the handler decides, and FastAPI's validation
//! list `{"detail":[{"type","loc","msg"}]}` (status 422) for fields that are missing or of
//! the wrong type.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::api::{HTTPValidationError, ValidationError};

/// One entry of a FastAPI validation error: which form field, what kind of problem.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// pydantic's error type: `missing`, `int_parsing`, `float_parsing`, `bool_parsing`...
    pub kind: &'static str,
    pub field: String,
    pub msg: &'static str,
    /// The rejected text, as pydantic echoes it (absent for a missing field).
    pub input: Option<String>,
}

impl FieldError {
    pub fn missing(field: &str) -> Self {
        Self {
            kind: "missing",
            field: field.into(),
            msg: "Field required",
            input: None,
        }
    }

    fn to_wire(&self) -> ValidationError {
        ValidationError {
            kind: self.kind.into(),
            loc: vec!["body".into(), self.field.clone()],
            msg: self.msg.into(),
            input: self.input.clone(),
        }
    }
}

/// A request that did not succeed, and the response that says why.
#[derive(Debug)]
pub enum ApiError {
    /// `{"detail":{"msg":...}}` with any status.
    Msg { status: StatusCode, msg: String },
    /// 422 with FastAPI's list of field errors.
    Validation(Vec<FieldError>),
    /// 401 asking for a bearer token.
    Unauthorized,
    /// 503: the queue is full; the client may retry after this many seconds.
    Busy { retry_after_secs: u64 },
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self::Msg {
            status,
            msg: msg.into(),
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    /// ai-runner's generic 500: the cause goes to the log, not to the client.
    pub fn pipeline() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Image-to-image pipeline error.",
        )
    }

    /// An engine failure in the client's terms: its own fault (a bad parameter, a LoRA that
    /// does not exist) is a 400 with the engine's message; running out of device memory gets
    /// ai-runner's advice; anything else is logged and becomes ai-runner's generic 500.
    pub fn from_engine(e: tessera_engine::Error) -> Self {
        use tessera_engine::Error;
        match e {
            Error::InvalidInput(_) | Error::InvalidModelId { .. } | Error::ModelNotFound { .. } => {
                Self::bad_request(e.to_string())
            }
            other => {
                let text = other.to_string();
                tracing::error!(error = %text, "image-to-image pipeline error");
                if is_out_of_memory(&text) {
                    Self::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Out of memory error. Try reducing input image resolution.",
                    )
                } else {
                    Self::pipeline()
                }
            }
        }
    }
}

/// How CUDA (through candle) and the allocator word running out of memory.
fn is_out_of_memory(text: &str) -> bool {
    text.to_ascii_lowercase().contains("out of memory") || text.contains("CUDA_ERROR_OUT_OF_MEMORY")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Msg { status, msg } => {
                (status, Json(json!({"detail": {"msg": msg}}))).into_response()
            }
            Self::Validation(errors) => {
                let detail = errors.iter().map(FieldError::to_wire).collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(HTTPValidationError { detail }),
                )
                    .into_response()
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                Json(json!({"detail": {"msg": "Invalid bearer token."}})),
            )
                .into_response(),
            Self::Busy { retry_after_secs } => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))],
                Json(json!({"detail": {"msg": format!(
                    "The runner is busy: its queue is full. Retry in {retry_after_secs} seconds."
                )}})),
            )
                .into_response(),
        }
    }
}
