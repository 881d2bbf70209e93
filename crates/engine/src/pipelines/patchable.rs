//! A model kept together with the weights it was built from, so LoRA adapters can be
//! switched: the model is rebuilt from a patched copy of the base map, and from the base map
//! itself when the adapters go, which restores the base weights bit for bit. Rebuilding only
//! looks tensors up (no layer repacks its weights), so it costs what the patching costs.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::error::Result;
use crate::lora::{self, LoraAdapter};
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::weights::{self, TensorMap};

type Build<M> = Box<dyn Fn(TensorMap) -> Result<M> + Send + Sync>;

pub struct Patchable<M> {
    /// The component's name in LoRA files (`unet`, `text_encoder`, `text_encoder_2`).
    component: &'static str,
    base: TensorMap,
    build: Build<M>,
    model: M,
    patched: bool,
}

impl<M> Patchable<M> {
    fn new(
        component: &'static str,
        base: TensorMap,
        build: impl Fn(TensorMap) -> Result<M> + Send + Sync + 'static,
    ) -> Result<Self> {
        let model = build(base.clone())?;
        Ok(Self {
            component,
            base,
            build: Box::new(build),
            model,
            patched: false,
        })
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// (component name, base weights), what `lora::check_compatible` checks adapters against.
    pub fn base(&self) -> (&'static str, &TensorMap) {
        (self.component, &self.base)
    }

    /// Rebuilds the model with `adapters` merged in; none restores the base model. On error
    /// the model is left as it was.
    pub fn set_loras(&mut self, adapters: &[(Arc<LoraAdapter>, f64)]) -> Result<()> {
        if adapters.is_empty() {
            if self.patched {
                self.model = (self.build)(self.base.clone())?;
                self.patched = false;
            }
            return Ok(());
        }
        let weights = lora::patch(self.component, &self.base, adapters)?;
        self.model = (self.build)(weights)?;
        self.patched = true;
        Ok(())
    }
}

impl Patchable<UNet2DConditionModel> {
    /// The UNet of `dir` (`config.json`), with its weights from the folder or from `file`.
    pub fn unet(dir: &Path, file: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let config = UNetConfig::from_file(&dir.join("config.json"))?;
        let base = match file {
            Some(f) => weights::load_files(&[f.to_path_buf()], device)?,
            None => weights::load_component(dir, "diffusion_pytorch_model", None, device)?,
        };
        let device = device.clone();
        Self::new("unet", base, move |w| {
            UNet2DConditionModel::from_weights(config.clone(), w, dtype, &device)
        })
    }
}

impl Patchable<ClipTextModel> {
    /// The text encoder in `dir`, named `component` in LoRA files.
    pub fn text_encoder(
        component: &'static str,
        dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let base = weights::load_component(dir, "model", None, device)?;
        let device = device.clone();
        Self::new(component, base, move |w| {
            ClipTextModel::from_weights(config.clone(), w, dtype, &device)
        })
    }
}
