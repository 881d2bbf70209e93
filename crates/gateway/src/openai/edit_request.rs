//! OpenAI's `POST /v1/images/edits` form, translated into the gateway's own image-to-image
//! form (ai-runner's field names), which then runs through the same job path as
//! `POST /image-to-image`. Every field OpenAI's API has is either honoured, accepted where
//! its value changes nothing tessera does (`background=opaque`, `quality=auto`, ...), or
//! refused with a 400 naming it: a client must never believe it got what tessera did not
//! do. Fields OpenAI does not have pass through under their ai-runner names (`seed`,
//! `negative_prompt`, `num_inference_steps`, ..., what the SDKs send from `extra_body`).

use tessera_api::form::Part;
use tessera_api::Form;

use super::error::{OpenAiError, RENAMED};
use crate::job;

/// The form fields OpenAI's SDKs send an image under: one file is `image`, a list of them
/// `image[]` (the `brackets` array format of the Python SDK's multipart encoder).
const IMAGE_FIELDS: [&str; 2] = ["image", "image[]"];

/// tessera's own image-to-image fields, taken as they are from clients that send extra
/// fields. (`prompt` and `image` are OpenAI's too; `model_id`, `num_images_per_prompt` and
/// `output_quality` have OpenAI names, see [`RENAMED`].)
const PASSED_THROUGH: [&str; 8] = [
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "image_guidance_scale",
    "strength",
    "loras",
    "safety_check",
    "seed",
];

/// OpenAI's fields that tessera honours, or accepts for the values that change nothing it
/// does.
const HONOURED: [&str; 12] = [
    "prompt",
    "model",
    "n",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "quality",
    "stream",
    "size",
    "user",
    "safety_identifier",
];

/// OpenAI fields no value of which tessera can honour, and why.
const UNSUPPORTED: [(&str, &str); 7] = [
    (
        "mask",
        "tessera edits the whole image; masks (inpainting) are not supported",
    ),
    ("markup", "markup overlays are not supported"),
    (
        "input_fidelity",
        "input fidelity is not a setting of tessera's models; use image_guidance_scale or strength",
    ),
    (
        "partial_images",
        "streaming partial images is not supported",
    ),
    ("complexity", "tessera's models have no planning complexity"),
    ("frame_count", "GIF output is not supported"),
    ("frame_duration_ms", "GIF output is not supported"),
];

/// How the images come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFormat {
    /// The stored result's URL, as the gateway serves it at `/stream/...`.
    Url,
    /// The image itself, base64.
    B64Json,
}

/// An OpenAI edit request, translated.
#[derive(Debug)]
pub(crate) struct EditRequest {
    /// The image-to-image form to run, in ai-runner's names.
    pub form: Form,
    pub response_format: ResponseFormat,
}

