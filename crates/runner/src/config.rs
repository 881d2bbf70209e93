//! What a runner is started with: the model it serves and the limits it puts on requests
//! (where it listens is the caller's: it hands `serve_on` a bound listener).

use std::path::PathBuf;

use tessera_api::{defaults, Limits};

/// One runner: one model, one address.
#[derive(Clone)]
pub struct RunnerConfig {
    /// A model id (`org/name`, looked up in `model_dir`, downloaded when missing and the hub
    /// is reachable) or a diffusers model folder. Requests name it in their `model_id` field.
    pub model_id: String,
    /// Model directory in the HuggingFace hub cache layout.
    pub model_dir: PathBuf,
    /// When set (and not empty), every inference request must carry `Authorization: Bearer
    /// <token>`; `/health` stays open, as in ai-runner.
    pub auth_token: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` (see `tessera_engine::device::parse`).
    pub device: String,
    /// `auto`, `f32`, `f16` or `bf16` (see `tessera_engine::device::parse_dtype`).
    pub dtype: String,
    /// The NSFW safety checker (hub id in `model_dir`, or a folder), loaded when a request
    /// first asks for a check.
    pub safety_checker: String,
    /// The largest LoRA weights file a request may name, in MiB; a larger one is refused
    /// before it is downloaded.
    pub max_lora_mib: u64,
    /// What `/version` reports (ai-runner's `VERSION`; "undefined" when not given).
    pub version: String,
    /// Requests allowed to wait while one runs; past it, 503 with `Retry-After`.
    pub queue_depth: usize,
    pub limits: Limits,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            model_id: defaults::MODEL_ID.into(),
            model_dir: tessera_engine::hub::default_model_dir(),
            auth_token: None,
            device: "cpu".into(),
            dtype: "auto".into(),
            safety_checker: tessera_engine::safety::DEFAULT_MODEL_ID.into(),
            max_lora_mib: tessera_engine::lora::DEFAULT_MAX_LORA_MIB,
            version: "undefined".into(),
            queue_depth: 8,
            limits: Limits::default(),
        }
    }
}

impl std::fmt::Debug for RunnerConfig {
    // Written out so that the token never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("model_id", &self.model_id)
            .field("model_dir", &self.model_dir)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<set>"))
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("safety_checker", &self.safety_checker)
            .field("max_lora_mib", &self.max_lora_mib)
            .field("version", &self.version)
            .field("queue_depth", &self.queue_depth)
            .field("limits", &self.limits)
            .finish()
    }
}
