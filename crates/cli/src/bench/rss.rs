//! Peak resident memory of this process, from Linux's /proc. Elsewhere the figures are absent.

/// Resets the peak ("VmHWM") to the current resident size, so that the next reading is the
/// peak of what runs in between. Returns whether the kernel accepted it (Linux 4.0+).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident size in bytes since start or since the last reset.
pub fn peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
