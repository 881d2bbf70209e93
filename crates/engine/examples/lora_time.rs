//! Times `lora::patch` on an SDXL-size UNet: a rank-32 LoRA on every attention projection
//! (to_q, to_k, to_v, to_out.0 of self- and cross-attention: ~1 B weights patched), and the
//! way back to the base weights.
//!
//! The UNet is built once on a builder that only records each tensor's name and shape (and
//! hands out a zero-memory broadcast in its place); the base map then gets random f16 tensors
//! for the projections LoRA touches, broadcast zeros elsewhere. Patching only reads the
//! weights it changes, so the figure is what a real SDXL UNet's patch costs, in ~4 GB.
//!
//! cargo run -p tessera-engine --example lora_time   (the dev profile builds the engine and
//! its dependencies at opt-level 3)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use tessera_engine::lora::{patch, Component, LoraAdapter, LoraModule, ModuleName};
use tessera_engine::unet::{UNet2DConditionModel, UNetConfig};
use tessera_engine::weights::TensorMap;

const RANK: usize = 32;

/// A VarBuilder backend recording the (name, shape) of every tensor a model asks for.
#[derive(Clone, Default)]
struct Shapes(Arc<Mutex<BTreeMap<String, Shape>>>);

impl candle_nn::var_builder::SimpleBackend for Shapes {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), shape.clone());
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a shape is needed")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let dtype = DType::F16;
    let config = UNetConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/archs/sdxl-unet.json"),
    )?;
    let shapes = Shapes::default();
    drop(UNet2DConditionModel::new(
        VarBuilder::from_backend(Box::new(shapes.clone()), dtype, device.clone()),
        config,
    )?);
    let shapes = shapes.0.lock().expect("not poisoned").clone();
    let params: usize = shapes.values().map(Shape::elem_count).sum();

    let projection = regex::Regex::new(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")?;
    let mut base = TensorMap::new();
    let mut modules = Vec::new();
    for (name, shape) in &shapes {
        if !projection.is_match(name) {
            base.insert(
                name.clone(),
                Tensor::zeros((), dtype, &device)?.broadcast_as(shape)?,
            );
            continue;
        }
        let (out, inp) = shape.dims2()?;
        base.insert(
            name.clone(),
            Tensor::randn(0f32, 0.02, (out, inp), &device)?.to_dtype(dtype)?,
        );
        modules.push(LoraModule {
            name: ModuleName::Path(name.trim_end_matches(".weight").to_string()),
            down: Tensor::randn(0f32, 0.02, (RANK, inp), &device)?,
            up: Tensor::randn(0f32, 0.02, (out, RANK), &device)?,
            alpha: RANK as f64,
            rank_stabilized: false,
        });
    }
    let patched_weights: usize = modules
        .iter()
        .map(|m| m.up.dim(0).unwrap_or(0) * m.down.dim(1).unwrap_or(0))
        .sum();
    println!(
        "SDXL UNet: {} tensors, {:.2} B weights ({dtype:?}); LoRA rank {RANK} on {} projections ({:.2} B weights)",
        shapes.len(),
        params as f64 / 1e9,
        modules.len(),
        patched_weights as f64 / 1e9,
    );
    let adapter = Arc::new(LoraAdapter {
        id: "bench/rank32".into(),
        components: BTreeMap::from([(Component::Unet, modules)]),
    });
    for run in 1..=3 {
        let t = Instant::now();
        let patched = patch("unet", &base, &[(adapter.clone(), 0.8)])?;
        let apply = t.elapsed().as_secs_f64() * 1e3;
        // Removing an adapter is going back to the base map: dropping the patched one.
        let t = Instant::now();
        drop(patched);
        let back = base.clone();
        let remove = t.elapsed().as_secs_f64() * 1e3;
        drop(back);
        println!(
            "run {run}: apply {apply:.0} ms, remove {remove:.1} ms ({} threads)",
            candle_core::utils::get_num_threads()
        );
    }
    Ok(())
}
