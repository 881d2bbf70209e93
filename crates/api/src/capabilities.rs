//! `GET /capabilities`: what an orchestrator offers gateways, model by model.

use serde::{Deserialize, Serialize};

use crate::price::PixelPrice;

/// An orchestrator's offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub models: Vec<OfferedModel>,
}

/// One model an orchestrator serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferedModel {
    pub pipeline: String,
    pub model_id: String,
    /// Loaded now (warm models always are; cold ones after their first request, until
    /// evicted). Gateways prefer these: no load before the first step.
    pub warm: bool,
    #[serde(flatten)]
    pub price: PixelPrice,
    /// Jobs taken at once, and how many of them are free now.
    pub capacity: u32,
    pub free: u32,
}

impl Capabilities {
    /// The offer for `model_id` on the image-to-image pipeline, if any.
    pub fn model(&self, model_id: &str) -> Option<&OfferedModel> {
        self.models
            .iter()
            .find(|m| m.pipeline == crate::defaults::PIPELINE && m.model_id == model_id)
    }
}
