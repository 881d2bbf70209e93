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
    /// Reads a `multipart/form-data` body, or a JSON object (see [`Form::from_json`]).
    /// Anything else is a 415; a malformed body a 400 naming the problem.
    pub async fn read(headers: &HeaderMap, body: Bytes) -> Result<Self, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if is_json(content_type) {
            return Self::from_json(&body);
        }
        let boundary = multer::parse_boundary(content_type).map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a multipart/form-data or application/json body",
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

    /// The request as a JSON object, as the Live Runner SDK's `call_runner` sends it: each
    /// member becomes the form field of its name (strings as they are, numbers and booleans
    /// as their JSON text, objects such as `loras` as JSON text; `null` is absent), and
    /// `image` is a `data:` URL or bare base64, decoded to the file it holds.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
        let serde_json::Value::Object(members) = value else {
            return Err(ApiError::bad_request("the JSON body must be an object"));
        };
        let mut parts = Vec::with_capacity(members.len());
        for (name, value) in members {
            let (data, content_type) = match (name.as_str(), value) {
                (_, serde_json::Value::Null) => continue,
                ("image", serde_json::Value::String(text)) => {
                    let (content_type, data) = decode_image_text(&text)?;
                    (data, content_type)
                }
                ("image", _) => {
                    return Err(ApiError::bad_request(
                        "image: expected a data URL or base64 text",
                    ))
                }
                (_, serde_json::Value::String(text)) => (Bytes::from(text), None),
                (_, other) => (Bytes::from(other.to_string()), None),
            };
            parts.push(Part {
                file_name: (name == "image").then(|| "image".to_owned()),
                name,
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

/// `application/json`, or another JSON media type (`application/vnd.x+json`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// An image sent as text: `data:<type>;base64,<data>` or bare base64 (standard alphabet,
/// padding optional). The declared type is kept; the runner sniffs the bytes anyway.
fn decode_image_text(text: &str) -> Result<(Option<String>, Bytes), ApiError> {
    use base64::Engine as _;
    let (content_type, b64) = match text.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                ApiError::bad_request("image: a data URL needs a comma before its data")
            })?;
            let media = meta.strip_suffix(";base64").ok_or_else(|| {
                ApiError::bad_request("image: only base64 data URLs are accepted")
            })?;
            (Some(media.to_owned()).filter(|m| !m.is_empty()), data)
        }
        None => (None, text),
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let data = engine
        .decode(b64.trim())
        .map_err(|e| ApiError::bad_request(format!("image: not valid base64: {e}")))?;
    Ok((content_type, Bytes::from(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_members_become_fields_and_the_image_its_bytes() {
        let body = br#"{"prompt": "a hat", "image": "data:image/png;base64,iVBORw==",
                        "seed": 7, "safety_check": false, "loras": {"a/b": 1.0}, "model_id": null}"#;
        let form = Form::from_json(body).unwrap();
        assert_eq!(form.text("prompt").unwrap(), Some("a hat"));
        assert_eq!(form.text("seed").unwrap(), Some("7"));
        assert_eq!(form.text("safety_check").unwrap(), Some("false"));
        assert_eq!(form.text("loras").unwrap(), Some(r#"{"a/b":1.0}"#));
        assert!(form.get("model_id").is_none());
        let image = form.get("image").unwrap();
        assert_eq!(&image.data[..], b"\x89PNG");
        assert_eq!(image.content_type.as_deref(), Some("image/png"));
        let bare = Form::from_json(br#"{"image": "iVBORw"}"#).unwrap();
        assert_eq!(&bare.get("image").unwrap().data[..], b"\x89PNG");
    }

    #[test]
    fn bad_json_is_a_400_naming_the_problem() {
        for (body, needle) in [
            (&b"{"[..], "malformed JSON body"),
            (b"[1]", "must be an object"),
            (br#"{"image": 3}"#, "data URL or base64"),
            (br#"{"image": "data:image/png,abc"}"#, "only base64"),
            (br#"{"image": "***"}"#, "not valid base64"),
        ] {
            let e = Form::from_json(body).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.message().contains(needle), "{}", e.message());
        }
        assert!(is_json("application/json; charset=utf-8"));
        assert!(!is_json("multipart/form-data; boundary=x"));
    }
}
