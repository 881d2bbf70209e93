//! Errors as OpenAI words them: `{"error": {"message", "type", "param", "code"}}`, which
//! OpenAI's SDKs read into their exception types (`BadRequestError` for a 400,
//! `AuthenticationError` for a 401, `NotFoundError` for a 404, ...) with `param` and `code`
//! as attributes. The gateway's own errors ([`ApiError`]) and the runners' refusals (in
//! ai-runner's shapes) are reworded here, keeping their message and status, with `param`
//! naming the field under its OpenAI name where the message names one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tessera_api::ApiError;

use crate::job::Refusal;

/// OpenAI's `type` for a request the client must change.
const INVALID_REQUEST: &str = "invalid_request_error";
/// OpenAI's `type` for a failure on the server's side.
const SERVER_ERROR: &str = "server_error";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, under its OpenAI name.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for a 503 whose runner said when to retry.
    pub retry_after: Option<u64>,
}

impl OpenAiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A 400 for a value of `param` that is not accepted.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
            .with_param(param)
            .with_code("invalid_value")
    }

    /// A 400 for a field OpenAI has and tessera cannot honour.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
            .with_param(param)
            .with_code("unsupported_parameter")
    }

    /// A 400 for a field that neither OpenAI's API nor tessera's image-to-image has.
    pub fn unknown(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
            .with_param(param)
            .with_code("unknown_parameter")
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("Missing required parameter: '{param}'."),
        )
        .with_param(param)
        .with_code("missing_required_parameter")
    }

    /// A 400 for a request that is not what the route takes at all.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The 401 for a missing or wrong API key, when the gateway has keys.
    /// A key over its limits: OpenAI's rate-limit error (the SDK's `RateLimitError`).
    pub fn over_limit(over: crate::quota::OverLimit) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(over.retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, over.message)
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Invalid or missing API key: send one of this gateway's keys as \
             'Authorization: Bearer <key>'.",
        )
        .with_code("invalid_api_key")
    }

    /// A 404 for a model no ready runner serves.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("The model '{model}' is not served here; GET /v1/models lists those that are."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// A 404 for a path under `/v1` that is not one of tessera's.
    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!(
                "Unknown request URL: {method} {path}. tessera serves POST /v1/images/edits, \
                 GET /v1/models and GET /v1/models/{{model}}."
            ),
        )
        .with_code("unknown_url")
    }

    /// The gateway's own error, reworded. FastAPI's 422 for a missing or mistyped field is
    /// a 400 here, as OpenAI answers for those.
    pub fn from_api(e: ApiError) -> Self {
        match e {
            ApiError::Unauthorized => Self::unauthorized(),
            ApiError::Validation(ref errors) => {
                let param = errors.first().map(|f| openai_name(&f.field).to_owned());
                Self {
                    param,
                    ..Self::new(StatusCode::BAD_REQUEST, e.message())
                }
            }
            ApiError::Busy { retry_after_secs } => Self {
                retry_after: Some(retry_after_secs),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, e.message())
            },
            ApiError::Msg { status, msg } => Self {
                param: param_in(&msg).map(str::to_owned),
                ..Self::new(status, msg)
            },
        }
    }

    /// Why a job did not succeed, reworded: a runner's refusal keeps its message (the
    /// `detail.msg` of its body, or its list of field errors).
    pub fn from_refusal(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Gateway(e) => Self::from_api(e),
            Refusal::Busy {
                error,
                retry_after_secs,
            } => Self {
                retry_after: Some(retry_after_secs),
                ..Self::from_api(error)
            },
            Refusal::Runner { status, body, .. } => {
                let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
                    StatusCode::BAD_REQUEST
                } else {
                    status
                };
                let detail = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .map(|v| v["detail"].clone());
                match detail {
                    Some(Value::Array(errors)) => {
                        let field = |e: &Value| e["loc"][1].as_str().unwrap_or("").to_owned();
                        let message = errors
                            .iter()
                            .map(|e| format!("{}: {}", field(e), e["msg"].as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join("; ");
                        Self {
                            param: errors.first().map(|e| openai_name(&field(e)).to_owned()),
                            ..Self::new(status, message)
                        }
                    }
                    Some(Value::Object(d)) if d.get("msg").is_some_and(Value::is_string) => {
                        let msg = d["msg"].as_str().unwrap_or_default().to_owned();
                        Self {
                            param: param_in(&msg).map(str::to_owned),
                            ..Self::new(status, msg)
                        }
                    }
                    _ => Self::new(status, String::from_utf8_lossy(&body).into_owned()),
                }
            }
        }
    }

    /// OpenAI's `type`: the client's fault or the server's.
    fn kind(&self) -> &'static str {
        if self.status.is_server_error() {
            SERVER_ERROR
        } else if self.status == StatusCode::TOO_MANY_REQUESTS {
            // What OpenAI calls a request-rate limit.
            "requests"
        } else {
            INVALID_REQUEST
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The ai-runner fields that OpenAI's request names otherwise, and those names.
pub(crate) const RENAMED: [(&str, &str); 3] = [
    ("model_id", "model"),
    ("num_images_per_prompt", "n"),
    ("output_quality", "output_compression"),
];

/// A request field under the name an OpenAI client sent it by.
fn openai_name(field: &str) -> &str {
    RENAMED
        .iter()
        .find(|(ours, _)| *ours == field)
        .map_or(field, |(_, theirs)| theirs)
}

/// The fields of tessera's image-to-image request that its error messages start with
/// (`strength must be between 0 and 1, got 2.`, `image: not a readable image ...`).
const MESSAGE_FIELDS: [&str; 15] = [
    "prompt",
    "image",
    "model_id",
    "loras",
    "strength",
    "guidance_scale",
    "image_guidance_scale",
    "negative_prompt",
    "safety_check",
    "seed",
    "num_inference_steps",
    "num_images_per_prompt",
    "output_format",
    "output_quality",
    "previews",
];

/// The field an error message is about, under its OpenAI name: the one it starts with
/// (followed by a space or a colon), or `loras` for ai-runner's LoRA messages, which name
/// the adapter instead.
fn param_in(message: &str) -> Option<&'static str> {
    let lead = message.split([' ', ':']).next().unwrap_or_default();
    if let Some(field) = MESSAGE_FIELDS.iter().find(|f| **f == lead) {
        return Some(openai_name(field));
    }
    message.contains("LoRa").then_some("loras")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tessera_api::FieldError;

    #[test]
    fn messages_naming_a_field_give_its_openai_name_as_param() {
        let cases = [
            ("strength must be between 0 and 1, got 2.", Some("strength")),
            (
                "num_images_per_prompt must be between 1 and 4, got 9.",
                Some("n"),
            ),
            (
                "output_quality must be between 1 and 100",
                Some("output_compression"),
            ),
            ("image: not a readable image", Some("image")),
            ("Too many LoRas provided. Maximum is 4.", Some("loras")),
            ("Image-to-image pipeline error.", None),
            ("images are nice", None),
        ];
        for (message, param) in cases {
            assert_eq!(param_in(message), param, "{message}");
        }
    }

    #[test]
    fn gateway_errors_keep_status_and_message_in_openai_shape() {
        let e = OpenAiError::from_api(ApiError::bad_request(
            "seed must be between 0 and 9, got -1.",
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": {"message": "seed must be between 0 and 9, got -1.",
                             "type": "invalid_request_error", "param": "seed", "code": null}})
        );
        let e = OpenAiError::from_api(ApiError::Validation(vec![FieldError::missing(
            "num_images_per_prompt",
        )]));
        assert_eq!(
            (e.status, e.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("n"))
        );
        let e = OpenAiError::from_api(ApiError::unavailable("no orchestrator could do the job"));
        assert_eq!(e.body()["error"]["type"], "server_error");
        let e = OpenAiError::from_api(ApiError::Busy {
            retry_after_secs: 3,
        });
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let response = OpenAiError::from_api(ApiError::Unauthorized).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn runner_refusals_are_reworded_with_their_message() {
        let runner = |status, body: &str| Refusal::Runner {
            status,
            body: Bytes::from(body.to_owned()),
            content_type: None,
        };
        let e = OpenAiError::from_refusal(runner(
            StatusCode::BAD_REQUEST,
            r#"{"detail":{"msg":"LoRa repository 'a/b' not found"}}"#,
        ));
        assert_eq!(e.message, "LoRa repository 'a/b' not found");
        assert_eq!(e.param.as_deref(), Some("loras"));
        let e = OpenAiError::from_refusal(runner(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"detail":[{"loc":["body","num_images_per_prompt"],"msg":"Input should be a valid integer","type":"int_parsing"}]}"#,
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "num_images_per_prompt: Input should be a valid integer"
        );
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = OpenAiError::from_refusal(runner(StatusCode::PAYLOAD_TOO_LARGE, "too big"));
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "too big")
        );
    }
}
