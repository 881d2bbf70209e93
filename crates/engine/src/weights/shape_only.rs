//! Shape-only weights: real-size models built from real configs without their gigabytes, for
//! tests that check a whole pipeline loads from a repository's own config files
//! (`tests/real_configs.rs`).
//!
//! Inside [`record`], this thread's [`super::load_files`] reads only the header of each
//! safetensors file and hands out every tensor as zeros broadcast to its shape (one element of
//! memory, whatever the shape), and every [`super::var_builder`] records which of its tensors
//! the model built from it takes, and in which shape. The loaders themselves run unchanged.
//! Outside [`record`] nothing here is reached.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::TensorMap;
use crate::error::{Error, Result};

/// One model built from one tensor map: what the map held and what the model took from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    /// Every tensor of the map: name -> shape.
    pub offered: BTreeMap<String, Vec<usize>>,
    /// The tensors the model asked for, with the shape it asked for.
    pub taken: BTreeMap<String, Vec<usize>>,
}

type Log = Arc<Mutex<Vec<Built>>>;

thread_local! {
    static ACTIVE: RefCell<Option<Log>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's weights loaded as shapes only, and returns what `f` returned
/// with every model built meanwhile, in the order they were built.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Vec<Built>) {
    /// Puts back what was active before, also when `f` panics.
    struct Restore(Option<Log>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            ACTIVE.with(|a| *a.borrow_mut() = previous);
        }
    }
    let log = Log::default();
    let _restore = Restore(ACTIVE.with(|a| a.borrow_mut().replace(log.clone())));
    let out = f();
    let built = lock(&log).clone();
    (out, built)
}

fn lock(log: &Log) -> std::sync::MutexGuard<'_, Vec<Built>> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn active() -> Option<Log> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// Writes a safetensors file declaring `tensors` (name -> shape) in `dtype` whose data is a
/// hole: only the header is written, so the file takes no disk space whatever the sizes (on
/// filesystems with sparse files), and [`record`] loads it as shapes. Outside [`record`] it
/// reads as zeros.
pub fn write_header_only(
    path: &Path,
    dtype: DType,
    tensors: &BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let code = match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        other => {
            return Err(Error::Model(format!(
                "shape-only weights are floating point, not {other:?}"
            )))
        }
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let len = dtype.size_in_bytes() * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": code, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    // The data starts 8-byte aligned, as safetensors' own writer pads it.
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    let io = |e| Error::io(path, e);
    std::fs::write(path, &bytes).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    file.set_len((bytes.len() + offset) as u64).map_err(io)
}

/// The tensors of `files` as zero-memory broadcasts, from the safetensors headers alone.
pub(super) fn load_files(files: &[PathBuf], device: &Device) -> Result<TensorMap> {
    let mut map = TensorMap::new();
    for f in files {
        if f.extension().is_none_or(|e| e != "safetensors") {
            return Err(Error::Model(format!(
                "shape-only loading reads safetensors headers only, not {}",
                f.display()
            )));
        }
        let bad = |e: candle_core::Error| {
            Error::Model(format!("cannot read weights {}: {e}", f.display()))
        };
        // SAFETY: as in `load_files`; only the header is read, the data pages never are.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }.map_err(bad)?;
        for (name, view) in mapped.tensors() {
            let dtype = DType::try_from(view.dtype()).map_err(bad)?;
            let zeros = Tensor::zeros((), dtype, device).and_then(|z| z.broadcast_as(view.shape()));
            map.insert(name, zeros.map_err(bad)?);
        }
    }
    Ok(map)
}

/// A builder over `map` that records what the model takes into `log`.
pub(super) fn var_builder(
    map: TensorMap,
    dtype: DType,
    device: &Device,
    log: Log,
) -> VarBuilder<'static> {
    let offered = map
        .iter()
        .map(|(name, t)| (name.clone(), t.dims().to_vec()))
        .collect();
    let index = {
        let mut built = lock(&log);
        built.push(Built {
            offered,
            taken: BTreeMap::new(),
        });
        built.len() - 1
    };
    let backend = Recording { map, log, index };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// The map's own lookup (missing names and wrong shapes are errors naming the tensor), noting
/// each tensor handed out.
struct Recording {
    map: TensorMap,
    log: Log,
    index: usize,
}

impl Recording {
    fn note(&self, name: &str, dims: &[usize]) {
        lock(&self.log)[self.index]
            .taken
            .insert(name.to_string(), dims.to_vec());
    }

    /// A dtype conversion would allocate the whole tensor: zeros of the asked dtype instead.
    fn in_dtype(t: Tensor, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let broadcast = t.stride().iter().all(|&s| s == 0);
        if t.dtype() == dtype || !broadcast {
            return t.to_dtype(dtype);
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(t.shape())
    }
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        hint: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = self.map.get(name).map(|t| t.dtype());
        let t = SimpleBackend::get(&self.map, shape, name, hint, stored.unwrap_or(dtype), dev)?;
        self.note(name, t.dims());
        Self::in_dtype(t, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = self.map.get(name).map(|t| t.dtype());
        let t = SimpleBackend::get_unchecked(&self.map, name, stored.unwrap_or(dtype), dev)?;
        self.note(name, t.dims());
        Self::in_dtype(t, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_what_each_model_takes_without_reading_data() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("m.safetensors");
        // 4 GiB of f32 declared; nothing of it is read or allocated.
        let tensors = BTreeMap::from([
            ("big".to_string(), vec![1 << 15, 1 << 15]),
            ("unused".to_string(), vec![3]),
        ]);
        write_header_only(&file, DType::F32, &tensors).unwrap();
        let (taken, built) = record(|| {
            let map = super::super::load_files(std::slice::from_ref(&file), &Device::Cpu).unwrap();
            let vb = super::super::var_builder(map, DType::F16, &Device::Cpu);
            let t = vb.get((1 << 15, 1 << 15), "big").unwrap();
            assert_eq!(t.dtype(), DType::F16);
            assert!(vb.get(3, "missing").is_err());
            assert!(vb.get(4, "unused").is_err());
            t.dims().to_vec()
        });
        assert_eq!(taken, vec![1 << 15, 1 << 15]);
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].offered.len(), 2);
        assert_eq!(
            built[0].taken.keys().collect::<Vec<_>>(),
            vec![&"big".to_string()]
        );
        // Outside `record`, loading reads the data again.
        assert!(active().is_none());
    }

    #[test]
    fn pickles_are_refused_naming_the_file() {
        let (e, _) = record(|| {
            super::super::load_files(&[PathBuf::from("x/pytorch_model.bin")], &Device::Cpu)
                .unwrap_err()
                .to_string()
        });
        assert!(e.contains("pytorch_model.bin"), "{e}");
    }
}
