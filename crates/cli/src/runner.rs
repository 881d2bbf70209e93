//! `tessera runner`: one warm model behind ai-runner's HTTP API, a drop-in for a
//! `livepeer/ai-runner` container (same environment variables, same port).

use std::path::PathBuf;

use tessera_runner::{RunnerConfig, DEFAULT_MODEL_ID, DEFAULT_PORT};

#[derive(clap::Args)]
pub struct RunnerArgs {
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

pub fn run(a: RunnerArgs) -> anyhow::Result<()> {
    let config = RunnerConfig {
        model_id: a.model_id,
        model_dir: a
            .model_dir
            .unwrap_or_else(tessera_engine::hub::default_model_dir),
        host: a.host,
        port: a.port,
        auth_token: a.auth_token,
        device: a.device,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tessera_runner::serve(config))
}
