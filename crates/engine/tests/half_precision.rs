//! Half precision: pipeline cases run with the UNet and text encoders in f16 and bf16
//! (the VAE as each pipeline decides: f32 where `force_upcast` asks) stays within 2/255 of
//! the f32 reference output. On the CPU always; on CUDA too when built with the `cuda`
//! feature and a GPU is present.

use candle_core::{DType, Device};
use serde_json::Value;
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::{self, EditParams, Overrides};
use tessera_testkit::{fixtures_dir, max_abs_diff};

/// The bar: two 8-bit levels.
const TOLERANCE: f32 = 2.0 / 255.0;

fn params(case: &Value) -> EditParams {
    let p = &case["params"];
    EditParams {
        prompt: p["prompt"].as_str().unwrap().into(),
        negative_prompt: p["negative_prompt"].as_str().unwrap_or("").into(),
        num_inference_steps: p["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: p["guidance_scale"].as_f64().unwrap(),
        image_guidance_scale: p["image_guidance_scale"].as_f64().unwrap_or(1.5),
        strength: p["strength"].as_f64().unwrap_or(0.8),
    }
}

/// The largest difference between `dtype` and f32 output over the cases, on `device`.
fn check(device: &Device, dtype: DType) {
    let dir = fixtures_dir().join("diffusers-parity");
    for name in ["pix2pix_basic", "sd_img2img", "sdxl_img2img"] {
        let text = std::fs::read_to_string(dir.join(format!("cases/{name}.json"))).unwrap();
        let case: Value = serde_json::from_str(&text).unwrap();
        let model = dir.join(case["model"].as_str().unwrap());
        let image =
            tessera_engine::image_io::read(&dir.join(case["image"].as_str().unwrap())).unwrap();
        let run = |dtype| {
            let pipe = pipelines::load_with(&model, &Overrides::default(), device, dtype).unwrap();
            let mut noise = TorchCpuNoise::new(case["seed"].as_u64().unwrap());
            pipe.run(&params(&case), &image, &mut noise, &mut |_, _| {})
                .unwrap()
                .images
                .to_device(&Device::Cpu)
                .unwrap()
        };
        let d = max_abs_diff(&run(dtype), &run(DType::F32));
        eprintln!("{name} {dtype:?} on {device:?}: {d:e} from f32");
        assert!(d <= TOLERANCE, "{name}: {dtype:?} differs from f32 by {d}");
    }
}

/// bf16 is CUDA only: candle's CPU backend has no bf16 matrix product.
#[test]
fn f16_on_the_cpu_stays_within_two_levels_of_f32() {
    check(&Device::Cpu, DType::F16);
}

#[cfg(feature = "cuda")]
#[test]
fn f16_and_bf16_on_cuda_stay_within_two_levels_of_f32() {
    // Without a GPU there is nothing to compare; the CPU test above still runs.
    let Ok(device) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: CUDA half precision not checked");
        return;
    };
    check(&device, DType::F16);
    check(&device, DType::BF16);
}
