//! The checker as services hold it: resolved and loaded on the first request that asks for a
//! check, then shared by every model of the process. A failed load is not remembered, so a
//! checker that appears later (downloaded, mounted) is picked up by the next request.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use super::SafetyChecker;
use crate::error::{Error, Result};
use crate::hub::ModelStore;

#[derive(Debug)]
pub struct SharedSafetyChecker {
    store: ModelStore,
    model_id: String,
    device: Device,
    loaded: Mutex<Option<Arc<SafetyChecker>>>,
}

impl SharedSafetyChecker {
    /// `model_id` is a hub id looked up in `store`, or a folder.
    pub fn new(store: ModelStore, model_id: impl Into<String>, device: Device) -> Self {
        Self {
            store,
            model_id: model_id.into(),
            device,
            loaded: Mutex::new(None),
        }
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The checker, loading it on first use. f32 on every device: ai-runner moves the
    /// checker to the GPU without changing its dtype.
    pub fn get(&self) -> Result<Arc<SafetyChecker>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(checker) = loaded.as_ref() {
            return Ok(checker.clone());
        }
        let checker = self
            .store
            .resolve_id_or_dir(&self.model_id, None)
            .and_then(|dir| SafetyChecker::load(&dir, &self.device, DType::F32))
            .map(Arc::new)
            .map_err(|e| {
                Error::Model(format!(
                    "the NSFW safety checker '{}' cannot be loaded, so images cannot be checked \
                     (skip the check with safety_check=false, or --no-safety-check): {e}",
                    self.model_id
                ))
            })?;
        *loaded = Some(checker.clone());
        tracing::info!(model = %self.model_id, "safety checker loaded");
        Ok(checker)
    }
}
