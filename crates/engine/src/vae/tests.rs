//! Parity with diffusers' AutoencoderKL on the fixture models (tests/fixtures/diffusers-parity
//! and tests/fixtures/vae, see make_vae_fixtures.py there), and the errors a broken model
//! folder must produce.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tessera_testkit::{fixtures_dir, max_abs_diff, parity_case_names};

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::weights::TensorMap;

const TOLERANCE: f32 = 1e-4;

fn parity_model(name: &str) -> PathBuf {
    fixtures_dir().join("diffusers-parity").join(name)
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_vae(dir: &Path) -> AutoencoderKl {
    AutoencoderKl::load(dir, None, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    let diff = max_abs_diff(got, expected);
    assert!(
        diff <= TOLERANCE,
        "{what}: max abs difference {diff:e} > {TOLERANCE:e}"
    );
}

/// What the pipelines do with the decoder output: [-1,1] -> [0,1], clamped, NHWC.
fn to_images(decoded: &Tensor) -> Tensor {
    ((decoded / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
}

#[test]
fn decode_matches_every_parity_case() {
    let cases = fixtures_dir().join("diffusers-parity/cases");
    let mut vaes: HashMap<String, AutoencoderKl> = HashMap::new();
    let mut checked = 0;
    for name in parity_case_names() {
        let path = cases.join(format!("{name}.json"));
        let case: serde_json::Value = read_json(&path).unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let vae = vaes
            .entry(model.clone())
            .or_insert_with(|| load_vae(&parity_model(&model).join("vae")));
        // The SD, SDXL and InstructPix2Pix pipelines all decode latents / scaling_factor (the
        // SDXL VAE's force_upcast is a no-op in f32, and these configs have no latents_mean).
        assert!(vae.config().latents_mean.is_none() && vae.config().shift_factor.is_none());
        let expected = load_tensors(&cases.join(format!("{name}.expected.safetensors")));
        let latents = (&expected["latents"] / vae.config().scaling_factor).unwrap();
        let images = to_images(&vae.decode(&latents).unwrap());
        assert_close(&name, &images, &expected["images"]);
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} parity cases found");
}

#[test]
fn encode_matches_diffusers_on_parity_models() {
    let expected = load_tensors(&fixtures_dir().join("vae/encode.safetensors"));
    for model in ["tiny-instruct-pix2pix", "tiny-sd-img2img", "tiny-sdxl"] {
        let vae = load_vae(&parity_model(&format!("models/{model}/vae")));
        assert_eq!(vae.scale_factor(), 8);
        for image in ["square", "wide", "odd"] {
            let posterior = vae.encode(&expected[&format!("input_{image}")]).unwrap();
            let key = |part: &str| &expected[&format!("{model}_{image}_{part}")];
            assert_close(
                &format!("{model} {image} mean"),
                &posterior.mean,
                key("mean"),
            );
            assert_close(
                &format!("{model} {image} logvar"),
                &posterior.logvar,
                key("logvar"),
            );
            assert_close(
                &format!("{model} {image} mode"),
                &posterior.mode(),
                key("mode"),
            );
        }
    }
}

#[test]
fn sample_is_mean_plus_std_times_noise() {
    let expected = load_tensors(&fixtures_dir().join("vae/encode.safetensors"));
    let vae = load_vae(&parity_model("models/tiny-sd-img2img/vae"));
    let posterior = vae.encode(&expected["input_wide"]).unwrap();
    let sample = posterior.sample(&expected["sample_noise"]).unwrap();
    assert_close("posterior sample", &sample, &expected["sample"]);
    let wrong = Tensor::zeros((1, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(posterior.sample(&wrong).is_err());
}

/// Models with what the parity VAEs lack: channel changes (conv_shortcut), two layers per
/// block, 8 groups, legacy attention weight names; no attention and no quant convs.
#[test]
fn other_architectures_match_diffusers() {
    let expected = load_tensors(&fixtures_dir().join("vae/models.safetensors"));
    let inputs = load_tensors(&fixtures_dir().join("vae/encode.safetensors"));
    for (model, scale) in [("legacy-shortcut", 4), ("plain", 2)] {
        let vae = load_vae(&fixtures_dir().join("vae/models").join(model));
        assert_eq!(vae.scale_factor(), scale);
        for image in ["square", "wide", "odd"] {
            let posterior = vae.encode(&inputs[&format!("input_{image}")]).unwrap();
            let key = |part: &str| &expected[&format!("{model}_{image}_{part}")];
            assert_close(
                &format!("{model} {image} mean"),
                &posterior.mean,
                key("mean"),
            );
            assert_close(
                &format!("{model} {image} logvar"),
                &posterior.logvar,
                key("logvar"),
            );
        }
        let decoded = vae
            .decode(&expected[&format!("{model}_decode_in")])
            .unwrap();
        assert_close(
            &format!("{model} decode"),
            &decoded,
            &expected[&format!("{model}_decode_out")],
        );
    }
    let legacy =
        VaeConfig::from_file(&fixtures_dir().join("vae/models/legacy-shortcut/config.json"))
            .unwrap();
    assert_eq!(
        (
            legacy.scaling_factor,
            legacy.shift_factor,
            legacy.force_upcast
        ),
        (0.5, Some(0.1), true)
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = parity_model("models/tiny-sdxl/vae");
    let config = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let mut weights = load_component(&dir, "diffusion_pytorch_model", None, &Device::Cpu).unwrap();
    let name = "decoder.mid_block.attentions.0.to_k.weight";
    weights.remove(name).unwrap();
    let err =
        AutoencoderKl::new(var_builder(weights, DType::F32, &Device::Cpu), config).unwrap_err();
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn unsupported_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let write = |json: &str| std::fs::write(&path, json).unwrap();
    write(
        r#"{"block_out_channels":[32,32],"down_block_types":["DownEncoderBlock2D","AttnDownEncoderBlock2D"],
        "up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D"]}"#,
    );
    let err = VaeConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("AttnDownEncoderBlock2D"), "{err}");
    write(r#"{"act_fn":"gelu","future_key":1}"#);
    let err = VaeConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("gelu"), "{err}");
    // A config built in code is checked too, before any weight is looked up.
    let config = VaeConfig {
        up_block_types: vec!["AttnUpDecoderBlock2D".into()],
        ..VaeConfig::default()
    };
    let vb = var_builder(TensorMap::new(), DType::F32, &Device::Cpu);
    let err = AutoencoderKl::new(vb, config).unwrap_err().to_string();
    assert!(err.contains("AttnUpDecoderBlock2D"), "{err}");
}

#[test]
fn config_defaults_follow_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"block_out_channels":[32,64,64],"down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
        "up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"],"shift_factor":0.0609}"#)
        .unwrap();
    let config = VaeConfig::from_file(&path).unwrap();
    assert_eq!(config.scale_factor(), 4);
    assert_eq!(config.shift_factor, Some(0.0609));
    assert_eq!(config.scaling_factor, 0.18215);
    assert!(
        config.force_upcast
            && config.use_quant_conv
            && config.use_post_quant_conv
            && config.mid_block_add_attention
    );
    assert_eq!(
        (
            config.latent_channels,
            config.layers_per_block,
            config.norm_num_groups
        ),
        (4, 1, 32)
    );
}
