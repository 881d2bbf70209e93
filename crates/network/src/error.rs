//! Error responses in ai-runner's shape (`{"detail":{"msg":"..."}}`), which the gateway's
//! and the orchestrator's clients already parse because the runner speaks it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A request that did not succeed: a status and the message the client reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
    /// A form field that is missing: answered with FastAPI's 422 list, as the runner does.
    missing_field: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
            missing_field: None,
        }
    }

    /// FastAPI's 422 for a required form field that was not sent.
    pub fn missing(field: &'static str) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            msg: format!("{field}: Field required"),
            missing_field: Some(field),
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, msg)
    }

    /// A failure on this side; the detail goes to the log, not to the client.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{what}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.missing_field {
            Some(field) => json!({"detail": [
                {"type": "missing", "loc": ["body", field], "msg": "Field required"}
            ]}),
            None => json!({"detail": {"msg": self.msg}}),
        };
        (self.status, Json(body)).into_response()
    }
}

/// The runner's 401: same body and `WWW-Authenticate` header, so one client handles both.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        Json(json!({"detail": {"msg": "Invalid bearer token."}})),
    )
        .into_response()
}

/// A body that could not be read (past the size limit: 413), in the runner's JSON shape
/// rather than axum's plain text.
pub fn body_rejected(r: axum::extract::rejection::BytesRejection) -> Response {
    ApiError::new(r.status(), r.body_text()).into_response()
}
