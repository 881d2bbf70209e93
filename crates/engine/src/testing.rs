//! Helpers for tests, here and in the crates built on the engine: where the reference
//! fixtures are, and how far apart two tensors are.

use std::path::PathBuf;

use candle_core::Tensor;

/// The repository's `tests/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Largest absolute element-wise difference (computed in f32). Panics, naming both shapes,
/// when the shapes differ: a test comparing tensors wants to fail loudly there.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "comparing tensors of different shapes");
    let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).expect("f32 conversion");
    (f32(a) - f32(b))
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("difference of two tensors on one device")
}

/// The names of the diffusers parity cases (`tests/fixtures/diffusers-parity/cases/NAME.json`),
/// sorted. Panics if the folder cannot be read: every parity test needs it.
pub fn parity_case_names() -> Vec<String> {
    let cases = fixtures_dir().join("diffusers-parity/cases");
    let entries = std::fs::read_dir(&cases).unwrap_or_else(|e| panic!("{}: {e}", cases.display()));
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}