/// Translates OpenAI's form. `max_side` bounds the image header read when `size` is
/// checked against the input's size.
pub(crate) fn translate(openai: Form, max_side: u32) -> Result<EditRequest, OpenAiError> {
    let mut form = Form::default();
    let mut loras = Vec::new();
    let image_parts: Vec<_> = openai
        .parts
        .iter()
        .filter(|p| IMAGE_FIELDS.contains(&p.name.as_str()))
        .collect();
    let image = match image_parts.as_slice() {
        [] => return Err(OpenAiError::missing("image")),
        [one] => *one,
        many => {
            return Err(OpenAiError::invalid(
                "image",
                format!(
                    "tessera edits one image per request; this one has {} (send a single \
                     'image' file).",
                    many.len()
                ),
            ))
        }
    };
    let image_data = image.data.clone();
    form.parts.push(Part {
        name: "image".into(),
        ..image.clone()
    });

    let mut response_format = ResponseFormat::B64Json;
    let mut output_format = "png";
    // OpenAI's default compression for jpeg and webp is 100 (tessera's own default is 90).
    let mut quality: i64 = 100;
    let mut seen = Vec::new();
    for part in &openai.parts {
        let name = part.name.as_str();
        if IMAGE_FIELDS.contains(&name) {
            continue;
        }
        // A name sent twice counts once, the last time (as everywhere in tessera's forms).
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        // Refused before it is read: a mask is a file, not text.
        let known = HONOURED.contains(&name) || PASSED_THROUGH.contains(&name);
        if !known && lora_key(name).is_none() {
            return Err(refused(name));
        }
        let value = text(&openai, name)?;
        match name {
            "prompt" => form.set_text("prompt", value),
            "model" => form.set_text("model_id", value.trim()),
            "n" => {
                let n = integer(name, value)?;
                if n < 1 {
                    return Err(OpenAiError::invalid(
                        "n",
                        format!("n must be at least 1, got {n}."),
                    ));
                }
                form.set_text("num_images_per_prompt", &n.to_string());
            }
            "response_format" => {
                response_format = match value.trim() {
                    "" | "b64_json" => ResponseFormat::B64Json,
                    "url" => ResponseFormat::Url,
                    other => {
                        return Err(OpenAiError::invalid(
                            name,
                            format!("response_format must be 'url' or 'b64_json', got '{other}'."),
                        ))
                    }
                }
            }
            "output_format" => {
                output_format = match value.trim() {
                    "" => "png",
                    f @ ("png" | "jpeg" | "webp") => f,
                    other => {
                        return Err(OpenAiError::invalid(
                            name,
                            format!(
                                "output_format must be 'png', 'jpeg' or 'webp', got '{other}'."
                            ),
                        ))
                    }
                }
            }
            "output_compression" => {
                let c = integer(name, value)?;
                if !(0..=100).contains(&c) {
                    return Err(OpenAiError::invalid(
                        name,
                        format!("output_compression must be between 0 and 100, got {c}."),
                    ));
                }
                // Encoders take quality 1 as their lowest, which 0 means too.
                quality = c.max(1);
            }
            "background" => match value.trim() {
                // tessera's images have no alpha channel: they are opaque.
                "" | "auto" | "opaque" => {}
                other => {
                    return Err(OpenAiError::unsupported(
                        name,
                        format!(
                            "background '{other}' is not supported: tessera's images are \
                             opaque (send 'auto' or 'opaque')."
                        ),
                    ))
                }
            },
            "quality" => match value.trim() {
                "" | "auto" => {}
                other => {
                    return Err(OpenAiError::unsupported(
                        name,
                        format!(
                            "quality '{other}' is not supported: send 'auto', and \
                             num_inference_steps for more or fewer denoising steps."
                        ),
                    ))
                }
            },
            "stream" => match value.trim() {
                "" | "false" => {}
                _ => {
                    return Err(OpenAiError::unsupported(
                        name,
                        "stream is not supported on /v1/images/edits: for progress events use \
                         POST /image-to-image with 'Prefer: respond-async'.",
                    ))
                }
            },
            "size" => check_size(value, &image_data, max_side)?,
            // Identify the end user to OpenAI's abuse monitoring; they change no image.
            "user" | "safety_identifier" => {}
            _ if PASSED_THROUGH.contains(&name) => form.set_text(name, value),
            _ => {
                // Known, so a `loras[<adapter>]` field.
                loras.extend(lora_key(name).map(|key| (key, value)));
            }
        }
    }
    if form.get("prompt").is_none() {
        return Err(OpenAiError::missing("prompt"));
    }
    if !loras.is_empty() {
        if form.get("loras").is_some() {
            return Err(OpenAiError::invalid(
                "loras",
                "send loras either as one JSON object or as loras[<adapter>] fields, not both.",
            ));
        }
        form.set_text("loras", &loras_json(&loras)?);
    }
    form.set_text("output_format", output_format);
    form.set_text("output_quality", &quality.to_string());
    Ok(EditRequest {
        form,
        response_format,
    })
}

/// Why a field that is neither honoured nor passed through is refused.
fn refused(name: &str) -> OpenAiError {
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(f, _)| *f == name) {
        return OpenAiError::unsupported(name, format!("{name} is not supported: {why}."));
    }
    if name == "svg" || name.starts_with("svg[") {
        return OpenAiError::unsupported(
            name,
            format!("{name} is not supported: tessera makes no SVG output."),
        );
    }
    if let Some((_, openai)) = RENAMED.iter().find(|(ours, _)| *ours == name) {
        return OpenAiError::invalid(
            name,
            format!("{name} is sent as '{openai}' on /v1/images/edits."),
        );
    }
    OpenAiError::unknown(
        name,
        format!(
            "Unknown parameter: '{name}'. /v1/images/edits takes OpenAI's fields and tessera's \
             {}.",
            PASSED_THROUGH.join(", ")
        ),
    )
}

