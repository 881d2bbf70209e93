//! Merging LoRA updates into a copy of a component's weights.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::adapter::{Component, LoraAdapter, LoraModule};
use super::incompatible;
use super::targets::Targets;
use crate::error::{Error, Result};
use crate::weights::TensorMap;

/// The weights of `component` (`"unet"`, `"text_encoder"` or `"text_encoder_2"`) with the
/// adapters merged in at their strengths: `W + Σ strength·scaling·(up·down)`, computed in f32
/// and stored back in each weight's own dtype and device. Entries no adapter touches share
/// their storage with `base`, which is left as it is.
///
/// An adapter whose modules for this component are not all in `base`, or do not fit the
/// weight's shape, is refused as incompatible, naming the adapter.
pub fn patch(
    component: &str,
    base: &TensorMap,
    adapters: &[(Arc<LoraAdapter>, f64)],
) -> Result<TensorMap> {
    let component = parse_component(component)?;
    let plan: Vec<_> = plan(component, base, adapters.iter().map(|(a, s)| (&**a, *s)))?
        .into_iter()
        .collect();
    // Weights merge independently of one another: spread them over the cores (an SDXL
    // UNet's attention projections alone are a billion weights to convert and add).
    let merged: Vec<Option<(String, Tensor)>> = plan
        .par_iter()
        .map(|(target, updates)| {
            merge_one(&base[*target], updates).map(|m| m.map(|t| (target.to_string(), t)))
        })
        .collect::<Result<_>>()?;
    let mut patched = base.clone();
    patched.extend(merged.into_iter().flatten());
    Ok(patched)
}

/// `weight` with `updates` added, or None when every update has strength 0. All updates
/// of a weight are one matrix product: the up factors, each scaled by its strength, side by
/// side, times the down factors stacked (`Σ s·up·down = [s₁up₁ s₂up₂]·[down₁; down₂]`), so the
/// weight-sized tensors are made and added once however many adapters there are.
fn merge_one(weight: &Tensor, updates: &[(&LoraModule, f64)]) -> Result<Option<Tensor>> {
    let device = weight.device();
    let out = weight.dim(0)?;
    let mut ups = Vec::with_capacity(updates.len());
    let mut downs = Vec::with_capacity(updates.len());
    for (module, strength) in updates {
        let factor = strength * module.scaling();
        if factor == 0.0 {
            continue;
        }
        let rank = module.rank();
        ups.push((module.up.to_device(device)?.reshape((out, rank))? * factor)?);
        let down = module.down.to_device(device)?;
        downs.push(down.reshape((rank, down.elem_count() / rank))?);
    }
    if ups.is_empty() {
        return Ok(None);
    }
    let delta = Tensor::cat(&ups, 1)?
        .matmul(&Tensor::cat(&downs, 0)?)?
        .reshape(weight.shape())?;
    Ok(Some(
        (weight.to_dtype(DType::F32)? + delta)?.to_dtype(weight.dtype())?,
    ))
}

/// Checks, before anything is computed, that `adapter` fits a pipeline whose components are
/// `components` (name and base weights): every component it patches is there, and every one
/// of its modules finds a weight of a fitting shape. A LoRA for another architecture (an SDXL
/// LoRA on instruct-pix2pix) is refused as incompatible.
pub fn check_compatible(adapter: &LoraAdapter, components: &[(&str, &TensorMap)]) -> Result<()> {
    let mut have = Vec::with_capacity(components.len());
    for (name, base) in components {
        have.push((parse_component(name)?, *base));
    }
    for &component in adapter.components.keys() {
        let (_, base) = have.iter().find(|(c, _)| *c == component).ok_or_else(|| {
            tracing::warn!(
                lora = adapter.id,
                component = component.name(),
                "the pipeline has no such component"
            );
            incompatible(&adapter.id)
        })?;
        plan(component, base, [(adapter, 1.0)])?;
    }
    Ok(())
}

fn parse_component(name: &str) -> Result<Component> {
    Component::from_name(name).ok_or_else(|| {
        Error::Model(format!(
            "LoRA: no component '{name}' (expected unet, text_encoder or text_encoder_2)"
        ))
    })
}

/// The updates per target weight, in adapter order, every module located and its shape
/// checked against its weight.
fn plan<'a, 'b>(
    component: Component,
    base: &'b TensorMap,
    adapters: impl IntoIterator<Item = (&'a LoraAdapter, f64)>,
) -> Result<BTreeMap<&'b str, Vec<(&'a LoraModule, f64)>>> {
    let targets = Targets::new(component, base);
    let mut plan: BTreeMap<&str, Vec<(&LoraModule, f64)>> = BTreeMap::new();
    for (adapter, strength) in adapters {
        for module in adapter.modules(component) {
            let refuse = |why: String| {
                tracing::warn!(lora = adapter.id, module = %module.name, component = component.name(), why);
                incompatible(&adapter.id)
            };
            let target = targets
                .find(&module.name)
                .ok_or_else(|| refuse("the base model has no such module".into()))?;
            fits(module, &base[target]).map_err(refuse)?;
            plan.entry(target).or_default().push((module, strength));
        }
    }
    Ok(plan)
}

/// Whether `module`'s update has the shape of `weight`: the same output size, and the down
/// factor's input (times its kernel) equal to the weight's. A 1x1 conv and a linear layer are
/// the same map, so either kind of LoRA fits either kind of weight; larger kernels must match.
fn fits(module: &LoraModule, weight: &Tensor) -> std::result::Result<(), String> {
    let (w, down, up) = (weight.dims(), module.down.dims(), module.up.dims());
    let w_kernel = match w {
        [_, _] => (1, 1),
        [_, _, kh, kw] => (*kh, *kw),
        _ => {
            return Err(format!(
                "the weight has shape {w:?}, not a linear or conv layer"
            ))
        }
    };
    let lora_kernel = module.kernel().unwrap_or((1, 1));
    if up[0] == w[0] && down[1] == w[1] && lora_kernel == w_kernel {
        Ok(())
    } else {
        Err(format!(
            "factors {down:?} (down) and {up:?} (up) do not fit the weight's shape {w:?}"
        ))
    }
}
