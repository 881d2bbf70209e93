//! Where a LoRA id points, and the adapters kept loaded between requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::adapter::LoraAdapter;
use super::{not_found, quoted, unloadable};
use crate::error::{Error, Result};
use crate::hub::{validate_model_id, ModelStore, RepoFile};

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
/// candidates. Pickled weights (`.bin`) are never loaded. The choice is made from the
/// directory's snapshot or the hub's file listing, so that a download fetches that one file
/// and nothing else; a file larger than the store's LoRA limit
/// ([`ModelStore::with_max_lora_mib`]) is refused before any of it is read or downloaded.
///
/// Local paths must end in `.safetensors`, so that a request cannot make the server open
/// arbitrary files of its disk.
pub fn resolve_lora(store: &ModelStore, id: &str) -> Result<PathBuf> {
    let path = Path::new(id);
    if id.ends_with(".safetensors") || path.is_absolute() {
        if !(id.ends_with(".safetensors") && path.is_file()) {
            return Err(not_found(id));
        }
        let size = std::fs::metadata(path).map(|m| m.len()).ok();
        check_size(id, id, size, store.max_lora_bytes())?;
        return Ok(path.to_path_buf());
    }
    validate_model_id(id).map_err(|e| match e {
        Error::InvalidModelId { reason, .. } => {
            Error::InvalidInput(format!("invalid LoRa id '{}': {reason}", quoted(id)))
        }
        other => other,
    })?;
    let choose = |files: &[RepoFile]| choose_weights(id, files, store.max_lora_bytes());
    store.resolve_chosen_file(id, &choose).map_err(|e| match e {
        Error::ModelNotFound { .. } => {
            tracing::warn!(lora = id, error = %e, "LoRA repository not found");
            not_found(id)
        }
        e @ Error::InvalidInput(_) => e,
        other => unloadable(id, &other.to_string()),
    })
}

/// The LoRA weights among a repository's top-level files, checked against `max_bytes`.
pub(super) fn choose_weights(id: &str, files: &[RepoFile], max_bytes: u64) -> Result<String> {
    let mut candidates: Vec<&RepoFile> = files
        .iter()
        .filter(|f| {
            f.name.ends_with(".safetensors")
                && !["scheduler", "optimizer", "checkpoint"]
                    .iter()
                    .any(|s| f.name.contains(s))
        })
        .collect();
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    let chosen = match candidates.as_slice() {
        [only] => *only,
        [] => return Err(unloadable(id, "the repository has no .safetensors weights")),
        several => match CONVENTIONAL_NAMES
            .iter()
            .find_map(|c| several.iter().find(|f| f.name == *c))
        {
            Some(file) => *file,
            None => {
                let names: Vec<&str> = several.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::InvalidInput(format!(
                    "Unable to load LoRas for adapter '{}': the repository holds several weight files ({}) and none is named {}",
                    quoted(id),
                    names.join(", "),
                    CONVENTIONAL_NAMES.join(" or ")
                )));
            }
        },
    };
    check_size(id, &chosen.name, chosen.size, max_bytes)?;
    Ok(chosen.name.clone())
}

/// Refuses LoRA `id`'s weights `file` when it is larger than `max_bytes`, or when its size
/// is unknown (a hub listing without sizes), naming the size and the limit.
fn check_size(id: &str, file: &str, size: Option<u64>, max_bytes: u64) -> Result<()> {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let problem = match size {
        Some(size) if size <= max_bytes => return Ok(()),
        Some(size) => format!(
            "{} is {:.1} MiB ({size} bytes), larger than the {:.0} MiB LoRAs may have (--max-lora-mib)",
            quoted(file),
            mib(size),
            mib(max_bytes)
        ),
        None => format!(
            "the hub's listing does not give the size of {}, so it cannot be checked against the {:.0} MiB LoRAs may have (--max-lora-mib)",
            quoted(file),
            mib(max_bytes)
        ),
    };
    tracing::warn!(lora = %quoted(id), problem, "LoRA refused");
    Err(Error::InvalidInput(format!(
        "Unable to load LoRas for adapter '{}': {problem}",
        quoted(id)
    )))
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
