//! The gateway's configuration file (JSON); every field has a default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use tessera_api::price::{PixelPrice, UnitPrice};
use tessera_api::{defaults, Limits};

use crate::quota::KeyLimits;
use crate::storage::StorageConfig;

/// The port go-livepeer gateways listen on.
pub const DEFAULT_PORT: u16 = 8935;

/// Everything a gateway is started with.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Base URLs of the orchestrators to use, e.g. `http://10.0.0.2:8936`.
    pub orchestrators: Vec<String>,
    /// Highest price per model id, and under `"default"` for the others. A model with no
    /// maximum takes any price.
    pub max_price: HashMap<String, UnitPrice>,
    /// The model of requests that name none.
    pub default_model: String,
    /// When not empty, clients must send `Authorization: Bearer <one of these>`.
    pub api_keys: Vec<String>,
    /// What each of those keys may do: jobs running at once and requests per minute
    /// (`{"max_running_jobs": 4, "requests_per_minute": 60}`; 0 or absent is no limit).
    pub key_limits: KeyLimits,
    /// Makes result URLs absolute, e.g. `https://gw.example.com`.
    pub public_base_url: Option<String>,
    pub storage: StorageConfig,
    /// How long results are kept.
    pub retention_hours: f64,
    /// The SQLite ledger.
    pub ledger: PathBuf,
    /// Seconds between `/discovery` refreshes (go-livepeer's runners heartbeat every 5 s
    /// and leave discovery 20 s after their last).
    pub refresh_secs: f64,
    /// Orchestrators tried per job, and time limits per try and in all.
    pub max_attempts: u32,
    pub attempt_timeout_secs: f64,
    pub total_timeout_secs: f64,
    /// What the gateway reads of a request: the body size and the image's sides (from its
    /// header). The runner's defaults, so that what passes a runner with them would take.
    pub limits: Limits,
    /// The HMAC-SHA256 key webhooks are signed with; without one, requests that ask for a
    /// webhook are refused.
    pub webhook_secret: Option<String>,
    /// Lets webhooks reach loopback, private and link-local addresses (refused otherwise:
    /// the URL is the client's, and must not reach internal services).
    pub webhook_allow_private: bool,
    /// How long a webhook delivery is retried (with doubling waits) before it fails.
    pub webhook_retry_secs: f64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            orchestrators: Vec::new(),
            max_price: HashMap::new(),
            default_model: defaults::MODEL_ID.into(),
            api_keys: Vec::new(),
            key_limits: KeyLimits::default(),
            public_base_url: None,
            storage: StorageConfig::default(),
            retention_hours: 24.0,
            ledger: PathBuf::from("tessera-data/ledger.sqlite"),
            refresh_secs: 5.0,
            max_attempts: 3,
            attempt_timeout_secs: 300.0,
            total_timeout_secs: 600.0,
            limits: Limits::default(),
            webhook_secret: None,
            webhook_allow_private: false,
            webhook_retry_secs: 60.0,
        }
    }
}

impl GatewayConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self =
            serde_json::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        config
            .check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    /// Refuses settings that cannot work, naming them.
    pub fn check(&self) -> anyhow::Result<()> {
        self.max_prices()?;
        for (name, v) in [
            ("retention_hours", self.retention_hours),
            ("refresh_secs", self.refresh_secs),
            ("attempt_timeout_secs", self.attempt_timeout_secs),
            ("total_timeout_secs", self.total_timeout_secs),
            ("webhook_retry_secs", self.webhook_retry_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("{name} must be a number > 0, not {v}");
            }
        }
        if self.max_attempts == 0 {
            anyhow::bail!("max_attempts must be at least 1");
        }
        if self.webhook_secret.as_deref() == Some("") {
            anyhow::bail!("webhook_secret must not be empty (leave it out for no webhooks)");
        }
        Ok(())
    }

    /// The maximum prices per pixel, by model id (`"default"` for the others).
    pub fn max_prices(&self) -> anyhow::Result<HashMap<String, PixelPrice>> {
        self.max_price
            .iter()
            .map(|(model, p)| {
                p.per_pixel()
                    .map(|p| (model.clone(), p))
                    .map_err(|e| anyhow::anyhow!("max_price for {model}: {e}"))
            })
            .collect()
    }
}

impl std::fmt::Debug for GatewayConfig {
    // Written out so that keys and secrets never land in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("orchestrators", &self.orchestrators)
            .field("max_price", &self.max_price)
            .field("default_model", &self.default_model)
            .field("api_keys", &self.api_keys.len())
            .field("public_base_url", &self.public_base_url)
            .field("storage", &"<set>")
            .field("retention_hours", &self.retention_hours)
            .field("ledger", &self.ledger)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<set>"),
            )
            .field("webhook_allow_private", &self.webhook_allow_private)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::price::Currency;

    #[test]
    fn the_documented_config_loads() {
        let config: GatewayConfig = serde_json::from_str(
            r#"{
              "orchestrators": ["http://10.0.0.2:8936", "http://10.0.0.3:8936"],
              "max_price": {
                "default": {"price_per_unit": 3, "pixels_per_unit": 1000000, "currency": "USD"},
                "org/model": {"price_per_unit": "1.5", "pixels_per_unit": 1e6, "currency": "usd"}
              },
              "api_keys": ["client-key-1"],
              "storage": {"kind": "s3", "bucket": "results", "endpoint": "http://minio:9000",
                          "allow_http": true},
              "retention_hours": 2
            }"#,
        )
        .unwrap();
        config.check().unwrap();
        let prices = config.max_prices().unwrap();
        assert_eq!(prices["default"].price_per_pixel, 3e-6);
        assert_eq!(prices["org/model"].currency, Currency::Usd);
        assert!(matches!(
            config.storage,
            StorageConfig::S3 {
                allow_http: true,
                ..
            }
        ));
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.default_model, "timbrooks/instruct-pix2pix");
    }

    #[test]
    fn unusable_configs_are_refused_naming_the_field() {
        let typo = serde_json::from_str::<GatewayConfig>(r#"{"orchestrator": []}"#).unwrap_err();
        assert!(
            typo.to_string().contains("unknown field `orchestrator`"),
            "{typo}"
        );
        let config: GatewayConfig = serde_json::from_str(r#"{"retention_hours": 0}"#).unwrap();
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("retention_hours"), "{e}");
        let config: GatewayConfig =
            serde_json::from_str(r#"{"max_price": {"default": {"price_per_unit": -1}}}"#).unwrap();
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("max_price for default"), "{e}");
    }
}
