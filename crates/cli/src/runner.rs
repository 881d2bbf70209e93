//! `tessera runner`: one model behind ai-runner's HTTP API, started the way ai-runner's
//! container is (env `PIPELINE`, `MODEL_ID`, `MODEL_DIR`, `AUTH_TOKEN`, `VERSION`, port
//! 8000), so that it can replace that container for go-livepeer. Flags override the env.
//! With `--register-with`, it is also a Live Runner of that orchestrator (go-livepeer's or
//! tessera's): it registers by heartbeat and unregisters when it stops.

use anyhow::bail;
use tessera_api::defaults;
use tessera_api::live::{app_for_model, Gpu, PriceInfo};
use tessera_runner::{Registration, Runner, RunnerConfig};

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
    #[command(flatten)]
    live: LiveArgs,
}

/// Registering with an orchestrator as a Live Runner.
#[derive(clap::Args)]
struct LiveArgs {
    /// The orchestrator to register with (its base URL, e.g. http://orch:8935).
    #[arg(long, env = "ORCH_URL")]
    register_with: Option<String>,
    /// The orchestrator's secret (go-livepeer's -orchSecret).
    #[arg(
        long,
        env = "ORCH_SECRET",
        hide_env_values = true,
        requires = "register_with"
    )]
    orch_secret: Option<String>,
    /// The app name to register under [default: tessera/image-to-image/<model id>].
    #[arg(long)]
    app: Option<String>,
    /// Where the orchestrator reaches this runner [default: http://<host>:<port>, with
    /// 127.0.0.1 for an unspecified host].
    #[arg(long)]
    public_url: Option<String>,
    /// Calls taken at once; past it the orchestrator answers 503.
    #[arg(long, default_value_t = 1)]
    capacity: i64,
    /// The price, in USD per --price-unit.
    #[arg(long, default_value_t = 0.0)]
    price: f64,
    /// `fixed` (per call; what go-livepeer knows) or `pixel` (per input pixel; tessera's
    /// gateways only).
    #[arg(long, default_value = "fixed", value_parser = ["fixed", "pixel"])]
    price_unit: String,
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
        dtype: a.engine.dtype,
        max_lora_mib: a.engine.max_lora_mib,
        safety_checker: a.engine.safety_checker,
        version: a.version,
        queue_depth: a.queue_depth,
        limits: a.limits.limits(),
    };
    let port = a.listen.port.unwrap_or(defaults::PORT);
    let registration = match a.live.register_with {
        None => None,
        Some(orchestrator_url) => {
            let Some(secret) = a.live.orch_secret.filter(|s| !s.is_empty()) else {
                bail!("--register-with needs --orch-secret (or ORCH_SECRET)");
            };
            let host = match a.listen.host.as_str() {
                "0.0.0.0" | "::" => "127.0.0.1",
                h => h,
            };
            Some(Registration {
                orchestrator_url,
                secret,
                runner_url: a
                    .live
                    .public_url
                    .unwrap_or_else(|| format!("http://{host}:{port}")),
                app: a
                    .live
                    .app
                    .unwrap_or_else(|| app_for_model(&config.model_id)),
                capacity: a.live.capacity.max(1),
                price_info: Some(PriceInfo {
                    price: a.live.price,
                    currency: "usd".into(),
                    unit: a.live.price_unit,
                }),
                version: env!("CARGO_PKG_VERSION").into(),
                gpu: gpu(&config.device),
            })
        }
    };
    listen::block_on(async {
        let listener = listen::bind(&a.listen.host, port).await?;
        let runner = Runner::start(&config)?;
        let serving = tessera_runner::serve_on(listener, runner.clone());
        match registration {
            None => serving.await,
            Some(registration) => {
                let heartbeats = registration.run(runner, tessera_api::serve::signal());
                let (served, ()) = tokio::join!(serving, heartbeats);
                served
            }
        }
    })
}

/// What a heartbeat says of the device: a CUDA device by its index, nothing for the CPU.
fn gpu(device: &str) -> Option<Gpu> {
    let index = device
        .strip_prefix("cuda")
        .map(|n| n.trim_start_matches(':'))?;
    Some(Gpu {
        id: Some(if index.is_empty() {
            "0".into()
        } else {
            index.into()
        }),
        ..Gpu::default()
    })
}
