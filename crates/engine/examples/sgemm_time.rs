//! Times candle's CPU matmul (the `gemm` crate) on one large f32 product, for comparing the
//! matrix-product engine itself with other BLAS libraries on the same shape.
use candle_core::{Device, Tensor};
fn main() {
    let (m, k, n) = (12288usize, 2880usize, 320usize);
    let a = Tensor::randn(0f32, 1., (m, k), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1., (k, n), &Device::Cpu).unwrap();
    let _ = a.matmul(&b).unwrap();
    let iters = 5;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        let _ = a.matmul(&b).unwrap();
    }
    let dt = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "sgemm {m}x{k} @ {k}x{n}: {:.1} ms, {:.0} GFLOP/s",
        dt * 1e3,
        2.0 * (m * k * n) as f64 / dt / 1e9
    );
}
