//! `tessera serve`: the whole service in one process, with the embedded defaults: a gateway
//! on the public port, an orchestrator behind it on a loopback port (reached with a secret
//! made up at start), and the warm model in an in-process runner. Results are stored in a
//! local folder and jobs in a SQLite ledger, both under the data directory.

use std::path::PathBuf;

use anyhow::Context;
use rand::Rng;
use serde_json::json;
use tessera_network::{gateway, orchestrator, parse_models, storage::StorageConfig};
use tessera_network::{Gateway, GatewayConfig, Orchestrator, OrchestratorConfig};
use tessera_runner::{Limits, DEFAULT_MODEL_ID, DEFAULT_PORT};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model id (`org/name`, looked up in --model-dir and downloaded if missing) or a
    /// diffusers model folder. It is the warm model, and the one requests get by default.
    #[arg(long, env = "MODEL_ID", default_value = DEFAULT_MODEL_ID)]
    model_id: String,
    /// Model directory in the HuggingFace hub cache layout [default: the HuggingFace cache].
    #[arg(long, env = "MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Address to listen on (all interfaces by default, as ai-runner's container).
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The NSFW safety checker: a model id (looked up in --model-dir) or a folder, loaded
    /// when a request first asks for a check and shared by every model.
    #[arg(long, default_value = tessera_engine::safety::DEFAULT_MODEL_ID)]
    safety_checker: String,
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
    /// Makes result URLs absolute, e.g. `https://edit.example.com`.
    #[arg(long)]
    public_url: Option<String>,
    /// How long results are kept.
    #[arg(long, default_value_t = 24.0)]
    retention_hours: f64,
    /// Largest num_images_per_prompt a request may ask for.
    #[arg(long, default_value_t = Limits::default().max_images_per_prompt)]
    max_images_per_prompt: u32,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // The embedded orchestrator charges nothing: the gateway is its only client.
    let models = parse_models(
        &json!([{"pipeline": "image-to-image", "model_id": a.model_id, "warm": true,
                 "price_per_unit": 0, "currency": "USD"}])
        .to_string(),
    )?;
    let secret: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let defaults = OrchestratorConfig::default();
    let orchestrator_config = OrchestratorConfig {
        secret: Some(secret.clone()),
        model_dir: a.model_dir.unwrap_or(defaults.model_dir.clone()),
        device: a.device,
        safety_checker: a.safety_checker,
        runner_limits: Limits {
            max_images_per_prompt: a.max_images_per_prompt,
            ..Limits::default()
        },
        ..defaults
    };
    let gateway_config = GatewayConfig {
        orchestrator_secret: Some(secret),
        default_model: a.model_id,
        api_keys: a.api_keys.into_iter().filter(|k| !k.is_empty()).collect(),
        public_base_url: a.public_url,
        storage: StorageConfig::Local {
            path: a.data_dir.join("results"),
        },
        ledger: a.data_dir.join("ledger.sqlite"),
        retention_hours: a.retention_hours,
        // One local orchestrator: retrying elsewhere would only retry it.
        max_attempts: 1,
        ..GatewayConfig::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let public = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
                .await
                .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
            let internal = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot listen on a loopback port")?;
            let mut gateway_config = gateway_config;
            gateway_config.orchestrators = vec![format!("http://{}", internal.local_addr()?)];
            let orchestrator = Orchestrator::start(models, orchestrator_config)?;
            tokio::spawn(orchestrator::serve_on(internal, orchestrator));
            let gateway = Gateway::start(gateway_config).await?;
            gateway::serve_on(public, gateway).await
        })
}
