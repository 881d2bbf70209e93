//! What a runner is started with: the model it serves, where it listens, and the limits it
//! puts on requests.

use std::path::PathBuf;

/// The model ai-runner's image-to-image container serves warm by default.
pub const DEFAULT_MODEL_ID: &str = "timbrooks/instruct-pix2pix";

/// ai-runner's port.
pub const DEFAULT_PORT: u16 = 8000;

/// The one pipeline this runner serves (ai-runner's `PIPELINE` value for it).
pub const PIPELINE: &str = "image-to-image";

/// One runner: one model, one address.
#[derive(Clone)]
pub struct RunnerConfig {
    /// A model id (`org/name`, looked up in `model_dir`, downloaded when missing and the hub
    /// is reachable) or a diffusers model folder. Requests name it in their `model_id` field.
    pub model_id: String,
    /// Model directory in the HuggingFace hub cache layout.
    pub model_dir: PathBuf,
    /// Interface to listen on: all of them by default, as ai-runner's container does.
    pub host: String,
    pub port: u16,
    /// When set (and not empty), every inference request must carry `Authorization: Bearer
    /// <token>`; `/health` stays open, as in ai-runner.
    pub auth_token: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` (see `tessera_engine::device::parse`).
    pub device: String,
    /// The NSFW safety checker (hub id in `model_dir`, or a folder), loaded when a request
    /// first asks for a check.
    pub safety_checker: String,
    /// What `/version` reports (ai-runner's `VERSION`; "undefined" when not given).
    pub version: String,
    /// Requests allowed to wait while one runs; past it, 503 with `Retry-After`.
    pub queue_depth: usize,
    pub limits: Limits,
}

/// Bounds ai-runner does not have: past them a request would only tie the worker up or
/// exhaust memory, so they are refused with a 400 (413 for the upload) that names them.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Largest `image` upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest width or height of the decoded image, checked from its header.
    pub max_image_side: u32,
    pub max_images_per_prompt: u32,
    pub max_inference_steps: u32,
    /// In characters, for `prompt` and `negative_prompt` alike (longer than CLIP's 77 tokens
    /// is fine: the tokenizer truncates, as diffusers does).
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 * 1024 * 1024,
            max_image_side: 4096,
            max_images_per_prompt: 10,
            max_inference_steps: 500,
            max_prompt_chars: 10_000,
        }
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            model_id: DEFAULT_MODEL_ID.into(),
            model_dir: tessera_engine::hub::default_model_dir(),
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            auth_token: None,
            device: "cpu".into(),
            safety_checker: tessera_engine::safety::DEFAULT_MODEL_ID.into(),
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
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<set>"))
            .field("device", &self.device)
            .field("safety_checker", &self.safety_checker)
            .field("version", &self.version)
            .field("queue_depth", &self.queue_depth)
            .field("limits", &self.limits)
            .finish()
    }
}
