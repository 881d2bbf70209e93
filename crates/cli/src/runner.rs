//! `tessera runner`: one model behind ai-runner's HTTP API, started the way ai-runner's
//! container is (env `PIPELINE`, `MODEL_ID`, `MODEL_DIR`, `AUTH_TOKEN`, `VERSION`, port
//! 8000), so that it can replace that container for go-livepeer. Flags override the env.

use std::path::PathBuf;

use anyhow::bail;
use tessera_runner::{Limits, RunnerConfig, DEFAULT_MODEL_ID, DEFAULT_PORT, PIPELINE};

#[derive(clap::Args)]
pub struct RunnerArgs {
    /// The pipeline to serve; only image-to-image exists.
    #[arg(long, env = "PIPELINE", default_value = PIPELINE)]
    pipeline: String,
    /// Model id (`org/name`, looked up in --model-dir and downloaded if missing) or a
    /// diffusers model folder. Requests may name it in their `model_id` field.
    #[arg(long, env = "MODEL_ID", default_value = DEFAULT_MODEL_ID)]
    model_id: String,
    /// Model directory in the HuggingFace hub cache layout [default: the HuggingFace cache].
    #[arg(long, env = "MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on inference requests.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// What `/version` reports.
    #[arg(long = "runner-version", env = "VERSION", default_value = "undefined")]
    version: String,
    /// Address to listen on (all interfaces by default, as ai-runner's container).
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The NSFW safety checker: a model id (looked up in --model-dir) or a folder, loaded
    /// when a request first asks for a check.
    #[arg(long, default_value = tessera_engine::safety::DEFAULT_MODEL_ID)]
    safety_checker: String,
    /// Requests that may wait while one runs; past it, 503 with Retry-After.
    #[arg(long, default_value_t = RunnerConfig::default().queue_depth)]
    queue_depth: usize,
    /// Largest image upload, in MiB (413 past it).
    #[arg(long, default_value_t = 20)]
    max_upload_mib: usize,
    /// Largest width or height of an input image, in pixels.
    #[arg(long, default_value_t = Limits::default().max_image_side)]
    max_image_side: u32,
    /// Largest num_images_per_prompt.
    #[arg(long, default_value_t = Limits::default().max_images_per_prompt)]
    max_images_per_prompt: u32,
    /// Largest num_inference_steps (a lower bound keeps a fuzzer or a careless client from
    /// tying the one worker up for minutes).
    #[arg(long, default_value_t = Limits::default().max_inference_steps)]
    max_inference_steps: u32,
}

pub fn run(a: RunnerArgs) -> anyhow::Result<()> {
    if a.pipeline != PIPELINE {
        bail!(
            "pipeline '{}' is not served by tessera; use {PIPELINE}",
            a.pipeline
        );
    }
    let config = RunnerConfig {
        model_id: a.model_id,
        model_dir: a
            .model_dir
            .unwrap_or_else(tessera_engine::hub::default_model_dir),
        host: a.host,
        port: a.port,
        auth_token: a.auth_token,
        device: a.device,
        safety_checker: a.safety_checker,
        version: a.version,
        queue_depth: a.queue_depth,
        limits: Limits {
            max_upload_bytes: a.max_upload_mib.saturating_mul(1024 * 1024),
            max_image_side: a.max_image_side,
            max_images_per_prompt: a.max_images_per_prompt,
            max_inference_steps: a.max_inference_steps,
            ..Limits::default()
        },
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tessera_runner::serve(config))
}
