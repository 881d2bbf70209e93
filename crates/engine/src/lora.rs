//! LoRA adapters: loading adapter files (diffusers/peft and kohya-ss
//! formats), and patching a component's weights with them.
//!
//! Nothing here mutates a tensor. [`patch`] takes a component's base name -> tensor map and
//! returns a copy in which the targeted weights are replaced by `W + Σ scale·(alpha/rank)·(up·down)`
//! and every other entry shares its storage with the base. The pipeline rebuilds the component
//! from the patched map, and rebuilding from the base map again restores the base weights bit
//! for bit: switching adapters between requests cannot drift.
//!
//! Errors are worded as ai-runner words them (its clients match on them) and are all
//! [`Error::InvalidInput`]: a LoRA named in a request is the caller's choice.

mod adapter;
mod cache;
#[cfg(test)]
mod download_tests;
mod merge;
mod targets;

pub use adapter::{Component, LoraAdapter, LoraModule, ModuleName};
pub use cache::{resolve_lora, LoraCache, LORA_CACHE_CAPACITY};
pub use merge::{check_compatible, patch};

use tessera_api::quoted;

use crate::error::Error;

/// The largest LoRA weights file loaded by default, in MiB (`--max-lora-mib`): SDXL LoRAs
/// of high rank reach a few hundred MiB; a file past this is not a LoRA one means to fetch.
pub const DEFAULT_MAX_LORA_MIB: u64 = 2048;

/// ai-runner's answer when a LoRA does not exist.
fn not_found(id: &str) -> Error {
    Error::InvalidInput(format!("LoRa repository '{}' not found", quoted(id)))
}

/// ai-runner's answer when a LoRA names modules the base model lacks (or of other shapes).
fn incompatible(id: &str) -> Error {
    Error::InvalidInput(format!(
        "LoRa incompatible with base model: '{}'",
        quoted(id)
    ))
}

/// ai-runner's answer for any other failure to load a LoRA. The reason goes to the log, not
/// to the caller, as in ai-runner; without its second period.
fn unloadable(id: &str, reason: &str) -> Error {
    tracing::warn!(lora = %quoted(id), reason, "cannot load LoRA");
    Error::InvalidInput(format!("Unable to load LoRas for adapter '{}'", quoted(id)))
}
