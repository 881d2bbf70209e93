//! Reading a `multipart/form-data` body into its parts, once, for every role: the runner
//! types them into a request ([`crate::request`]); the gateway and the orchestrator read
//! just the fields they route by and send the parts on as they came.

use axum::http::{header, HeaderMap, StatusCode};
use bytes::Bytes;

use crate::ApiError;

/// One part of the form, as sent.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// A multipart form read into memory.
#[derive(Debug, Clone, Default)]
pub struct Form {
    pub parts: Vec<Part>,
}

impl Form {
    /// Reads a `multipart/form-data` body. Anything else, or a malformed body, is a 400
    /// naming the problem.
    pub async fn read(headers: &HeaderMap, body: Bytes) -> Result<Self, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let boundary = multer::parse_boundary(content_type).map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a multipart/form-data body",
            )
        })?;
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        let mut parts = Vec::new();
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
            let Some(field) = field else { break };
            let Some(name) = field.name().map(str::to_owned) else {
                continue;
            };
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(|m| m.to_string());
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
            parts.push(Part {
                name,
                file_name,
                content_type,
                data,
            });
        }
        Ok(Self { parts })
    }

    /// The last part named `name` (a name sent twice counts once, the last time, as in
    /// Starlette's form parser that ai-runner uses).
    pub fn get(&self, name: &str) -> Option<&Part> {
        self.parts.iter().rev().find(|p| p.name == name)
    }

    /// A text field, `None` when absent; text that is not UTF-8 is a 400.
    pub fn text(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.get(name)
            .map(|p| {
                std::str::from_utf8(&p.data)
                    .map_err(|_| ApiError::bad_request(format!("{name}: not UTF-8 text")))
            })
            .transpose()
    }

    /// An integer field, `default` when absent or empty.
    pub fn int(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.text(name)?.map(str::trim) {
            None | Some("") => Ok(default),
            Some(t) => t
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{name}: '{t}' is not an integer"))),
        }
    }

    /// Replaces (or adds) a text field.
    pub fn set_text(&mut self, name: &str, value: &str) {
        self.parts.retain(|p| p.name != name);
        self.parts.push(Part {
            name: name.into(),
            file_name: None,
            content_type: None,
            data: Bytes::copy_from_slice(value.as_bytes()),
        });
    }
}
