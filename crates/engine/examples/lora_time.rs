//! Times `lora::patch` on an SDXL-size UNet: a rank-32 LoRA on every attention projection
//! (to_q, to_k, to_v, to_out.0 of self- and cross-attention: ~1 B weights patched).
//!
//! The base weights are random f16 tensors (what a GPU serves; half the memory of f32), made
//! by building `UNet2DConditionModel` on a `candle_nn::VarMap`, which keeps the weights in the
//! dtype asked for. `RandomWeights` would hand them out as an f32 copy, 10 GB more.
//!
//! Building the UNet makes transient copies of its weights: the run peaks at about 18 GB.
//!
//! cargo run -p tessera-engine --example lora_time

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tessera_engine::lora::{patch, Component, LoraAdapter, LoraModule, ModuleName};
use tessera_engine::unet::{UNet2DConditionModel, UNetConfig};
use tessera_engine::weights::TensorMap;

const RANK: usize = 32;

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let config = UNetConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/archs/sdxl-unet.json"),
    )?;
    let t = Instant::now();
    let varmap = VarMap::new();
    drop(UNet2DConditionModel::new(
        VarBuilder::from_varmap(&varmap, DType::F16, &device),
        config,
    )?);
    let base: TensorMap = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let params: usize = base.values().map(Tensor::elem_count).sum();
    println!(
        "SDXL UNet: {} tensors, {:.2} B weights (f16), made in {:.1} s",
        base.len(),
        params as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );

    let projection = regex::Regex::new(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")?;
    let mut modules = Vec::new();
    for (name, w) in &base {
        if !projection.is_match(name) {
            continue;
        }
        let (out, inp) = w.dims2()?;
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
    let count = modules.len();
    let adapter = Arc::new(LoraAdapter {
        id: "bench/rank32".into(),
        components: BTreeMap::from([(Component::Unet, modules)]),
    });
    for run in 1..=2 {
        let t = Instant::now();
        let patched = patch("unet", &base, &[(adapter.clone(), 0.8)])?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "run {run}: patched {count} projections ({:.2} B weights) in {ms:.0} ms on {} threads",
            patched_weights as f64 / 1e9,
            candle_core::utils::get_num_threads()
        );
        drop(patched);
    }
    Ok(())
}
