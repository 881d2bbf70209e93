//! The `POST /image-to-image` request: the multipart fields typed the way FastAPI types them
//! (422 for a missing or unparsable field), then checked for what FastAPI's ai-runner does
//! not check (ranges, model, LoRAs, sizes) with 400s that name the field and what is allowed.
//! The type is also the request's OpenAPI schema, under ai-runner's name for it.

use axum::http::StatusCode;
use bytes::Bytes;
use utoipa::ToSchema;

use crate::defaults;
use crate::error::{ApiError, FieldError};
use crate::form::Form;
use crate::limits::Limits;
use crate::loras::parse_loras;
use crate::output::OutputFormat;

/// The request as sent, typed but not yet checked against the model or the limits.
#[derive(Debug, ToSchema)]
#[schema(as = Body_genImageToImage)]
pub struct ImageToImage {
    /// Text prompt(s) to guide image generation.
    pub prompt: String,
    /// Uploaded image to modify with the pipeline.
    #[schema(value_type = String, format = Binary)]
    pub image: Bytes,
    /// Hugging Face model ID used for image generation.
    #[schema(default = "", required = false)]
    pub model_id: String,
    /// A LoRA (Low-Rank Adaptation) model and its corresponding weight for image generation.
    /// Example: { "latent-consistency/lcm-lora-sdxl": 1.0, "nerijs/pixel-art-xl": 1.2}.
    #[schema(default = "", required = false)]
    pub loras: String,
    /// Degree of transformation applied to the reference image (0 to 1).
    #[schema(default = json!(defaults::STRENGTH), required = false)]
    pub strength: f64,
    /// Encourages model to generate images closely linked to the text prompt (higher values
    /// may reduce image quality).
    #[schema(default = json!(defaults::GUIDANCE_SCALE), required = false)]
    pub guidance_scale: f64,
    /// Degree to which the generated image is pushed towards the initial image.
    #[schema(default = json!(defaults::IMAGE_GUIDANCE_SCALE), required = false)]
    pub image_guidance_scale: f64,
    /// Text prompt(s) to guide what to exclude from image generation. Ignored if
    /// guidance_scale < 1.
    #[schema(default = "", required = false)]
    pub negative_prompt: String,
    /// Perform a safety check to estimate if generated images could be offensive or harmful.
    #[schema(default = json!(defaults::SAFETY_CHECK), required = false)]
    pub safety_check: bool,
    /// Seed for random number generation.
    #[schema(value_type = u64, required = false)]
    pub seed: Option<i128>,
    /// Number of denoising steps. More steps usually lead to higher quality images but
    /// slower inference. Modulated by strength.
    #[schema(value_type = u32, default = json!(defaults::NUM_INFERENCE_STEPS), required = false)]
    pub num_inference_steps: i128,
    /// Number of images to generate per prompt.
    #[schema(value_type = u32, default = json!(defaults::NUM_IMAGES_PER_PROMPT), required = false)]
    pub num_images_per_prompt: i128,
    /// The file format of the results: png (lossless, ai-runner's only one), jpeg or webp.
    #[schema(schema_with = output_format_schema, required = false)]
    pub output_format: Option<String>,
    /// Quality of jpeg and webp results, 1 (smallest) to 100 (best); png ignores it.
    #[schema(value_type = u32, default = json!(crate::output::DEFAULT_QUALITY), minimum = 1, maximum = 100, required = false)]
    pub output_quality: Option<i128>,
    /// With `Accept: text/event-stream`: also stream `preview` events, a small JPEG of the
    /// image being made every few steps.
    #[schema(default = false, required = false)]
    pub previews: bool,
}

/// A checked request: the undecoded upload and what to make of it.
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    pub image: Bytes,
    pub prompt: String,
    pub negative_prompt: String,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub image_guidance_scale: f64,
    pub strength: f64,
    /// LoRA ids (hub repositories or paths) and strengths, in the order given.
    pub loras: Vec<(String, f64)>,
    pub safety_check: bool,
    /// One per output image: `seed + i`, as ai-runner numbers them.
    pub seeds: Vec<u64>,
    pub output: OutputFormat,
    pub previews: bool,
}

