//! The flags the serving roles share, declared once and flattened into each subcommand.

use std::path::PathBuf;

use tessera_api::Limits;

/// Where models come from and where they run.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Model directory in the HuggingFace hub cache layout [default: the HuggingFace cache].
    #[arg(long, env = "MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision the models compute in: auto (f32 on the CPU, f16 on CUDA), f32, f16 or bf16.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16", "bf16"])]
    pub dtype: String,
    /// The NSFW safety checker: a model id (looked up in --model-dir) or a folder, loaded
    /// when a request first asks for a check and shared by every model of the process.
    #[arg(long, default_value = tessera_engine::safety::DEFAULT_MODEL_ID)]
    pub safety_checker: String,
    /// The largest LoRA weights file a request may name, in MiB: a larger one is refused,
    /// by the size the hub's file listing gives, before anything is downloaded.
    #[arg(long, default_value_t = tessera_engine::lora::DEFAULT_MAX_LORA_MIB)]
    pub max_lora_mib: u64,
}

impl EngineArgs {
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(tessera_engine::hub::default_model_dir)
    }

    /// The model directory with the LoRA size limit: what the engine reads models from.
    pub fn model_store(&self) -> tessera_engine::hub::ModelStore {
        tessera_engine::hub::ModelStore::new(self.model_dir()).with_max_lora_mib(self.max_lora_mib)
    }
}

/// Where a server listens. Each role has its own default port (ai-runner's 8000 for
/// `serve` and `runner`, go-livepeer's 8936 and 8935 for `orchestrator` and `gateway`).
#[derive(clap::Args, Debug, Clone)]
pub struct ListenArgs {
    /// Address to listen on (all interfaces by default, as ai-runner's container).
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on [default: the role's].
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
}

/// The bounds put on requests (see `tessera_api::Limits`).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest image upload, in MiB (413 past it).
    #[arg(long, default_value_t = Limits::default().max_upload_bytes / (1024 * 1024))]
    pub max_upload_mib: usize,
    /// Largest width or height of an input image, in pixels.
    #[arg(long, default_value_t = Limits::default().max_image_side)]
    pub max_image_side: u32,
    /// Largest num_images_per_prompt.
    #[arg(long, default_value_t = Limits::default().max_images_per_prompt)]
    pub max_images_per_prompt: u32,
    /// Largest num_inference_steps (a bound keeps a fuzzer or a careless client from tying
    /// a worker up for minutes).
    #[arg(long, default_value_t = Limits::default().max_inference_steps)]
    pub max_inference_steps: u32,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_upload_bytes: self.max_upload_mib.saturating_mul(1024 * 1024),
            max_image_side: self.max_image_side,
            max_images_per_prompt: self.max_images_per_prompt,
            max_inference_steps: self.max_inference_steps,
            ..Limits::default()
        }
    }
}

/// Webhooks of async jobs (`webhook_url`), for the roles that run a gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// The key webhooks are signed with (`X-Tessera-Signature: sha256=<HMAC-SHA256>`);
    /// without it, requests that ask for a webhook are refused.
    #[arg(long, env = "TESSERA_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Let webhooks reach loopback, private and link-local addresses (refused by default:
    /// the URL is the client's and must not reach internal services).
    #[arg(long)]
    pub webhook_allow_private: bool,
}

impl WebhookArgs {
    /// Sets the gateway config's webhook fields the flags give.
    pub fn apply(self, config: &mut tessera_gateway::GatewayConfig) {
        if let Some(secret) = self.webhook_secret.filter(|s| !s.is_empty()) {
            config.webhook_secret = Some(secret);
        }
        config.webhook_allow_private |= self.webhook_allow_private;
    }
}
