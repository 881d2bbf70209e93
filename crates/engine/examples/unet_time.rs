use candle_core::{DType, Device, Tensor};
use tessera_engine::unet::{UNet2DConditionModel, UNetConfig};
fn main() {
    let cfg: UNetConfig =
        serde_json::from_str(include_str!("../src/archs/sd15-pix2pix-unet.json")).unwrap();
    let w = tessera_engine::weights::RandomWeights::new();
    let unet = UNet2DConditionModel::new(w.var_builder(DType::F32, &Device::Cpu), cfg).unwrap();
    let b: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(3);
    let x = Tensor::randn(0f32, 1., (b, 8, 64, 64), &Device::Cpu).unwrap();
    let c = Tensor::randn(0f32, 1., (b, 77, 768), &Device::Cpu).unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let y = unet.forward(&x, 500.0, &c, None).unwrap();
        println!("{:?} {:?}", t.elapsed(), y.dims());
    }
}
