//! `tessera orchestrator`: serves gateways' jobs with the models of an `aiModels.json` list.

use std::path::PathBuf;

use tessera_orchestrator::{load_models, Orchestrator, OrchestratorConfig, DEFAULT_PORT};

use crate::args::{EngineArgs, LimitArgs, ListenArgs};
use crate::listen;

#[derive(clap::Args)]
pub struct OrchestratorArgs {
    /// The orchestrator's own models, in go-livepeer's aiModels.json format [default:
    /// none: it serves the Live Runners that register with --secret].
    #[arg(long, env = "AI_MODELS_JSON")]
    models: Option<PathBuf>,
    /// The secret Live Runners register with (go-livepeer's -orchSecret: the whole
    /// `Authorization` value of their first heartbeat). Without one, only the models of
    /// --models are served.
    #[arg(long, env = "ORCH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Live Runners registered from a file, go-livepeer's -liveRunnerConfig format:
    /// `{"runners": [{label, runner_url, health_url, healthy_status_code, app, mode,
    /// capacity, price_info, ...}]}`; each is listed while its health_url answers.
    #[arg(long)]
    live_runners: Option<PathBuf>,
    /// The base URL discovery advertises (go-livepeer's -serviceAddr) [default: the
    /// address each caller used].
    #[arg(long)]
    public_url: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    listen: ListenArgs,
    /// Cold models kept loaded at once; loading another unloads the least recently used
    /// idle one.
    #[arg(long, default_value_t = 1)]
    max_cold_loaded: usize,
    /// The request limits, as `tessera runner` takes them: the upload size is enforced
    /// here, the rest by the in-process models (a 400 the gateway passes on).
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(a: OrchestratorArgs) -> anyhow::Result<()> {
    let models = match &a.models {
        Some(path) => load_models(path)?,
        None => Vec::new(),
    };
    let static_runners = match &a.live_runners {
        Some(path) => tessera_orchestrator::static_runners::load(path)?,
        None => Vec::new(),
    };
    if models.is_empty()
        && static_runners.is_empty()
        && a.secret.as_deref().unwrap_or_default().is_empty()
    {
        anyhow::bail!(
            "nothing to serve: give --models, --live-runners, or --secret for Live Runners to register with"
        );
    }
    if a.secret.as_deref().unwrap_or_default().is_empty() {
        tracing::info!("no --secret: no Live Runner can register; serving --models only");
    }
    let config = OrchestratorConfig {
        secret: a.secret,
        public_url: a.public_url,
        static_runners,
        model_dir: a.engine.model_dir(),
        device: a.engine.device,
        dtype: a.engine.dtype,
        max_lora_mib: a.engine.max_lora_mib,
        safety_checker: a.engine.safety_checker,
        max_cold_loaded: a.max_cold_loaded,
        limits: a.limits.limits(),
        ..OrchestratorConfig::default()
    };
    listen::block_on(async {
        let port = a.listen.port.unwrap_or(DEFAULT_PORT);
        let listener = listen::bind(&a.listen.host, port).await?;
        let orchestrator = Orchestrator::start(models, config)?;
        tessera_orchestrator::serve_on(listener, orchestrator).await
    })
}
