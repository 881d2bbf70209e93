//! Error responses in ai-runner's (FastAPI's) shapes, which existing clients parse:
//! `{"detail":{"msg":"..."}}` for everything the handler decides, and FastAPI's validation
//! list `{"detail":[{"type","loc","msg"}]}` (status 422) for fields that are missing or of
//! the wrong type.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

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

    fn to_json(&self) -> Value {
        let mut v = json!({"type": self.kind, "loc": ["body", self.field], "msg": self.msg});
        if let Some(input) = &self.input {
            v["input"] = json!(input);
        }
        v
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Msg { status, msg } => {
                (status, Json(json!({"detail": {"msg": msg}}))).into_response()
            }
            Self::Validation(errors) => {
                let detail: Vec<Value> = errors.iter().map(FieldError::to_json).collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({ "detail": detail })),
                )
                    .into_response()
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                Json(json!({"detail": {"msg": "Invalid bearer token."}})),
            )
                .into_response(),
        }
    }
}
