//! Choosing where the engine computes. CPU f32 is the reference; CUDA is behind the `cuda`
//! cargo feature.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => cuda(n.strip_prefix("cuda:").unwrap_or("0")),
        other => Err(Error::InvalidInput(format!(
            "unknown device '{other}' (expected cpu, cuda or cuda:N)"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: &str) -> Result<Device> {
    let n: usize = ordinal
        .parse()
        .map_err(|_| Error::InvalidInput(format!("bad CUDA device number '{ordinal}'")))?;
    Device::new_cuda(n)
        .map_err(|e| Error::InvalidInput(format!("cannot open CUDA device {n}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: &str) -> Result<Device> {
    Err(Error::InvalidInput(
        "this build has no CUDA support (build with `--features cuda`)".into(),
    ))
}

/// The precision models run in: `auto` (the device's default, [`default_dtype`]), `f32`,
/// `f16` or `bf16`.
pub fn parse_dtype(name: &str, device: &Device) -> Result<DType> {
    match name {
        "auto" => Ok(default_dtype(device)),
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::InvalidInput(format!(
            "unknown dtype '{other}' (expected auto, f32, f16 or bf16)"
        ))),
    }
}

/// The precision models run in on a device: f32 on the CPU (the reference), f16 on GPUs.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse("tpu").unwrap_err().to_string().contains("tpu"));
        assert_eq!(parse_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
        assert_eq!(parse_dtype("bf16", &Device::Cpu).unwrap(), DType::BF16);
        assert!(parse_dtype("f8", &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("'f8'"));
        #[cfg(not(feature = "cuda"))]
        assert!(parse("cuda")
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
