//! Where a LoRA id points, and the adapters kept loaded between requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::adapter::LoraAdapter;
use super::{not_found, quoted, unloadable};
use crate::error::{Error, Result};
use crate::hub::{validate_model_id, ModelStore};

/// How many adapters stay loaded (ai-runner keeps 12).
pub const LORA_CACHE_CAPACITY: usize = 12;

/// The weight file names trainers give a LoRA, most conventional first: what a repository
/// holding several safetensors files is expected to mean.
const CONVENTIONAL_NAMES: [&str; 2] = [
    "pytorch_lora_weights.safetensors",
    "adapter_model.safetensors",
];

/// The safetensors file LoRA `id` names: a local `.safetensors` file, or a hub repository
/// (`ORG/NAME`) in the model directory, downloaded when missing and allowed. A repository's
/// weights are its only top-level `.safetensors` file, or among several the conventionally
/// named one; diffusers' training leftovers (scheduler, optimizer, checkpoint files) are not
/// candidates. Pickled weights (`.bin`) are never loaded.
///
/// Local paths must end in `.safetensors`, so that a request cannot make the server open
/// arbitrary files of its disk.
pub fn resolve_lora(store: &ModelStore, id: &str) -> Result<PathBuf> {
    let path = Path::new(id);
    if id.ends_with(".safetensors") || path.is_absolute() {
        return if id.ends_with(".safetensors") && path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(not_found(id))
        };
    }
    validate_model_id(id).map_err(|e| match e {
        Error::InvalidModelId { reason, .. } => {
            Error::InvalidInput(format!("invalid LoRa id '{}': {reason}", quoted(id)))
        }
        other => other,
    })?;
    let snapshot = store.resolve(id, None).map_err(|e| match e {
        Error::ModelNotFound { .. } => {
            tracing::warn!(lora = id, error = %e, "LoRA repository not found");
            not_found(id)
        }
        other => unloadable(id, &other.to_string()),
    })?;
    weights_file(id, &snapshot)
}

/// The LoRA weights among a repository snapshot's top-level files.
fn weights_file(id: &str, snapshot: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(snapshot)
        .map_err(|e| unloadable(id, &format!("{}: {e}", snapshot.display())))?;
    let mut files: Vec<String> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let is_weights = name.ends_with(".safetensors")
                && !["scheduler", "optimizer", "checkpoint"]
                    .iter()
                    .any(|s| name.contains(s))
                && entry.path().is_file();
            is_weights.then_some(name)
        })
        .collect();
    files.sort();
    let chosen = match files.as_slice() {
        [only] => only.clone(),
        [] => return Err(unloadable(id, "the repository has no .safetensors weights")),
        several => match CONVENTIONAL_NAMES.iter().find(|c| several.iter().any(|f| f == *c)) {
            Some(name) => name.to_string(),
            None => {
                return Err(Error::InvalidInput(format!(
                    "Unable to load LoRas for adapter '{}': the repository holds several weight files ({}) and none is named {}",
                    quoted(id),
                    several.join(", "),
                    CONVENTIONAL_NAMES.join(" or ")
                )))
            }
        },
    };
    Ok(snapshot.join(chosen))
}

/// Adapters loaded for recent requests, at most [`LORA_CACHE_CAPACITY`], the least recently
/// used evicted first. Loading a LoRA means reading and converting its file, which takes
/// longer than merging it, and requests tend to reuse a few.
#[derive(Debug, Default)]
pub struct LoraCache {
    /// Least recently used first.
    entries: Vec<Arc<LoraAdapter>>,
    capacity: usize,
}

impl LoraCache {
    pub fn new() -> Self {
        Self::with_capacity(LORA_CACHE_CAPACITY)
    }

    /// A cache holding at most `capacity` adapters (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    /// The adapter `id`, loaded now unless it is held already. Failures are not cached.
    pub fn get_or_load(&mut self, store: &ModelStore, id: &str) -> Result<Arc<LoraAdapter>> {
        if let Some(i) = self.entries.iter().position(|a| a.id == id) {
            let adapter = self.entries.remove(i);
            self.entries.push(adapter.clone());
            return Ok(adapter);
        }
        let path = resolve_lora(store, id)?;
        let adapter = Arc::new(LoraAdapter::from_file(id, &path)?);
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push(adapter.clone());
        Ok(adapter)
    }

    /// The ids held, least recently used first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|a| a.id.as_str())
    }
}
