//! Prompt encoding shared by the pipelines: tokenize, run the text encoder.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::patchable::Patchable;
use crate::clip::{ClipTextConfig, ClipTextModel, ClipTextOutput};
use crate::error::Result;
use crate::lora::LoraAdapter;
use crate::tokenizer::ClipTokenizer;
use crate::weights::TensorMap;

/// A tokenizer and its text encoder, from `tokenizer*/` and `text_encoder*/` of a pipeline.
pub struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: Patchable<ClipTextModel>,
    device: Device,
}

impl TextEncoder {
    /// `encoder_dir` is also the component's name in LoRA files.
    pub fn load(
        root: &Path,
        tokenizer_dir: &str,
        encoder_dir: &'static str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&root.join(tokenizer_dir))?,
            model: Patchable::text_encoder(encoder_dir, &root.join(encoder_dir), dtype, device)?,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        self.model.model().config()
    }

    pub fn has_projection(&self) -> bool {
        self.model.model().has_projection()
    }

    pub fn base(&self) -> (&'static str, &TensorMap) {
        self.model.base()
    }

    pub fn set_loras(&mut self, adapters: &[(Arc<LoraAdapter>, f64)]) -> Result<()> {
        self.model.set_loras(adapters)
    }

    /// Encodes the prompts as one batch (padded to the tokenizer's max length, truncated).
    pub fn encode(&self, prompts: &[&str]) -> Result<ClipTextOutput> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect();
        let ids = Tensor::new(ids, &self.device)?;
        self.model.model().forward(&ids)
    }
}
