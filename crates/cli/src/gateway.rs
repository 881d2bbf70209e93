//! `tessera gateway`: the public image-to-image API in front of orchestrators.

use std::path::PathBuf;

use anyhow::Context;
use tessera_network::gateway::{self, DEFAULT_PORT};
use tessera_network::{Gateway, GatewayConfig};

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// The gateway's JSON config (orchestrators, prices, storage, ledger, keys); see
    /// docs/network.md. Without one, the defaults and the flags below.
    #[arg(long, env = "TESSERA_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// An orchestrator's base URL, added to the config's list (repeatable).
    #[arg(long = "orchestrator")]
    orchestrators: Vec<String>,
    /// The secret the orchestrators want (overrides the config's).
    #[arg(long, env = "ORCH_SECRET", hide_env_values = true)]
    orchestrator_secret: Option<String>,
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
}

pub fn run(a: GatewayArgs) -> anyhow::Result<()> {
    let mut config = match &a.config {
        Some(path) => GatewayConfig::load(path)?,
        None => GatewayConfig::default(),
    };
    config.orchestrators.extend(a.orchestrators);
    if a.orchestrator_secret.is_some() {
        config.orchestrator_secret = a.orchestrator_secret;
    }
    if config.orchestrators.is_empty() {
        anyhow::bail!("no orchestrators: list them in --config or with --orchestrator URL");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
                .await
                .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
            let gateway = Gateway::start(config).await?;
            gateway::serve_on(listener, gateway).await
        })
}
