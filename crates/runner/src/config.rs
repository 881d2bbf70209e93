//! What a runner is started with: the model it serves and where it listens.

use std::path::PathBuf;

/// The model ai-runner's image-to-image container serves warm by default.
pub const DEFAULT_MODEL_ID: &str = "timbrooks/instruct-pix2pix";

/// ai-runner's port.
pub const DEFAULT_PORT: u16 = 8000;

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
            .finish()
    }
}
