//! `tessera serve`: the whole service in one process, with the embedded defaults: a gateway
//! on the public port, an orchestrator behind it on a loopback port (the gateway finds the
//! model in its discovery, as it would a remote one), and the warm model in an in-process
//! runner. Results are stored in a
//! local folder and jobs in a SQLite ledger, both under the data directory.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use tessera_api::defaults;
use tessera_gateway::{Gateway, GatewayConfig, StorageConfig};
use tessera_orchestrator::{parse_models, Orchestrator, OrchestratorConfig};

use crate::args::{EngineArgs, LimitArgs, ListenArgs, WebhookArgs};
use crate::listen;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model id (`org/name`, looked up in --model-dir and downloaded if missing) or a
    /// diffusers model folder. It is the warm model, and the one requests get by default.
    #[arg(long, env = "MODEL_ID", default_value = defaults::MODEL_ID)]
    model_id: String,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    listen: ListenArgs,
    /// Where results (`results/`) and the ledger (`ledger.sqlite`) are kept.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "tessera-data")]
    data_dir: PathBuf,
    /// Client API keys (comma-separated); when set, requests need `Authorization: Bearer
    /// <key>`.
    #[arg(
        long = "api-key",
        env = "TESSERA_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Jobs one API key may have running at once (0: no limit); past it, 429.
    #[arg(long, default_value_t = 0)]
    key_max_running_jobs: u32,
    /// Requests one API key may send per minute (0: no limit); past it, 429.
    #[arg(long, default_value_t = 0)]
    key_requests_per_minute: u32,
    /// Makes result URLs absolute, e.g. `https://edit.example.com`.
    #[arg(long)]
    public_url: Option<String>,
    /// How long results are kept.
    #[arg(long, default_value_t = 24.0)]
    retention_hours: f64,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // The embedded orchestrator charges nothing: the gateway is its only client.
    let models = parse_models(
        &json!([{"pipeline": "image-to-image", "model_id": a.model_id, "warm": true,
                 "price_per_unit": 0, "currency": "USD"}])
        .to_string(),
    )?;
    let limits = a.limits.limits();
    let orchestrator_config = OrchestratorConfig {
        model_dir: a.engine.model_dir(),
        device: a.engine.device,
        dtype: a.engine.dtype,
        max_lora_mib: a.engine.max_lora_mib,
        safety_checker: a.engine.safety_checker,
        limits: limits.clone(),
        ..OrchestratorConfig::default()
    };
    let gateway_config = GatewayConfig {
        default_model: a.model_id,
        api_keys: a.api_keys.into_iter().filter(|k| !k.is_empty()).collect(),
        key_limits: tessera_gateway::quota::KeyLimits {
            max_running_jobs: a.key_max_running_jobs,
            requests_per_minute: a.key_requests_per_minute,
        },
        public_base_url: a.public_url,
        storage: StorageConfig::Local {
            path: a.data_dir.join("results"),
        },
        ledger: a.data_dir.join("ledger.sqlite"),
        retention_hours: a.retention_hours,
        // One local orchestrator: retrying elsewhere would only retry it.
        max_attempts: 1,
        limits,
        ..GatewayConfig::default()
    };
    listen::block_on(async {
        let port = a.listen.port.unwrap_or(defaults::PORT);
        let public = listen::bind(&a.listen.host, port).await?;
        let internal = listen::bind("127.0.0.1", 0).await?;
        let mut gateway_config = gateway_config;
        a.webhooks.apply(&mut gateway_config);
        gateway_config.orchestrators = vec![format!("http://{}", internal.local_addr()?)];
        let orchestrator = Orchestrator::start(models, orchestrator_config)?;
        // Serving before the gateway starts: the gateway asks it what it offers at once.
        let orchestrator = tokio::spawn(tessera_orchestrator::serve_on(internal, orchestrator));
        let gateway = Gateway::start(gateway_config).await?;
        // Both stop on the same signal; either failing stops the service with its error.
        tokio::try_join!(
            async {
                orchestrator
                    .await
                    .context("the embedded orchestrator panicked")?
                    .context("the embedded orchestrator failed")
            },
            tessera_gateway::serve_on(public, gateway),
        )?;
        Ok(())
    })
}
