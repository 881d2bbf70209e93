//! One error type for the engine. The variants say whose fault a failure is, so the HTTP
//! layers can map them to status codes without parsing messages.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something impossible (bad parameter, unusable image): a 4xx.
    #[error("{0}")]
    InvalidInput(String),
    /// A model id that is malformed or unsafe (path traversal, control characters...).
    #[error("invalid model id '{id}': {reason}")]
    InvalidModelId { id: String, reason: String },
    /// The model is not in the model directory and could not be downloaded.
    #[error("model '{id}' not found in {}{}", dir.display(), hint)]
    ModelNotFound {
        id: String,
        dir: PathBuf,
        hint: String,
    },
    /// A model folder that exists but cannot be used (missing file, bad config, wrong tensor).
    #[error("{0}")]
    Model(String),
    /// The cause is part of the message and deliberately not an error `source`: chained
    /// reports (anyhow's `{:#}`) would print it twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The caller stopped the generation (its watcher answered `Break`, or its client left).
    #[error("the generation was cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Bounds on the sizes a model config may give. A config is outside input (a hub repo, a
/// cache folder): its counts size vectors and module lists before any weight is read, so
/// `"layers_per_block": 4294967296` would ask for tens of GB before the weights could say
/// it is wrong. Each bound is far above every released SD/SDXL/CLIP model.
pub mod config_bounds {
    /// Layers in one block or stack (SDXL's deepest transformer stack has 10; CLIP-G 32).
    pub const LAYERS: usize = 256;
    /// Down/up blocks of a UNet or VAE (4 in every released model).
    pub const BLOCKS: usize = 16;
    /// Channels, hidden sizes, embedding widths (SDXL's widest is 1280; CLIP-G's MLP 5120).
    pub const WIDTH: usize = 1 << 16;
    /// Attention heads (20 in SDXL, 32 in CLIP-G).
    pub const HEADS: usize = 1024;
    /// Token vocabulary (CLIP's is 49408) and positions (77).
    pub const VOCAB: usize = 1 << 21;
    pub const POSITIONS: usize = 1 << 16;
    /// Convolution kernels and image sides of a vision tower (224 for the safety checker).
    pub const KERNEL: usize = 15;
    pub const IMAGE_SIDE: usize = 4096;

    /// `value` of `key` if at most `max`, else an error naming both.
    pub fn at_most(key: &str, value: usize, max: usize) -> std::result::Result<(), String> {
        if value > max {
            return Err(format!(
                "{key} = {value} is more than this engine takes ({max})"
            ));
        }
        Ok(())
    }
}

/// Reads and parses a JSON file, naming the file in any error. The text may be JSON as
/// Python's `json` writes it: see [`parse_json`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(&text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
}

/// Parses JSON as Python's `json` module writes it, which is strict JSON plus the bare
/// tokens `NaN`, `Infinity` and `-Infinity` (diffusers' `DPMSolverMultistepScheduler` saves
/// `"lambda_min_clipped": -Infinity`). serde_json has no non-finite numbers, so outside
/// strings those tokens become the JSON strings `"NaN"`, `"Infinity"` and `"-Infinity"`;
/// read such fields with [`py_float`] (from a `Value`) or [`deserialize_py_float`] (a
/// `#[serde(deserialize_with)]` for an `f64` field). Text inside strings is never touched.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    match python_tokens_quoted(text) {
        Some(rewritten) => serde_json::from_str(&rewritten),
        None => serde_json::from_str(text),
    }
}

/// A JSON number, or one of Python's non-finite floats as [`parse_json`] hands them over.
pub fn py_float(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        other => other.as_f64(),
    }
}

/// `#[serde(deserialize_with = "crate::error::deserialize_py_float")]` for an `f64` field
/// that may hold Python's `NaN` / `Infinity` / `-Infinity`.
pub fn deserialize_py_float<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<f64, D::Error> {
    let value = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
    py_float(&value).ok_or_else(|| {
        serde::de::Error::custom(format!("expected a number, NaN or Infinity, got {value}"))
    })
}

/// `text` with Python's bare `NaN` / `Infinity` / `-Infinity` outside strings quoted, or
/// `None` when it has none (the usual case, which then costs one scan).
fn python_tokens_quoted(text: &str) -> Option<String> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return None;
    }
    const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let (mut copied, mut i, mut in_string, mut changed) = (0, 0, false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token = TOKENS.iter().find(|t| {
            bytes[i..].starts_with(t.as_bytes())
                && !bytes
                    .get(i + t.len())
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        });
        match token {
            Some(t) => {
                out.push_str(&text[copied..i]);
                out.push('"');
                out.push_str(t);
                out.push('"');
                i += t.len();
                copied = i;
                changed = true;
            }
            None => i += 1,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn python_non_finite_floats_parse_and_strings_stay() {
        let text = r#"{"lambda_min_clipped": -Infinity, "a": [NaN, Infinity, 1.5],
            "name": "NaN -Infinity \" Infinity", "b": -1}"#;
        let v: Value = parse_json(text).unwrap();
        assert_eq!(py_float(&v["lambda_min_clipped"]), Some(f64::NEG_INFINITY));
        assert!(py_float(&v["a"][0]).unwrap().is_nan());
        assert_eq!(py_float(&v["a"][1]), Some(f64::INFINITY));
        assert_eq!(py_float(&v["a"][2]), Some(1.5));
        assert_eq!(v["name"], json!("NaN -Infinity \" Infinity"));
        assert_eq!(v["b"], json!(-1));

        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(deserialize_with = "deserialize_py_float")]
            lambda_min_clipped: f64,
            #[serde(deserialize_with = "deserialize_py_float")]
            plain: f64,
        }
        let c: Config = parse_json(r#"{"lambda_min_clipped":-Infinity,"plain":2}"#).unwrap();
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
        assert_eq!(c.plain, 2.0);
        assert!(parse_json::<Config>(r#"{"lambda_min_clipped":"x","plain":2}"#).is_err());
    }

    #[test]
    fn strict_json_is_untouched_and_lookalikes_still_fail() {
        assert_eq!(python_tokens_quoted(r#"{"a": "NaN"}"#), None);
        assert_eq!(python_tokens_quoted(r#"{"a": 1}"#), None);
        assert!(parse_json::<Value>(r#"{"a": NaNa}"#).is_err());
        assert!(parse_json::<Value>(r#"{"a": Infinityy}"#).is_err());
    }

    #[test]
    fn read_json_names_the_file_and_reads_python_json() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("scheduler_config.json");
        std::fs::write(
            &p,
            r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity}"#,
        )
        .unwrap();
        let v: Value = read_json(&p).unwrap();
        assert_eq!(py_float(&v["lambda_min_clipped"]), Some(f64::NEG_INFINITY));
        std::fs::write(&p, "{").unwrap();
        let e = read_json::<Value>(&p).unwrap_err().to_string();
        assert!(e.contains("scheduler_config.json"), "{e}");
    }
}
