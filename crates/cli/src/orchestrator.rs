//! `tessera orchestrator`: serves gateways' jobs with the models of an `aiModels.json` list.

use std::path::PathBuf;

use anyhow::Context;
use tessera_network::orchestrator::{self, DEFAULT_PORT};
use tessera_network::{load_models, Orchestrator, OrchestratorConfig};
use tessera_runner::Limits;

#[derive(clap::Args)]
pub struct OrchestratorArgs {
    /// The model list, in go-livepeer's aiModels.json format.
    #[arg(long, env = "AI_MODELS_JSON", default_value = "aiModels.json")]
    models: PathBuf,
    /// The secret gateways send as `Authorization: Bearer <secret>`. Without one, anyone
    /// who reaches the port can run jobs.
    #[arg(long, env = "ORCH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Model directory of the in-process models, in the HuggingFace hub cache layout
    /// [default: the HuggingFace cache].
    #[arg(long, env = "MODEL_DIR")]
    model_dir: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// cpu, cuda or cuda:N, for the in-process models.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The NSFW safety checker: a model id (looked up in --model-dir) or a folder, loaded
    /// when a request first asks for a check and shared by every model.
    #[arg(long, default_value = tessera_engine::safety::DEFAULT_MODEL_ID)]
    safety_checker: String,
    /// Cold models kept loaded at once; loading another unloads the least recently used
    /// idle one.
    #[arg(long, default_value_t = 1)]
    max_cold_loaded: usize,
    /// Largest num_images_per_prompt the in-process models take (past it, a 400 the gateway
    /// passes on), as `tessera runner --max-images-per-prompt`.
    #[arg(long, default_value_t = Limits::default().max_images_per_prompt)]
    max_images_per_prompt: u32,
}

pub fn run(a: OrchestratorArgs) -> anyhow::Result<()> {
    let models = load_models(&a.models)?;
    if a.secret.as_deref().unwrap_or_default().is_empty() {
        tracing::warn!("no --secret: anyone who reaches this port can run jobs");
    }
    let defaults = OrchestratorConfig::default();
    let config = OrchestratorConfig {
        secret: a.secret,
        model_dir: a.model_dir.unwrap_or(defaults.model_dir.clone()),
        device: a.device,
        safety_checker: a.safety_checker,
        max_cold_loaded: a.max_cold_loaded,
        runner_limits: Limits {
            max_images_per_prompt: a.max_images_per_prompt,
            ..Limits::default()
        },
        ..defaults
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
                .await
                .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
            let orchestrator = Orchestrator::start(models, config)?;
            orchestrator::serve_on(listener, orchestrator).await
        })
}
