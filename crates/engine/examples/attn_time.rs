use candle_core::{Device, Tensor};
fn main() {
    let d = Device::Cpu;
    let q = Tensor::randn(0f32, 1., (3, 4096, 320), &d).unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let _ = tessera_engine::ops::attention(&q, &q, &q, 8).unwrap();
        println!(
            "fused attention 3x4096x320 8 heads (64 GFLOP): {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let x: Vec<f32> = (0..10).map(|i| i as f32 * 0.1 - 0.5).collect();
    for v in x {
        println!(
            "erf({v}) = {} vs {}",
            tessera_engine::ops::fast_math::erf(v),
            v
        );
    }
}
