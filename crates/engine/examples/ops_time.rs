use candle_core::{DType, Device, Module, Tensor};
fn time<F: FnMut() -> Tensor>(name: &str, mut f: F) {
    let _ = f();
    let t = std::time::Instant::now();
    let n = 3;
    for _ in 0..n {
        let _ = f();
    }
    println!(
        "{name}: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}
fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (3, 320, 64, 64), &d).unwrap();
    let w = tessera_engine::weights::RandomWeights::new();
    let vb = w.var_builder(DType::F32, &d);
    let conv = tessera_engine::ops::Conv2d::new(vb.pp("c"), 320, 320, 3, 1, 1).unwrap();
    time("conv3x3 320->320 64x64 b3 (22.6 GFLOP)", || {
        conv.forward(&x).unwrap()
    });
    let gn = tessera_engine::ops::GroupNorm::new(vb.pp("gn"), 32, 320, 1e-5).unwrap();
    time("groupnorm+silu 3x320x64x64", || {
        gn.forward_silu(&x).unwrap()
    });
    let q = Tensor::randn(0f32, 1., (3, 4096, 320), &d).unwrap();
    time("attention 3x4096x320 8 heads (12.9 GFLOP)", || {
        tessera_engine::ops::attention(&q, &q, &q, 8).unwrap()
    });
    let lin = candle_nn::linear(320, 320, vb.pp("l")).unwrap();
    time("linear 3x4096x320x320 (2.5 GFLOP)", || {
        lin.forward(&q).unwrap()
    });
    time("add 3x320x64x64", || (&x + &x).unwrap());
    time("transpose-contiguous 3x320x4096", || {
        x.reshape((3, 320, 4096))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    });
    time("gelu_erf 3x4096x1280", || {
        q.repeat((1, 1, 4)).unwrap().gelu_erf().unwrap()
    });
    time("repeat 3x4096x1280", || q.repeat((1, 1, 4)).unwrap());
    let b = Tensor::randn(0f32, 1., (24, 4096, 40), &d).unwrap();
    let bt = b.transpose(1, 2).unwrap().contiguous().unwrap();
    time("bmm scores 24x1024x40 @ 40x4096 (8 GFLOP/4)", || {
        b.narrow(1, 0, 1024).unwrap().matmul(&bt).unwrap()
    });
    let s = Tensor::randn(0f32, 1., (24, 1024, 4096), &d).unwrap();
    time("softmax 24x1024x4096", || {
        candle_nn::ops::softmax_last_dim(&s).unwrap()
    });
}
