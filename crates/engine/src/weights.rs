//! Finding and loading a component's weights in the diffusers layout: safetensors or PyTorch
//! `.bin` pickles, each as a single file, a `.fp16` (or other) variant, or shards listed by
//! a `*.safetensors.index.json` / `*.bin.index.json`.
//!
//! Weights are loaded into a plain name -> tensor map. Models are built from that map through
//! a `VarBuilder`, which reports a missing tensor or a shape mismatch by the tensor's name.
//! Keeping the map (rather than building models straight from files) lets LoRA patch a few
//! entries and rebuild a model without touching the base weights.

pub mod pickle;
pub mod shape_only;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{read_json, Error, Result};

pub type TensorMap = HashMap<String, Tensor>;

/// The name PyTorch `.bin` weights take for the safetensors `stem`: transformers saves
/// `model.safetensors` but `pytorch_model.bin`; diffusers uses `diffusion_pytorch_model`
/// for both.
fn bin_stem(stem: &str) -> String {
    match stem {
        "model" => "pytorch_model".to_string(),
        other => other.to_string(),
    }
}

/// The files holding the weights `stem` (e.g. `diffusion_pytorch_model` or `model`) in
/// `dir`. Safetensors come first: a folder with both formats loads its safetensors, and
/// the `.bin` pickles (`pytorch_model.bin`, `diffusion_pytorch_model.bin`, their variants
/// and `*.bin.index.json` shards) are read only when there are none. Within a format, with
/// a `variant` (e.g. `fp16`) the variant is preferred and the plain files are the fallback;
/// without one it is the other way round, since some repositories ship only the variant.
pub fn component_files(dir: &Path, stem: &str, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    // (single file, shard index) per candidate; diffusers and transformers name a
    // variant's shard index `{name}.index.{variant}.json`.
    let candidates_of = |stem: &str, ext: &str| {
        let plain = (format!("{stem}.{ext}"), format!("{stem}.{ext}.index.json"));
        let of_variant = |v: &str| {
            (
                format!("{stem}.{v}.{ext}"),
                format!("{stem}.{ext}.index.{v}.json"),
            )
        };
        match variant {
            Some(v) => vec![of_variant(v), plain],
            None => vec![plain, of_variant("fp16")],
        }
    };
    let bin = bin_stem(stem);
    let mut candidates = candidates_of(stem, "safetensors");
    candidates.extend(candidates_of(&bin, "bin"));
    for (single, index) in &candidates {
        let single = dir.join(single);
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(index);
        if index.is_file() {
            return shard_files(&index);
        }
    }
    Err(Error::Model(format!(
        "no weights in {}: expected {stem}.safetensors or {bin}.bin (or a variant, or a sharded index)",
        dir.display(),
    )))
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let idx: ShardIndex = read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = idx.weight_map.values().collect();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if f.contains('/') || f.contains('\\') || f.contains("..") {
            return Err(Error::Model(format!(
                "{}: shard name '{f}' is not a plain file name",
                index.display()
            )));
        }
        let p = dir.join(f);
        if !p.is_file() {
            return Err(Error::Model(format!(
                "{}: shard {f} is missing",
                index.display()
            )));
        }
        out.push(p);
    }
    Ok(out)
}

/// Loads every tensor of the given files onto `device`, keeping their stored dtype: files
/// named `*.safetensors` as safetensors, anything else as a PyTorch checkpoint (read by
/// [`pickle`], which rebuilds tensors and refuses everything else). Safetensors files are
/// memory-mapped and each tensor copied out once, so a checkpoint does not sit in memory
/// twice while it loads (a 10 GB SDXL UNet would not fit otherwise); a pickle's storages
/// are read one at a time. Inside [`shape_only::record`] only safetensors headers are read.
pub fn load_files(files: &[PathBuf], device: &Device) -> Result<TensorMap> {
    if shape_only::active().is_some() {
        return shape_only::load_files(files, device);
    }
    let mut map = TensorMap::new();
    for f in files {
        if f.extension().is_none_or(|e| e != "safetensors") {
            tracing::debug!(file = %f.display(), "reading PyTorch weights");
            map.extend(pickle::load(f, device)?);
            continue;
        }
        let bad = |e: candle_core::Error| {
            Error::Model(format!("cannot read weights {}: {e}", f.display()))
        };
        // SAFETY: the mapping is read while this function runs and dropped before it returns;
        // model files are not rewritten in place while a model loads (downloads write new blobs).
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }.map_err(bad)?;
        for (name, _) in mapped.tensors() {
            let t = mapped.load(&name, device).map_err(bad)?;
            map.insert(name, t);
        }
    }
    Ok(map)
}

