//! A JPEG input gives diffusers' output for the seed, as a PNG input does: instruct-pix2pix on
//! JPEG files decoded as Pillow decodes them (ai-runner's `Image.open(..).convert("RGB")`),
//! against diffusers on the same files (tests/fixtures/jpeg/pipeline.py), noise from the seed
//! alone. The same run on the file as the `image` crate's own JPEG decoder (zune-jpeg) reads
//! it lands measurably off, which shows the check depends on decoding like Pillow.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tessera_engine::image_io::{self, RgbImage};
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::pipelines::{self, EditParams, ImagePipeline};
use tessera_testkit::{fixtures_dir, max_abs_diff};

/// What the pipeline parity cases allow; diffusers and tessera agree to about 1e-5.
const TOLERANCE: f32 = 1e-3;

struct Case {
    name: String,
    image: std::path::PathBuf,
    params: EditParams,
    seed: u64,
    model: std::path::PathBuf,
}

fn cases() -> Vec<Case> {
    let dir = fixtures_dir().join("jpeg");
    let listing: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pipeline_cases.json")).unwrap())
            .unwrap();
    listing["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let p = &case["params"];
            Case {
                name: case["name"].as_str().unwrap().to_string(),
                image: dir.join(case["image"].as_str().unwrap()),
                params: EditParams {
                    prompt: p["prompt"].as_str().unwrap().to_string(),
                    negative_prompt: p["negative_prompt"].as_str().unwrap_or("").to_string(),
                    num_inference_steps: p["num_inference_steps"].as_u64().unwrap() as usize,
                    guidance_scale: p["guidance_scale"].as_f64().unwrap(),
                    image_guidance_scale: p["image_guidance_scale"].as_f64().unwrap(),
                    strength: 0.8,
                },
                seed: case["seed"].as_u64().unwrap(),
                model: dir.join(case["model"].as_str().unwrap()),
            }
        })
        .collect()
}

/// The images and latents of `case` run on `image`, each compared with diffusers'.
fn differences(
    pipe: &dyn ImagePipeline,
    case: &Case,
    image: &RgbImage,
    expected: &[(String, Tensor)],
) -> (f32, f32) {
    let get = |what: &str| {
        let key = format!("{}.{what}", case.name);
        &expected.iter().find(|(k, _)| *k == key).unwrap().1
    };
    let mut noise = TorchCpuNoise::new(case.seed);
    let out = pipe
        .run(&case.params, image, &mut noise, &mut |_, _| {})
        .unwrap();
    (
        max_abs_diff(&out.images, get("images")),
        max_abs_diff(&out.latents, get("latents")),
    )
}

/// The JPEG as the `image` crate's zune-jpeg decodes it.
fn zune_decoded(path: &std::path::Path) -> RgbImage {
    let img = image::open(path).unwrap().into_rgb8();
    RgbImage::new(img.width(), img.height(), img.into_raw()).unwrap()
}

#[test]
fn jpeg_inputs_give_diffusers_output_for_the_seed() {
    let path = fixtures_dir().join("jpeg/pipeline_expected.safetensors");
    let expected: Vec<(String, Tensor)> = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let cases = cases();
    assert_eq!(cases.len(), 2);
    for case in &cases {
        let pipe = pipelines::load(&case.model, &Device::Cpu, DType::F32).unwrap();
        let image = image_io::read(&case.image).unwrap();
        let (images, latents) = differences(pipe.as_ref(), case, &image, &expected);
        eprintln!("{}: images {images:e}, latents {latents:e}", case.name);
        assert!(
            images <= TOLERANCE && latents <= TOLERANCE,
            "{}: images differ by {images}, latents by {latents}",
            case.name
        );
        let zune = zune_decoded(&case.image);
        assert_ne!(zune, image, "{}: zune-jpeg decodes as Pillow", case.name);
        let (images, _) = differences(pipe.as_ref(), case, &zune, &expected);
        eprintln!("{} decoded by zune-jpeg: images {images:e}", case.name);
        assert!(
            images > TOLERANCE,
            "{}: zune-jpeg's pixels give diffusers' output too ({images})",
            case.name
        );
    }
}
