//! Error responses in ai-runner's (FastAPI's) shapes, which existing clients parse:
//! `{"detail":{"msg":"..."}}` for everything a handler decides, and FastAPI's validation
//! list `{"detail":[{"type","loc","msg"}]}` (status 422) for fields that are missing or of
//! the wrong type. Every role answers with these, so one client handles them all.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::wire::{HTTPValidationError, ValidationError};

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

    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, msg)
    }

    /// FastAPI's 422 for one required form field that was not sent.
    pub fn missing(field: &str) -> Self {
        Self::Validation(vec![FieldError::missing(field)])
    }

    /// ai-runner's generic 500: the cause goes to the log, not to the client.
    pub fn pipeline() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Image-to-image pipeline error.",
        )
    }

    /// A failure on this side, in `what`'s words; the cause goes to the log only.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{what}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, what)
    }

    /// A body that could not be read. Past `role`'s size limit that is a 413 saying so.
    pub fn body_rejected(rejection: BytesRejection, role: &str) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                status,
                format!("The request body is larger than the {role} accepts."),
            );
        }
        Self::new(status, rejection.body_text())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Msg { status, .. } => *status,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The error in one line, for ledgers and logs.
    pub fn message(&self) -> String {
        match self {
            Self::Msg { msg, .. } => msg.clone(),
            Self::Validation(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.msg))
                .collect::<Vec<_>>()
                .join("; "),
            Self::Unauthorized => UNAUTHORIZED.into(),
            Self::Busy { retry_after_secs } => busy_message(*retry_after_secs),
        }
    }
}

const UNAUTHORIZED: &str = "Invalid bearer token.";

fn busy_message(retry_after_secs: u64) -> String {
    format!("The runner is busy: its queue is full. Retry in {retry_after_secs} seconds.")
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
                Json(json!({"detail": {"msg": UNAUTHORIZED}})),
            )
                .into_response(),
            Self::Busy { retry_after_secs } => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))],
                Json(json!({"detail": {"msg": busy_message(retry_after_secs)}})),
            )
                .into_response(),
        }
    }
}
