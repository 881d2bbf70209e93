//! `tessera serve`: for now, one warm model behind ai-runner's HTTP API (the runner role);
//! the gateway and orchestrator join it in the same process later.

use std::path::PathBuf;

use tessera_runner::{RunnerConfig, DEFAULT_MODEL_ID, DEFAULT_PORT};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model id (`org/name`, looked up in --model-dir and downloaded if missing) or a diffusers
    /// model folder. Requests may name it in their `model_id` field.
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
    /// Require `Authorization: Bearer <token>` on inference requests.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let config = RunnerConfig {
        model_id: a.model_id,
        model_dir: a
            .model_dir
            .unwrap_or_else(tessera_engine::hub::default_model_dir),
        host: a.host,
        port: a.port,
        auth_token: a.auth_token,
        device: a.device,
        ..RunnerConfig::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tessera_runner::serve(config))
}