/// A field's text; not UTF-8 is a 400 naming it.
fn text<'a>(form: &'a Form, name: &str) -> Result<&'a str, OpenAiError> {
    form.text(name)
        .map_err(|_| OpenAiError::invalid(name, format!("{name}: not UTF-8 text")))
        .map(Option::unwrap_or_default)
}

fn integer(name: &str, value: &str) -> Result<i64, OpenAiError> {
    value.trim().parse().map_err(|_| {
        OpenAiError::invalid(name, format!("{name} must be an integer, got '{value}'."))
    })
}

/// `size`: tessera edits at the input's size (rounded down to the model's multiple of 8,
/// as diffusers does), so `auto` or the input's own `WIDTHxHEIGHT`, nothing else.
fn check_size(size: &str, image: &[u8], max_side: u32) -> Result<(), OpenAiError> {
    let size = size.trim();
    if size.is_empty() || size == "auto" {
        return Ok(());
    }
    let (width, height) = job::image_size(image, max_side).map_err(OpenAiError::from_api)?;
    if size == format!("{width}x{height}") {
        return Ok(());
    }
    Err(OpenAiError::unsupported(
        "size",
        format!(
            "size '{size}' is not supported: tessera edits at the input image's size; send \
             'auto' or '{width}x{height}'."
        ),
    ))
}

/// The adapter of a `loras[<adapter>]` field: how OpenAI's SDKs send `loras` given as a
/// dict in `extra_body`.
fn lora_key(name: &str) -> Option<&str> {
    name.strip_prefix("loras[")?
        .strip_suffix(']')
        .filter(|k| !k.is_empty())
}

