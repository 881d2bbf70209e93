//! Prompt encoding shared by the pipelines: tokenize, run the text encoder.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::clip::{ClipTextConfig, ClipTextModel, ClipTextOutput};
use crate::error::Result;
use crate::tokenizer::ClipTokenizer;

/// A tokenizer and its text encoder, from `tokenizer*/` and `text_encoder*/` of a pipeline.
pub struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: ClipTextModel,
    device: Device,
}

impl TextEncoder {
    pub fn load(
        root: &Path,
        tokenizer_dir: &str,
        encoder_dir: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&root.join(tokenizer_dir))?,
            model: ClipTextModel::load(&root.join(encoder_dir), None, dtype, device)?,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        self.model.config()
    }

    pub fn has_projection(&self) -> bool {
        self.model.has_projection()
    }

    /// Encodes the prompts as one batch (padded to the tokenizer's max length, truncated).
    pub fn encode(&self, prompts: &[&str]) -> Result<ClipTextOutput> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect();
        let ids = Tensor::new(ids, &self.device)?;
        self.model.forward(&ids)
    }
}
