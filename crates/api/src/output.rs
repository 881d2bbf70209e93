//! The file format of the images a request gets back: `output_format` (`png`, the default
//! and ai-runner's only one, `jpeg` or `webp`) and `output_quality` (1–100, for the lossy
//! ones). Every role reads them here, so that an unknown format is refused with the same
//! words everywhere, and data URLs and stored results agree on MIME type and extension.

use crate::error::ApiError;

/// The formats a request may ask for, as it spells them.
pub const FORMATS: [&str; 3] = ["png", "jpeg", "webp"];

/// What `output_quality` is when a lossy format is asked for without one.
pub const DEFAULT_QUALITY: u8 = 90;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// Lossless; what ai-runner always answers.
    #[default]
    Png,
    Jpeg,
    /// Lossy WebP at the quality asked for.
    Webp,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// The file extension results are stored and served under.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    /// The format of a stored result's extension.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "png" => Some(Self::Png),
            "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    /// The format of a `data:<mime>;base64,` URL's media type.
    pub fn from_mime(mime: &str) -> Option<Self> {
        [Self::Png, Self::Jpeg, Self::Webp]
            .into_iter()
            .find(|f| f.mime() == mime)
    }

    /// The format as a request names it (case-insensitive; `jpg` is taken for `jpeg`), or a
    /// 400 naming the allowed values.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            _ => Err(ApiError::bad_request(format!(
                "output_format must be one of {}, got '{}'.",
                FORMATS.join(", "),
                text
            ))),
        }
    }
}

/// The format and quality of a request's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    pub format: ImageFormat,
    /// 1–100; used by JPEG and WebP, ignored by PNG.
    pub quality: u8,
}

impl Default for OutputFormat {
    fn default() -> Self {
        Self {
            format: ImageFormat::Png,
            quality: DEFAULT_QUALITY,
        }
    }
}

impl OutputFormat {
    /// Checks `output_format` and `output_quality` as sent (absent: the defaults); a
    /// quality out of 1–100 is a 400 whatever the format, so that a typo never passes.
    pub fn from_fields(format: Option<&str>, quality: Option<i128>) -> Result<Self, ApiError> {
        let format = match format.map(str::trim) {
            None | Some("") => ImageFormat::Png,
            Some(f) => ImageFormat::parse(f)?,
        };
        let quality = match quality {
            None => DEFAULT_QUALITY,
            Some(q) if (1..=100).contains(&q) => q as u8,
            Some(q) => {
                return Err(ApiError::bad_request(format!(
                    "output_quality must be between 1 and 100, got {q}."
                )))
            }
        };
        Ok(Self { format, quality })
    }

    /// Reads both fields from a form (the gateway checks them before routing a job).
    pub fn from_form(form: &crate::Form) -> Result<Self, ApiError> {
        let quality = match form.text("output_quality")?.map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(t.parse::<i128>().map_err(|_| {
                ApiError::bad_request(format!("output_quality: '{t}' is not an integer"))
            })?),
        };
        Self::from_fields(form.text("output_format")?, quality)
    }
}

/// A data URL of `bytes` in `format`.
pub fn data_url(format: ImageFormat, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "data:{};base64,{}",
        format.mime(),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The format and bytes of an image data URL in one of the output formats.
pub fn parse_data_url(url: &str) -> Result<(ImageFormat, Vec<u8>), String> {
    use base64::Engine as _;
    let rest = url.strip_prefix("data:").ok_or("not a data URL")?;
    let (meta, b64) = rest.split_once(',').ok_or("a data URL without data")?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or("a data URL that is not base64")?;
    let format = ImageFormat::from_mime(mime).ok_or_else(|| format!("an image of type {mime}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 in an image: {e}"))?;
    Ok((format, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_with_their_types_and_extensions() {
        let jpeg = OutputFormat::from_fields(Some("JPG"), Some(70)).unwrap();
        assert_eq!((jpeg.format, jpeg.quality), (ImageFormat::Jpeg, 70));
        assert_eq!(
            (jpeg.format.mime(), jpeg.format.extension()),
            ("image/jpeg", "jpg")
        );
        assert_eq!(
            OutputFormat::from_fields(None, None).unwrap(),
            OutputFormat::default()
        );
        let webp = OutputFormat::from_fields(Some("webp"), None).unwrap();
        assert_eq!(
            (webp.format, webp.quality),
            (ImageFormat::Webp, DEFAULT_QUALITY)
        );
        for f in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp] {
            assert_eq!(ImageFormat::from_extension(f.extension()), Some(f));
            assert_eq!(ImageFormat::from_mime(f.mime()), Some(f));
        }
    }

    #[test]
    fn unknown_formats_and_qualities_are_400s_naming_what_is_allowed() {
        let e = OutputFormat::from_fields(Some("gif"), None).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message(),
            "output_format must be one of png, jpeg, webp, got 'gif'."
        );
        for q in [0, 101, -5] {
            let e = OutputFormat::from_fields(Some("png"), Some(q)).unwrap_err();
            assert!(e
                .message()
                .starts_with("output_quality must be between 1 and 100"));
        }
    }

    #[test]
    fn data_urls_round_trip_with_their_type() {
        let url = data_url(ImageFormat::Webp, b"RIFF");
        assert!(url.starts_with("data:image/webp;base64,"));
        assert_eq!(
            parse_data_url(&url).unwrap(),
            (ImageFormat::Webp, b"RIFF".to_vec())
        );
        assert!(parse_data_url("data:image/gif;base64,R0lG").is_err());
    }
}
