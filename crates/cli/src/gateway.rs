//! `tessera gateway`: the public image-to-image API in front of orchestrators.

use std::path::PathBuf;

use tessera_gateway::{Gateway, GatewayConfig, DEFAULT_PORT};

use crate::args::{ListenArgs, WebhookArgs};
use crate::listen;

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// The gateway's JSON config (orchestrators, prices, storage, ledger, keys, limits); see
    /// docs/network.md. Without one, the defaults and the flags below.
    #[arg(long, env = "TESSERA_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// An orchestrator's base URL, added to the config's list (repeatable).
    #[arg(long = "orchestrator")]
    orchestrators: Vec<String>,
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

pub fn run(a: GatewayArgs) -> anyhow::Result<()> {
    let mut config = match &a.config {
        Some(path) => GatewayConfig::load(path)?,
        None => GatewayConfig::default(),
    };
    config.orchestrators.extend(a.orchestrators);
    a.webhooks.apply(&mut config);
    if config.orchestrators.is_empty() {
        anyhow::bail!("no orchestrators: list them in --config or with --orchestrator URL");
    }
    listen::block_on(async {
        let port = a.listen.port.unwrap_or(DEFAULT_PORT);
        let listener = listen::bind(&a.listen.host, port).await?;
        let gateway = Gateway::start(config).await?;
        tessera_gateway::serve_on(listener, gateway).await
    })
}