impl ImageToImage {
    /// The typed request, or FastAPI's 422 listing every field that is missing or
    /// unparsable. For a name sent twice the last part counts (as in Starlette's form).
    pub fn from_form(form: &Form) -> Result<Self, ApiError> {
        let mut f = Fields {
            form,
            errors: Vec::new(),
        };
        let request = Self {
            prompt: f.required_text("prompt"),
            image: f.required_file("image"),
            model_id: f.text("model_id").unwrap_or_default(),
            loras: f.text("loras").unwrap_or_default(),
            strength: f.float("strength", defaults::STRENGTH),
            guidance_scale: f.float("guidance_scale", defaults::GUIDANCE_SCALE),
            image_guidance_scale: f.float("image_guidance_scale", defaults::IMAGE_GUIDANCE_SCALE),
            negative_prompt: f.text("negative_prompt").unwrap_or_default(),
            safety_check: f.bool("safety_check", defaults::SAFETY_CHECK),
            seed: f.int("seed"),
            num_inference_steps: f
                .int("num_inference_steps")
                .unwrap_or(defaults::NUM_INFERENCE_STEPS.into()),
            num_images_per_prompt: f
                .int("num_images_per_prompt")
                .unwrap_or(defaults::NUM_IMAGES_PER_PROMPT.into()),
            output_format: f.text("output_format"),
            output_quality: f.int("output_quality"),
            previews: f.bool("previews", false),
        };
        if f.errors.is_empty() {
            Ok(request)
        } else {
            Err(ApiError::Validation(f.errors))
        }
    }

    /// Checks the request against the loaded model and the limits, in ai-runner's order
    /// (model, then LoRAs), and picks a random first seed when none was given.
    pub fn check(self, loaded_model_id: &str, limits: &Limits) -> Result<CheckedRequest, ApiError> {
        if !self.model_id.is_empty() && self.model_id != loaded_model_id {
            return Err(ApiError::bad_request(format!(
                "pipeline configured with {loaded_model_id} but called with {}.",
                self.model_id
            )));
        }
        let loras = parse_loras(&self.loras).map_err(ApiError::bad_request)?;
        if self.image.len() > limits.max_upload_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "image: the upload is {} bytes; the largest accepted is {} bytes.",
                    self.image.len(),
                    limits.max_upload_bytes
                ),
            ));
        }
        let prompt = at_most_chars("prompt", self.prompt, limits.max_prompt_chars)?;
        let negative_prompt = at_most_chars(
            "negative_prompt",
            self.negative_prompt,
            limits.max_prompt_chars,
        )?;
        let steps = in_range(
            "num_inference_steps",
            self.num_inference_steps,
            1,
            i128::from(limits.max_inference_steps),
        )?;
        let images = in_range(
            "num_images_per_prompt",
            self.num_images_per_prompt,
            1,
            i128::from(limits.max_images_per_prompt),
        )?;
        let guidance_scale = in_range("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE)?;
        let image_guidance_scale = in_range(
            "image_guidance_scale",
            self.image_guidance_scale,
            0.0,
            MAX_GUIDANCE,
        )?;
        let strength = in_range("strength", self.strength, 0.0, 1.0)?;
        let output = OutputFormat::from_fields(self.output_format.as_deref(), self.output_quality)?;
        Ok(CheckedRequest {
            output,
            previews: self.previews,
            seeds: seeds(self.seed, images as u64)?,
            image: self.image,
            prompt,
            negative_prompt,
            // In range, so below u32::MAX.
            num_inference_steps: steps as u32,
            guidance_scale,
            image_guidance_scale,
            strength,
            loras,
            safety_check: self.safety_check,
        })
    }
}

/// `output_format` in the OpenAPI document: one of the formats, by name.
fn output_format_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(crate::output::FORMATS))
        .default(Some(serde_json::json!("png")))
        .description(Some(
            "The file format of the results: png (lossless, ai-runner's only one), jpeg or webp.",
        ))
        .build()
}

/// Guidance past this only burns the image; ai-runner checks nothing.
const MAX_GUIDANCE: f64 = 50.0;

/// `text` if it has at most `max` characters, else a 400 naming the field.
fn at_most_chars(field: &str, text: String, max: usize) -> Result<String, ApiError> {
    let count = text.chars().count();
    if count > max {
        return Err(ApiError::bad_request(format!(
            "{field} must be at most {max} characters, got {count}."
        )));
    }
    Ok(text)
}

/// `value` if it lies in `lo..=hi` (NaN and infinities never do), else a 400 naming the field.
fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<T, ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(format!(
            "{field} must be between {lo} and {hi}, got {value}."
        )))
    }
}

/// The seed of each of `count` images: `seed + i`, from a random `seed` below 2^32 when none
/// was given (ai-runner's range). Every seed must fit torch's `manual_seed` (a u64).
fn seeds(seed: Option<i128>, count: u64) -> Result<Vec<u64>, ApiError> {
    let first = match seed {
        None => u64::from(rand::random::<u32>()),
        Some(s) => {
            let max = u64::MAX - (count - 1);
            in_range("seed", s, 0, i128::from(max))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "seed must be between 0 and {max} (so that seed + {} fits in 64 bits), got {s}.",
                        count - 1
                    ))
                })? as u64
        }
    };
    Ok((0..count).map(|i| first + i).collect())
}

/// Form parts being typed, with the FastAPI validation errors met so far.
struct Fields<'a> {
    form: &'a Form,
    errors: Vec<FieldError>,
}