/// Loads the weights `stem` of a component folder.
pub fn load_component(
    dir: &Path,
    stem: &str,
    variant: Option<&str>,
    device: &Device,
) -> Result<TensorMap> {
    load_files(&component_files(dir, stem, variant)?, device)
}

/// A `VarBuilder` over a tensor map, converting to `dtype` as tensors are taken (and, inside
/// [`shape_only::record`], noting what is taken).
pub fn var_builder(map: TensorMap, dtype: DType, device: &Device) -> VarBuilder<'static> {
    if let Some(log) = shape_only::active() {
        return shape_only::var_builder(map, dtype, device, log);
    }
    VarBuilder::from_tensors(map, dtype, device)
}

/// Random weights for a model whose tensor names and shapes are only known once it is built:
/// every tensor a model asks for is made up (normal, std 0.02; norm scales 1) and remembered,
/// so the same weights can then be saved as a checkpoint. Benchmarks use it to get real-size
/// architectures without downloads, and to hand diffusers the very same weights.
#[derive(Clone, Default)]
pub struct RandomWeights {
    made: std::sync::Arc<std::sync::Mutex<TensorMap>>,
}

impl RandomWeights {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder handing out (and recording) random tensors.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Everything handed out so far, in f32 on the CPU (what a checkpoint stores).
    pub fn tensors(&self) -> Result<TensorMap> {
        let made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        made.iter()
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
            .collect()
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _hint: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = made.get(name) {
            return t.to_dtype(dtype);
        }
        let is_norm_scale = shape.rank() == 1 && name.ends_with(".weight") && name.contains("norm");
        let t = if is_norm_scale {
            Tensor::ones(shape, DType::F32, dev)?
        } else {
            Tensor::randn(0f32, 0.02, shape, dev)?
        }
        .to_dtype(dtype)?;
        made.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::safetensors::save;

    fn write(dir: &Path, name: &str, tensors: &[(&str, f32)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, v)| (n.to_string(), Tensor::full(*v, 2, &Device::Cpu).unwrap()))
            .collect();
        save(&map, dir.join(name)).unwrap();
    }

    #[test]
    fn prefers_plain_then_variant() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "model.fp16.safetensors", &[("a", 1.0)]);
        let f = component_files(d.path(), "model", None).unwrap();
        assert!(f[0].ends_with("model.fp16.safetensors"));
        write(d.path(), "model.safetensors", &[("a", 2.0)]);
        let f = component_files(d.path(), "model", None).unwrap();
        assert!(f[0].ends_with("model.safetensors"));
        let f = component_files(d.path(), "model", Some("fp16")).unwrap();
        assert!(f[0].ends_with("model.fp16.safetensors"));
    }

    #[test]
    fn sharded_index_loads_every_shard() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "m-00001.safetensors", &[("a", 1.0)]);
        write(d.path(), "m-00002.safetensors", &[("b", 2.0)]);
        std::fs::write(
            d.path().join("m.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"m-00001.safetensors","b":"m-00002.safetensors"}}"#,
        )
        .unwrap();
        let map = load_component(d.path(), "m", None, &Device::Cpu).unwrap();
        assert_eq!(map.len(), 2);
        let b: Vec<f32> = map["b"].to_vec1().unwrap();
        assert_eq!(b, vec![2.0, 2.0]);
    }

    #[test]
    fn variant_shard_index_uses_diffusers_naming() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "m.fp16-00001-of-00001.safetensors", &[("a", 3.0)]);
        std::fs::write(
            d.path().join("m.safetensors.index.fp16.json"),
            r#"{"weight_map":{"a":"m.fp16-00001-of-00001.safetensors"}}"#,
        )
        .unwrap();
        let f = component_files(d.path(), "m", Some("fp16")).unwrap();
        assert!(f[0].ends_with("m.fp16-00001-of-00001.safetensors"));
    }

    #[test]
    fn missing_shard_and_missing_weights_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("m.safetensors.index.json"),
            r#"{"weight_map":{"a":"gone.safetensors"}}"#,
        )
        .unwrap();
        let e = component_files(d.path(), "m", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.safetensors"), "{e}");
        let e = component_files(d.path(), "other", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other.safetensors or other.bin"), "{e}");
    }

    #[test]
    fn missing_and_mismatched_tensors_name_the_tensor() {
        let mut map = TensorMap::new();
        map.insert(
            "block.weight".into(),
            Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let vb = var_builder(map, DType::F32, &Device::Cpu);
        let e = vb
            .pp("block")
            .get((3, 3), "weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("block.weight"), "{e}");
        let e = vb.pp("block").get((2, 3), "bias").unwrap_err().to_string();
        assert!(e.contains("block.bias"), "{e}");
    }
}
