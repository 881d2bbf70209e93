//! The GPUs of the machine, for `/hardware/info` and `/hardware/stats`: what ai-runner reads
//! from NVML, read here from `nvidia-smi` (installed with every NVIDIA driver), so that the
//! runner needs no NVML binding. Without it (a CPU-only machine) both maps are empty, as
//! ai-runner's are when NVML cannot start.

use std::collections::BTreeMap;
use std::process::Command;

use tessera_api::wire::{GPUComputeInfo, GPUUtilizationInfo};

/// One GPU as `nvidia-smi` describes it.
#[derive(Debug, Clone, PartialEq)]
struct Gpu {
    index: u32,
    uuid: String,
    name: String,
    memory_total: u64,
    memory_free: u64,
    major: u32,
    minor: u32,
    utilization_compute: u32,
    utilization_memory: u32,
}

const QUERY: &str = "--query-gpu=index,uuid,name,memory.total,memory.free,compute_cap,\
                     utilization.gpu,utilization.memory";

pub fn gpu_info() -> BTreeMap<u32, GPUComputeInfo> {
    gpus()
        .into_iter()
        .map(|g| {
            let info = GPUComputeInfo {
                id: g.uuid,
                name: g.name,
                memory_total: g.memory_total,
                memory_free: g.memory_free,
                major: g.major,
                minor: g.minor,
            };
            (g.index, info)
        })
        .collect()
}

pub fn gpu_stats() -> BTreeMap<u32, GPUUtilizationInfo> {
    gpus()
        .into_iter()
        .map(|g| {
            let stats = GPUUtilizationInfo {
                id: g.uuid,
                name: g.name,
                memory_total: g.memory_total,
                memory_free: g.memory_free,
                utilization_compute: g.utilization_compute,
                utilization_memory: g.utilization_memory,
            };
            (g.index, stats)
        })
        .collect()
}

/// The GPUs `nvidia-smi` lists; none when it is missing or fails.
fn gpus() -> Vec<Gpu> {
    let output = Command::new("nvidia-smi")
        .args([QUERY, "--format=csv,noheader,nounits"])
        .output();
    match output {
        Ok(out) if out.status.success() => parse(&String::from_utf8_lossy(&out.stdout)),
        Ok(out) => {
            tracing::warn!(status = %out.status, "nvidia-smi failed; reporting no GPUs");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// Parses `nvidia-smi`'s CSV lines; memory comes in MiB and is reported in bytes, as NVML
/// reports it. Lines it cannot read are skipped (a field "[N/A]" on some boards).
fn parse(csv: &str) -> Vec<Gpu> {
    csv.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Gpu> {
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    let [index, uuid, name, total, free, cap, util_gpu, util_mem] = f.as_slice() else {
        return None;
    };
    let (major, minor) = cap.split_once('.')?;
    let mib = |s: &str| s.parse::<u64>().ok().map(|v| v * 1024 * 1024);
    Some(Gpu {
        index: index.parse().ok()?,
        uuid: uuid.to_string(),
        name: name.to_string(),
        memory_total: mib(total)?,
        memory_free: mib(free)?,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        utilization_compute: util_gpu.parse().unwrap_or(0),
        utilization_memory: util_mem.parse().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_are_read_in_bytes() {
        let csv = "0, GPU-1234, NVIDIA H100 80GB HBM3, 81559, 80000, 9.0, 3, 1\n\
                   1, GPU-5678, Tesla T4, 15360, [N/A], 7.5, 0, 0\n";
        let gpus = parse(csv);
        assert_eq!(gpus.len(), 1, "the [N/A] line is skipped");
        let g = &gpus[0];
        assert_eq!((g.index, g.uuid.as_str()), (0, "GPU-1234"));
        assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g.memory_total, 81559 * 1024 * 1024);
        assert_eq!((g.major, g.minor), (9, 0));
        assert_eq!((g.utilization_compute, g.utilization_memory), (3, 1));
    }
}
