//! LoRA merges against diffusers: the reference weights in tests/fixtures/lora were produced
//! by diffusers + peft (`load_lora_weights`, `set_adapters`, `fuse_lora`) with
//! tests/fixtures/lora/make_reference.py.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use tessera_engine::lora::{check_compatible, patch, LoraAdapter};
use tessera_engine::weights::{load_component, TensorMap};
use tessera_testkit::{fixtures_dir, max_abs_diff};

/// f32 merges agree with torch's to rounding.
const TOLERANCE: f32 = 1e-6;

fn pix2pix(component: &str) -> TensorMap {
    let dir = fixtures_dir().join("diffusers-parity/models/tiny-instruct-pix2pix");
    let stem = if component == "unet" {
        "diffusion_pytorch_model"
    } else {
        "model"
    };
    load_component(&dir.join(component), stem, None, &Device::Cpu).unwrap()
}

struct Reference {
    tensors: TensorMap,
    changed: BTreeSet<String>,
    loras: Vec<(PathBuf, f64)>,
}

fn reference(name: &str) -> Reference {
    let path = fixtures_dir().join(format!("lora/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let changed: Vec<String> = serde_json::from_str(&meta["changed"]).unwrap();
    let loras: Vec<(String, f64)> = serde_json::from_str(&meta["loras"]).unwrap();
    // The script ran from the repository root; paths start with tests/fixtures/.
    let root = fixtures_dir().join("../..");
    Reference {
        tensors: candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap(),
        changed: changed.into_iter().collect(),
        loras: loras.into_iter().map(|(p, s)| (root.join(p), s)).collect(),
    }
}

fn adapter(path: &Path) -> Arc<LoraAdapter> {
    Arc::new(LoraAdapter::from_file(&path.display().to_string(), path).unwrap())
}

/// Patches the pix2pix UNet and text encoder as the reference case says and compares: every
/// weight the reference changed is changed (the stored ones equal to diffusers'), every
/// other weight is bit-identical to the base.
fn check_case(name: &str) {
    let reference = reference(name);
    let adapters: Vec<_> = reference
        .loras
        .iter()
        .map(|(p, s)| (adapter(p), *s))
        .collect();
    let mut compared = 0;
    for component in ["unet", "text_encoder"] {
        let base = pix2pix(component);
        let patched = patch(component, &base, &adapters).unwrap();
        assert_eq!(patched.len(), base.len());
        for (weight, original) in &base {
            let key = format!("{component}/{weight}");
            let ours = &patched[weight];
            if !reference.changed.contains(&key) {
                assert_eq!(max_abs_diff(ours, original), 0.0, "{name}: {key} moved");
                continue;
            }
            assert!(
                max_abs_diff(ours, original) > 0.0,
                "{name}: {key} not patched"
            );
            if let Some(theirs) = reference.tensors.get(&key) {
                // The update itself is far larger than the tolerance: this compares LoRAs.
                assert!(
                    max_abs_diff(theirs, original) > 1e-3,
                    "{name}: {key}: tiny update"
                );
                let d = max_abs_diff(ours, theirs);
                assert!(
                    d <= TOLERANCE,
                    "{name}: {key} differs from diffusers by {d}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(
        compared,
        reference.tensors.len(),
        "{name}: reference tensors not all in the model"
    );
}

#[test]
fn peft_fixture_matches_diffusers() {
    check_case("merged_peft_fixture");
}

#[test]
fn kohya_fixture_matches_diffusers() {
    check_case("merged_kohya_fixture");
}

#[test]
fn kohya_conv_and_text_encoder_lora_matches_diffusers() {
    check_case("merged_kohya_conv_te");
}

#[test]
fn peft_lora_with_adapter_metadata_matches_diffusers() {
    check_case("merged_peft_meta");
}

#[test]
fn two_adapters_on_shared_weights_match_diffusers() {
    check_case("merged_two_adapters");
}

/// `pytorch_lora_weights.safetensors` as diffusers' training scripts wrote it before peft:
/// UNet `….to_q.lora.down.weight`, text encoder `….q_proj.lora_linear_layer.down.weight`
/// (tests/fixtures/lora/make_formats.py).
#[test]
fn diffusers_trained_lora_matches_diffusers() {
    check_case("merged_diffusers_trained");
}

/// diffusers ≤ 0.20's attention-processor keys: `….attn1.processor.to_q_lora.down.weight`,
/// `to_out_lora`, in the UNet and the text encoder.
#[test]
fn diffusers_attention_processor_lora_matches_diffusers() {
    check_case("merged_diffusers_attn_procs");
}

#[test]
fn factors_and_alphas_are_read_per_format() {
    let lora = fixtures_dir().join("lora/kohya-conv-te.safetensors");
    let a = adapter(&lora);
    let conv = a
        .components
        .values()
        .flatten()
        .find(|m| m.name.to_string() == "down_blocks_0_resnets_0_conv1")
        .unwrap();
    assert_eq!(
        (conv.rank(), conv.kernel(), conv.alpha),
        (2, Some((3, 3)), 1.0)
    );
    let meta = adapter(&fixtures_dir().join("lora/peft-meta.safetensors"));
    let alphas: Vec<(String, f64)> = meta
        .components
        .values()
        .flatten()
        .map(|m| (m.name.to_string(), m.alpha))
        .collect();
    // lora_alpha 4 for the UNet but alpha_pattern {"ff.net.2": 1}; 3 for the text encoder.
    assert!(
        alphas.contains(&("down_blocks.0.resnets.0.conv1".into(), 4.0)),
        "{alphas:?}"
    );
    assert!(alphas.contains(&(
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2".into(),
        1.0
    )));
    assert!(alphas.contains(&("encoder.layers.0.self_attn.q_proj".into(), 3.0)));
    let peft =
        adapter(&fixtures_dir().join("diffusers-parity/loras/tiny-pix2pix-lora.safetensors"));
    assert!(peft
        .components
        .values()
        .flatten()
        .all(|m| m.alpha == m.rank() as f64));
    // The pre-peft diffusers layouts carry no alpha: scale 1, as diffusers merges them.
    for file in [
        "diffusers-trained.safetensors",
        "diffusers-attn-procs.safetensors",
    ] {
        let a = adapter(&fixtures_dir().join("lora").join(file));
        assert!(
            a.components
                .values()
                .flatten()
                .all(|m| m.alpha == m.rank() as f64 && m.scaling() == 1.0),
            "{file}"
        );
    }
}

#[test]
fn base_weights_come_back_exactly_after_switching_adapters() {
    let base = pix2pix("unet");
    let saved: TensorMap = base
        .iter()
        .map(|(k, t)| (k.clone(), t.copy().unwrap()))
        .collect();
    let peft =
        adapter(&fixtures_dir().join("diffusers-parity/loras/tiny-pix2pix-lora.safetensors"));
    let kohya =
        adapter(&fixtures_dir().join("diffusers-parity/loras/tiny-pix2pix-lora-kohya.safetensors"));
    let first = patch("unet", &base, &[(peft.clone(), 1.0)]).unwrap();
    let second = patch("unet", &base, &[(kohya, 0.5), (peft.clone(), 0.1)]).unwrap();
    let name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    assert!(max_abs_diff(&first[name], &second[name]) > 1e-3);
    for (k, t) in &saved {
        assert_eq!(max_abs_diff(&base[k], t), 0.0, "{k}: the base map changed");
    }
    // Strength 0 leaves every weight as it is.
    let none = patch("unet", &base, &[(peft, 0.0)]).unwrap();
    for (k, t) in &saved {
        assert_eq!(max_abs_diff(&none[k], t), 0.0, "{k}");
    }
}

#[test]
fn half_precision_weights_are_patched_in_f32_and_stay_half() {
    let base = pix2pix("unet");
    let half: TensorMap = base
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::F16).unwrap()))
        .collect();
    let peft =
        adapter(&fixtures_dir().join("diffusers-parity/loras/tiny-pix2pix-lora.safetensors"));
    let full = patch("unet", &base, &[(peft.clone(), 1.2)]).unwrap();
    let patched = patch("unet", &half, &[(peft, 1.2)]).unwrap();
    let name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    assert_eq!(patched[name].dtype(), DType::F16);
    let rounded = full[name].to_dtype(DType::F16).unwrap();
    // The only difference to the f32 merge is the rounding of W to f16 before it.
    assert!(max_abs_diff(&patched[name], &rounded) < 2e-3);
}

#[test]
fn a_lora_for_missing_components_is_incompatible() {
    let lora = fixtures_dir().join("lora/kohya-conv-te.safetensors");
    let a = LoraAdapter::from_file("style/te", &lora).unwrap();
    let unet = pix2pix("unet");
    let te = pix2pix("text_encoder");
    check_compatible(&a, &[("unet", &unet), ("text_encoder", &te)]).unwrap();
    let e = check_compatible(&a, &[("unet", &unet)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "LoRa incompatible with base model: 'style/te'"
    );
    assert!(matches!(e, tessera_engine::Error::InvalidInput(_)));
}

#[test]
fn a_lora_for_another_unet_is_incompatible() {
    let sdxl = fixtures_dir().join("diffusers-parity/models/tiny-sdxl/unet");
    let sdxl = load_component(&sdxl, "diffusion_pytorch_model", None, &Device::Cpu).unwrap();
    for file in [
        "tiny-pix2pix-lora.safetensors",
        "tiny-pix2pix-lora-kohya.safetensors",
    ] {
        let path = fixtures_dir().join("diffusers-parity/loras").join(file);
        let a = Arc::new(LoraAdapter::from_file("x/pix2pix-lora", &path).unwrap());
        let e = patch("unet", &sdxl, &[(a.clone(), 1.0)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LoRa incompatible with base model: 'x/pix2pix-lora'",
            "{file}"
        );
        assert!(check_compatible(&a, &[("unet", &sdxl)]).is_err());
    }
}

#[test]
fn a_shape_that_does_not_fit_is_incompatible() {
    let base = pix2pix("unet");
    let mut tensors = TensorMap::new();
    let module = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    // to_q is 32x32; a LoRA made for 64 inputs does not fit it.
    tensors.insert(
        format!("{module}.lora_A.weight"),
        Tensor::ones((2, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        format!("{module}.lora_B.weight"),
        Tensor::ones((32, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let bytes = safetensors_bytes(&tensors);
    let a = Arc::new(LoraAdapter::from_bytes("x/wide", &bytes).unwrap());
    let e = patch("unet", &base, &[(a, 1.0)]).unwrap_err();
    assert_eq!(e.to_string(), "LoRa incompatible with base model: 'x/wide'");
}

fn safetensors_bytes(tensors: &TensorMap) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    std::fs::read(path).unwrap()
}
