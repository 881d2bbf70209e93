//! The UNet against diffusers' UNet2DConditionModel on the same weights and inputs
//! (tests/fixtures/unet/make.py): SD, pix2pix (8 channels), SDXL text_time, per-block heads,
//! linear projections, several transformer layers, odd latent sizes.

use std::path::PathBuf;
use tessera_testkit::{fixtures_dir, max_abs_diff};

use candle_core::{DType, Device};
use tessera_engine::unet::{AddedConditioning, UNet2DConditionModel};

fn check(name: &str, dir: PathBuf) {
    let dev = Device::Cpu;
    let refs =
        candle_core::safetensors::load(fixtures_dir().join("unet/reference.safetensors"), &dev)
            .unwrap();
    let unet = UNet2DConditionModel::load(&dir, None, DType::F32, &dev).unwrap();
    for size in ["8x8", "10x8"] {
        let key = |k: &str| refs[&format!("{name}/{size}/{k}")].clone();
        let t: Vec<f64> = key("timestep").to_vec1().unwrap();
        let added = refs
            .contains_key(&format!("{name}/{size}/text_embeds"))
            .then(|| AddedConditioning {
                text_embeds: key("text_embeds"),
                time_ids: key("time_ids"),
            });
        let out = unet
            .forward(&key("sample"), t[0], &key("context"), added.as_ref())
            .unwrap();
        let err = max_abs_diff(&out, &key("out"));
        eprintln!("{name} {size}: {err}");
        assert!(err < 1e-4, "{name} {size}: max abs error {err}");
    }
}

#[test]
fn pix2pix_unet_matches_diffusers() {
    check(
        "tiny-instruct-pix2pix",
        fixtures_dir().join("diffusers-parity/models/tiny-instruct-pix2pix/unet"),
    );
}

#[test]
fn sd_unet_matches_diffusers() {
    check(
        "tiny-sd-img2img",
        fixtures_dir().join("diffusers-parity/models/tiny-sd-img2img/unet"),
    );
}

#[test]
fn sdxl_unet_with_text_time_matches_diffusers() {
    check(
        "tiny-sdxl",
        fixtures_dir().join("diffusers-parity/models/tiny-sdxl/unet"),
    );
}

#[test]
fn per_block_heads_and_linear_projection_match_diffusers() {
    check(
        "linear-two-layers",
        fixtures_dir().join("unet/models/linear-two-layers"),
    );
}

#[test]
fn per_block_transformer_layers_match_diffusers() {
    check(
        "three-blocks",
        fixtures_dir().join("unet/models/three-blocks"),
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = fixtures_dir().join("diffusers-parity/models/tiny-instruct-pix2pix/unet");
    let cfg = tessera_engine::unet::UNetConfig::from_file(&dir.join("config.json")).unwrap();
    let mut map = tessera_engine::weights::load_component(
        &dir,
        "diffusion_pytorch_model",
        None,
        &Device::Cpu,
    )
    .unwrap();
    map.remove("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    let vb = tessera_engine::weights::var_builder(map, DType::F32, &Device::Cpu);
    let err = UNet2DConditionModel::new(vb, cfg).unwrap_err().to_string();
    assert!(
        err.contains("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
        "{err}"
    );
}
