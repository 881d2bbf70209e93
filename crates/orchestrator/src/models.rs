//! The orchestrator's model list, in go-livepeer's `aiModels.json` format: what it serves,
//! warm or cold, at what price, how many jobs at once, and which models live in external
//! ai-runner-compatible runners.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use tessera_api::defaults::PIPELINE;
use tessera_api::price::{PixelPrice, UnitPrice};

/// One entry of `aiModels.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub pipeline: String,
    pub model_id: String,
    /// Loaded at start and kept; cold models load on their first request.
    #[serde(default)]
    pub warm: bool,
    /// `price_per_unit` for every `pixels_per_unit` pixels, in `currency`.
    #[serde(flatten)]
    pub price: UnitPrice,
    /// Calls this model takes at once; past it, `503 no capacity available for runner`.
    #[serde(default = "one_job")]
    pub capacity: u32,
    /// An external ai-runner-compatible runner serving this model (e.g. `tessera runner` on
    /// another machine); unset means an in-process runner.
    #[serde(default)]
    pub url: Option<String>,
    /// The external runner's bearer token.
    #[serde(default)]
    pub token: Option<String>,
    /// go-livepeer's per-model engine flags: accepted so that its files load, not used.
    #[serde(default)]
    pub optimization_flags: serde_json::Map<String, serde_json::Value>,
}

fn one_job() -> u32 {
    1
}

impl ModelEntry {
    pub fn price(&self) -> anyhow::Result<PixelPrice> {
        self.price
            .per_pixel()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("model {}", self.model_id))
    }
}

/// Reads and checks an `aiModels.json` file (see [`parse_models`]).
pub fn load_models(path: &Path) -> anyhow::Result<Vec<ModelEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_models(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses a model list and refuses what cannot be served: another pipeline, a bad price or
/// capacity, an invalid model id, or a model listed twice (in particular both warm and
/// cold, which go-livepeer also refuses).
pub fn parse_models(text: &str) -> anyhow::Result<Vec<ModelEntry>> {
    let entries: Vec<ModelEntry> = serde_json::from_str(text).context("not a model list")?;
    let mut seen: HashMap<(&str, &str), bool> = HashMap::new();
    for e in &entries {
        if e.pipeline != PIPELINE {
            bail!(
                "model {}: pipeline '{}' is not served; tessera serves {PIPELINE}",
                e.model_id,
                e.pipeline
            );
        }
        if e.url.is_none() {
            // External runners name models their own way; ours must resolve in the hub.
            if !Path::new(&e.model_id).is_dir() {
                tessera_engine::hub::validate_model_id(&e.model_id)
                    .with_context(|| format!("model {}", e.model_id))?;
            }
        }
        e.price()?;
        if e.capacity == 0 {
            bail!("model {}: capacity must be at least 1", e.model_id);
        }
        if let Some(warm) = seen.insert((&e.pipeline, &e.model_id), e.warm) {
            if warm != e.warm {
                bail!("model {} is listed both warm and cold", e.model_id);
            }
            bail!("model {} is listed twice", e.model_id);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::price::Currency;

    #[test]
    fn go_livepeer_model_lists_load() {
        let models = parse_models(
            r#"[
              {"pipeline": "image-to-image", "model_id": "timbrooks/instruct-pix2pix",
               "warm": true, "price_per_unit": 4768371, "pixels_per_unit": 1,
               "optimization_flags": {"SFAST": true}},
              {"pipeline": "image-to-image", "model_id": "org/other", "price_per_unit": "0.5",
               "pixels_per_unit": 1e6, "currency": "USD", "capacity": 2,
               "url": "http://10.0.0.5:8000", "token": "t"}
            ]"#,
        )
        .unwrap();
        assert_eq!(models.len(), 2);
        assert!(models[0].warm && !models[1].warm);
        assert_eq!(models[0].capacity, 1);
        assert_eq!(models[0].price.currency, Currency::Wei);
        let p = models[1].price().unwrap();
        assert_eq!((p.price_per_pixel, p.currency), (0.5e-6, Currency::Usd));
        assert_eq!(models[1].url.as_deref(), Some("http://10.0.0.5:8000"));
    }

    fn error_of(json: &str) -> String {
        format!("{:#}", parse_models(json).unwrap_err())
    }

    #[test]
    fn unservable_lists_are_refused_with_the_reason() {
        let warm_and_cold = r#"[
          {"pipeline": "image-to-image", "model_id": "a/b", "warm": true, "price_per_unit": 1},
          {"pipeline": "image-to-image", "model_id": "a/b", "warm": false, "price_per_unit": 1}]"#;
        assert!(error_of(warm_and_cold).contains("both warm and cold"));
        let twice = r#"[
          {"pipeline": "image-to-image", "model_id": "a/b", "price_per_unit": 1},
          {"pipeline": "image-to-image", "model_id": "a/b", "price_per_unit": 2}]"#;
        assert!(error_of(twice).contains("listed twice"));
        let other = r#"[{"pipeline": "text-to-image", "model_id": "a/b", "price_per_unit": 1}]"#;
        assert!(error_of(other).contains("'text-to-image' is not served"));
        let free_unit = r#"[{"pipeline": "image-to-image", "model_id": "a/b",
                             "price_per_unit": 1, "pixels_per_unit": 0}]"#;
        assert!(error_of(free_unit).contains("pixels_per_unit"));
        let no_room = r#"[{"pipeline": "image-to-image", "model_id": "a/b",
                           "price_per_unit": 1, "capacity": 0}]"#;
        assert!(error_of(no_room).contains("capacity"));
        let bad_id = r#"[{"pipeline": "image-to-image", "model_id": "../x", "price_per_unit": 1}]"#;
        assert!(error_of(bad_id).contains("../x"));
        assert!(error_of("{}").contains("not a model list"));
    }
}