impl Fields<'_> {
    /// A text field; FastAPI treats an empty form value as absent (the default applies, or a
    /// required field is missing).
    fn text(&mut self, name: &str) -> Option<String> {
        let bytes = &self.form.get(name).filter(|p| !p.data.is_empty())?.data;
        match String::from_utf8(bytes.to_vec()) {
            Ok(s) => Some(s),
            Err(_) => {
                self.errors.push(FieldError {
                    kind: "string_unicode",
                    field: name.into(),
                    msg: "Input should be a valid string, unable to parse raw data as a unicode string",
                    input: None,
                });
                None
            }
        }
    }

    fn required_text(&mut self, name: &str) -> String {
        let text = self.text(name);
        if text.is_none() && !self.errors.iter().any(|e| e.field == name) {
            self.errors.push(FieldError::missing(name));
        }
        text.unwrap_or_default()
    }

    /// A file part; an empty upload is still an upload (it fails to decode later, with a 400).
    fn required_file(&mut self, name: &str) -> Bytes {
        match self.form.get(name) {
            Some(part) => part.data.clone(),
            None => {
                self.errors.push(FieldError::missing(name));
                Bytes::new()
            }
        }
    }

    /// Parses an optional field with `parse`, recording pydantic's `kind`/`msg` on failure.
    fn parsed<T>(
        &mut self,
        name: &str,
        kind: &'static str,
        msg: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let text = self.text(name)?;
        let value = parse(text.trim());
        if value.is_none() {
            self.errors.push(FieldError {
                kind,
                field: name.into(),
                msg,
                input: Some(text),
            });
        }
        value
    }

    /// An integer, kept wide so that out-of-range values get the range check's 400.
    fn int(&mut self, name: &str) -> Option<i128> {
        self.parsed(
            name,
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            |s| s.parse().ok(),
        )
    }

    /// A number; `nan` and `inf` parse (as in pydantic) and are refused by the range checks.
    fn float(&mut self, name: &str, default: f64) -> f64 {
        self.parsed(
            name,
            "float_parsing",
            "Input should be a valid number, unable to parse string as a number",
            |s| s.parse().ok(),
        )
        .unwrap_or(default)
    }

    /// A boolean in any of the spellings pydantic accepts.
    fn bool(&mut self, name: &str, default: bool) -> bool {
        self.parsed(
            name,
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
            |s| match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
                "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
                _ => None,
            },
        )
        .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(fields: &[(&str, &str)]) -> Form {
        let mut form = Form::default();
        for (k, v) in fields {
            form.set_text(k, v);
        }
        form
    }

    fn valid(extra: &[(&str, &str)]) -> ImageToImage {
        let mut p = parts(&[
            ("prompt", "a cat"),
            ("image", "png"),
            ("safety_check", "false"),
        ]);
        for (k, v) in extra {
            p.set_text(k, v);
        }
        ImageToImage::from_form(&p).unwrap()
    }

    fn seeds(job: &CheckedRequest) -> Vec<u64> {
        job.seeds.clone()
    }

    fn msg(err: ApiError) -> String {
        match err {
            ApiError::Msg { msg, .. } => msg,
            other => panic!("expected a message error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_ai_runners() {
        let form = valid(&[]);
        assert_eq!(form.num_inference_steps, 100);
        assert_eq!(form.num_images_per_prompt, 1);
        assert_eq!(
            (
                form.strength,
                form.guidance_scale,
                form.image_guidance_scale
            ),
            (0.8, 7.5, 1.5)
        );
        assert_eq!(form.seed, None);
        let job = form.check("m", &Limits::default()).unwrap();
        assert_eq!(job.seeds.len(), 1);
        assert!(job.seeds[0] <= u64::from(u32::MAX));
        // safety_check defaults to true, as in ai-runner.
        let form = ImageToImage::from_form(&parts(&[("prompt", "p"), ("image", "x")])).unwrap();
        assert!(form.safety_check);
    }

    #[test]
    fn empty_values_count_as_absent() {
        let form = valid(&[("seed", ""), ("num_inference_steps", "")]);
        assert_eq!((form.seed, form.num_inference_steps), (None, 100));
        let err = ImageToImage::from_form(&parts(&[("prompt", ""), ("image", "x")])).unwrap_err();
        assert!(matches!(err, ApiError::Validation(e) if e == vec![FieldError::missing("prompt")]));
    }

    #[test]
    fn unparsable_fields_are_all_reported() {
        let err = ImageToImage::from_form(&parts(&[
            ("num_inference_steps", "ten"),
            ("guidance_scale", "x"),
            ("safety_check", "maybe"),
        ]))
        .unwrap_err();
        let ApiError::Validation(errors) = err else {
            panic!("expected a 422");
        };
        let kinds: Vec<(&str, &str)> = errors.iter().map(|e| (e.kind, e.field.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("missing", "prompt"),
                ("missing", "image"),
                ("float_parsing", "guidance_scale"),
                ("bool_parsing", "safety_check"),
                ("int_parsing", "num_inference_steps"),
            ]
        );
        assert_eq!(errors[2].input.as_deref(), Some("x"));
    }

    #[test]
    fn ranges_are_checked_with_the_field_named() {
        for (field, value) in [
            ("num_inference_steps", "0"),
            ("num_inference_steps", "501"),
            ("num_images_per_prompt", "11"),
            ("guidance_scale", "nan"),
            ("image_guidance_scale", "-1"),
            ("strength", "inf"),
            ("seed", "-1"),
        ] {
            let m = msg(valid(&[(field, value)])
                .check("m", &Limits::default())
                .unwrap_err());
            assert!(
                m.starts_with(&format!("{field} must be between")),
                "{field}={value}: {m}"
            );
        }
    }

    #[test]
    fn limits_are_configurable_and_prompts_bounded() {
        let limits = Limits {
            max_images_per_prompt: 2,
            max_prompt_chars: 5,
            ..Limits::default()
        };
        let m = msg(valid(&[("num_images_per_prompt", "3")])
            .check("m", &limits)
            .unwrap_err());
        assert_eq!(m, "num_images_per_prompt must be between 1 and 2, got 3.");
        let m = msg(valid(&[("prompt", "ééééé!")])
            .check("m", &limits)
            .unwrap_err());
        assert_eq!(m, "prompt must be at most 5 characters, got 6.");
        let tiny_upload = Limits {
            max_upload_bytes: 2,
            ..limits
        };
        let err = valid(&[]).check("m", &tiny_upload).unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::Msg {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn seeds_count_up_and_must_fit_64_bits() {
        let job = valid(&[("seed", "7"), ("num_images_per_prompt", "3")])
            .check("m", &Limits::default())
            .unwrap();
        assert_eq!(seeds(&job), [7, 8, 9]);
        let top = (u64::MAX - 1).to_string();
        let job = valid(&[("seed", &top), ("num_images_per_prompt", "2")])
            .check("m", &Limits::default())
            .unwrap();
        assert_eq!(seeds(&job), [u64::MAX - 1, u64::MAX]);
        let m = msg(valid(&[("seed", &top), ("num_images_per_prompt", "3")])
            .check("m", &Limits::default())
            .unwrap_err());
        assert!(m.contains("64 bits"), "{m}");
    }

    #[test]
    fn models_and_loras_are_checked_with_reasons() {
        let m = msg(valid(&[("model_id", "other/model")])
            .check("org/model", &Limits::default())
            .unwrap_err());
        assert_eq!(
            m,
            "pipeline configured with org/model but called with other/model."
        );
        assert!(valid(&[("model_id", "org/model"), ("loras", "{}")])
            .check("org/model", &Limits::default())
            .is_ok());
        let job = valid(&[("loras", r#"{"a/b": 1.0, "c/d": "0.5"}"#)])
            .check("m", &Limits::default())
            .unwrap();
        let want = vec![("a/b".to_string(), 1.0), ("c/d".to_string(), 0.5)];
        assert_eq!(job.loras, want);
        let m = msg(valid(&[("loras", r#"{"a/b": -1}"#)])
            .check("m", &Limits::default())
            .unwrap_err());
        assert_eq!(
            m,
            "All strengths must be numbers greater than or equal to 0.0."
        );
        let m = msg(valid(&[("loras", "{oops")])
            .check("m", &Limits::default())
            .unwrap_err());
        assert_eq!(m, "Unable to parse '{oops' as JSON.");
        let job = valid(&[("safety_check", "TRUE")])
            .check("m", &Limits::default())
            .unwrap();
        assert!(job.safety_check);
    }

    #[test]
    fn output_formats_and_previews_are_read_and_checked() {
        let job = valid(&[]).check("m", &Limits::default()).unwrap();
        assert_eq!(job.output, OutputFormat::default());
        assert!(!job.previews);
        let job = valid(&[
            ("output_format", "jpeg"),
            ("output_quality", "55"),
            ("previews", "true"),
        ])
        .check("m", &Limits::default())
        .unwrap();
        assert_eq!(job.output.format, crate::ImageFormat::Jpeg);
        assert_eq!(job.output.quality, 55);
        assert!(job.previews);
        let m = msg(valid(&[("output_format", "tiff")])
            .check("m", &Limits::default())
            .unwrap_err());
        assert_eq!(
            m,
            "output_format must be one of png, jpeg, webp, got 'tiff'."
        );
        let m = msg(valid(&[("output_quality", "0")])
            .check("m", &Limits::default())
            .unwrap_err());
        assert_eq!(m, "output_quality must be between 1 and 100, got 0.");
    }
}