/// `loras[<adapter>]` fields as the JSON object tessera's `loras` field is, in the order
/// sent (each strength must be a number; the runner checks the rest).
fn loras_json(loras: &[(&str, &str)]) -> Result<String, OpenAiError> {
    let entries = loras
        .iter()
        .map(|(key, value)| {
            let strength: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| {
                    OpenAiError::invalid(
                        "loras",
                        format!("loras[{key}] must be a number, got '{value}'."),
                    )
                })?;
            let key = serde_json::to_string(key).unwrap_or_default();
            Ok(format!("{key}: {}", serde_json::json!(strength)))
        })
        .collect::<Result<Vec<_>, OpenAiError>>()?;
    Ok(format!("{{{}}}", entries.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn part(name: &str, value: &str) -> Part {
        Part {
            name: name.into(),
            file_name: None,
            content_type: None,
            data: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn png(width: u32, height: u32) -> Bytes {
        let img = image::RgbImage::new(width, height);
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        Bytes::from(out.into_inner())
    }

    fn file(name: &str) -> Part {
        Part {
            name: name.into(),
            file_name: Some("in.png".into()),
            content_type: Some("image/png".into()),
            data: png(16, 8),
        }
    }

    fn openai(fields: &[(&str, &str)]) -> Form {
        let mut parts = vec![file("image"), part("prompt", "a hat")];
        parts.extend(fields.iter().map(|(k, v)| part(k, v)));
        Form { parts }
    }

    fn field(form: &Form, name: &str) -> Option<String> {
        form.text(name).unwrap().map(str::to_owned)
    }

    #[test]
    fn openai_fields_become_ai_runner_fields() {
        let edit = translate(
            openai(&[
                ("model", " org/model "),
                ("n", "2"),
                ("response_format", "url"),
                ("output_format", "webp"),
                ("output_compression", "0"),
                ("background", "opaque"),
                ("quality", "auto"),
                ("size", "16x8"),
                ("stream", "false"),
                ("user", "someone"),
                ("seed", "42"),
                ("num_inference_steps", "3"),
                ("loras[a/b]", "1.5"),
                ("loras[c/d]", "0.25"),
            ]),
            4096,
        )
        .unwrap();
        assert_eq!(edit.response_format, ResponseFormat::Url);
        let f = &edit.form;
        assert_eq!(field(f, "model_id").as_deref(), Some("org/model"));
        assert_eq!(field(f, "num_images_per_prompt").as_deref(), Some("2"));
        assert_eq!(field(f, "output_format").as_deref(), Some("webp"));
        assert_eq!(field(f, "output_quality").as_deref(), Some("1"));
        assert_eq!(field(f, "seed").as_deref(), Some("42"));
        assert_eq!(field(f, "num_inference_steps").as_deref(), Some("3"));
        assert_eq!(
            field(f, "loras").as_deref(),
            Some(r#"{"a/b": 1.5, "c/d": 0.25}"#)
        );
        assert_eq!(field(f, "prompt").as_deref(), Some("a hat"));
        assert_eq!(f.get("image").unwrap().data, png(16, 8));
        for gone in ["model", "n", "user", "size", "response_format", "image[]"] {
            assert!(f.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn defaults_are_openai_s() {
        let edit = translate(openai(&[]), 4096).unwrap();
        assert_eq!(edit.response_format, ResponseFormat::B64Json);
        assert_eq!(field(&edit.form, "output_format").as_deref(), Some("png"));
        assert_eq!(field(&edit.form, "output_quality").as_deref(), Some("100"));
        assert!(edit.form.get("model_id").is_none());
        // The Python SDK's name for an image sent in a list.
        let mut form = openai(&[]);
        form.parts[0].name = "image[]".into();
        let edit = translate(form, 4096).unwrap();
        assert_eq!(edit.form.get("image").unwrap().data, png(16, 8));
    }

    #[test]
    fn what_tessera_cannot_honour_is_a_400_naming_the_field() {
        // (field, value, param, code)
        let unsupported = "unsupported_parameter";
        let invalid = "invalid_value";
        let unknown = "unknown_parameter";
        let cases = [
            ("mask", "x", "mask", unsupported),
            ("background", "transparent", "background", unsupported),
            ("quality", "high", "quality", unsupported),
            ("size", "1024x1024", "size", unsupported),
            ("stream", "true", "stream", unsupported),
            ("input_fidelity", "high", "input_fidelity", unsupported),
            ("svg[model]", "x", "svg[model]", unsupported),
            ("output_format", "gif", "output_format", invalid),
            ("response_format", "file", "response_format", invalid),
            ("n", "0", "n", invalid),
            ("n", "two", "n", invalid),
            ("output_compression", "101", "output_compression", invalid),
            (
                "num_images_per_prompt",
                "2",
                "num_images_per_prompt",
                invalid,
            ),
            ("model_id", "a/b", "model_id", invalid),
            ("loras[a/b]", "much", "loras", invalid),
            ("colour", "red", "colour", unknown),
            ("webhook_url", "http://x", "webhook_url", unknown),
        ];
        for (name, value, param, code) in cases {
            let e = translate(openai(&[(name, value)]), 4096).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(e.param.as_deref(), Some(param), "{name}: {}", e.message);
            assert_eq!(e.code, Some(code), "{name}: {}", e.message);
            assert!(e.message.contains(param), "{}", e.message);
        }
        let both = openai(&[("loras", "{}"), ("loras[a/b]", "1")]);
        let e = translate(both, 4096).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("loras"));
        assert!(e.message.contains("not both"), "{}", e.message);
        // A mask is a file: refused by name, not for its bytes.
        let mut masked = openai(&[]);
        masked.parts.push(Part {
            name: "mask".into(),
            ..file("image")
        });
        let e = translate(masked, 4096).unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("mask"), Some("unsupported_parameter"))
        );
        let size = translate(openai(&[("size", "512x512")]), 4096).unwrap_err();
        assert!(
            size.message.contains("'auto' or '16x8'"),
            "{}",
            size.message
        );
    }

    #[test]
    fn one_image_and_a_prompt_are_required() {
        let mut two = openai(&[]);
        two.parts.push(file("image[]"));
        let e = translate(two, 4096).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("image"));
        assert!(e.message.contains("one image per request"), "{}", e.message);
        let e = translate(
            Form {
                parts: vec![part("prompt", "x")],
            },
            4096,
        )
        .unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("image"), Some("missing_required_parameter"))
        );
        let e = translate(
            Form {
                parts: vec![file("image")],
            },
            4096,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }
}
