//! `tessera runner`: one model behind ai-runner's HTTP API, started the way ai-runner's
//! container is (env `PIPELINE`, `MODEL_ID`, `MODEL_DIR`, `AUTH_TOKEN`, `VERSION`, port
//! 8000), so that it can replace that container for go-livepeer. Flags override the env.

use anyhow::bail;
use tessera_api::defaults;
use tessera_runner::{Runner, RunnerConfig};

use crate::args::{EngineArgs, LimitArgs, ListenArgs};
use crate::listen;

#[derive(clap::Args)]
pub struct RunnerArgs {
    /// The pipeline to serve; only image-to-image exists.
    #[arg(long, env = "PIPELINE", default_value = defaults::PIPELINE)]
    pipeline: String,
    /// Model id (`org/name`, looked up in --model-dir and downloaded if missing) or a
    /// diffusers model folder. Requests may name it in their `model_id` field.
    #[arg(long, env = "MODEL_ID", default_value = defaults::MODEL_ID)]
    model_id: String,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    listen: ListenArgs,
    /// Require `Authorization: Bearer <token>` on inference requests.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// What `/version` reports.
    #[arg(long = "runner-version", env = "VERSION", default_value = "undefined")]
    version: String,
    /// Requests that may wait while one runs; past it, 503 with Retry-After.
    #[arg(long, default_value_t = RunnerConfig::default().queue_depth)]
    queue_depth: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(a: RunnerArgs) -> anyhow::Result<()> {
    if a.pipeline != defaults::PIPELINE {
        bail!(
            "pipeline '{}' is not served by tessera; use {}",
            a.pipeline,
            defaults::PIPELINE
        );
    }
    let config = RunnerConfig {
        model_id: a.model_id,
        model_dir: a.engine.model_dir(),
        auth_token: a.auth_token,
        device: a.engine.device,
        safety_checker: a.engine.safety_checker,
        version: a.version,
        queue_depth: a.queue_depth,
        limits: a.limits.limits(),
    };
    listen::block_on(async {
        let port = a.listen.port.unwrap_or(defaults::PORT);
        let listener = listen::bind(&a.listen.host, port).await?;
        let runner = Runner::start(&config)?;
        tessera_runner::serve_on(listener, runner).await
    })
}
