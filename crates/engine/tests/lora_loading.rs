//! Finding, reading and caching LoRA files, and what each failure says to the caller.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use tessera_engine::hub::{link_as_hub_cache, ModelStore};
use tessera_engine::lora::{patch, resolve_lora, LoraAdapter, LoraCache, LORA_CACHE_CAPACITY};
use tessera_engine::weights::{load_component, TensorMap};
use tessera_engine::Error;
use tessera_testkit::{fixtures_dir, max_abs_diff};

fn fixture_lora() -> PathBuf {
    fixtures_dir().join("diffusers-parity/loras/tiny-pix2pix-lora.safetensors")
}

fn offline_store(dir: &Path) -> ModelStore {
    ModelStore::new(dir).with_downloads(false)
}

/// The message of an `InvalidInput` error (the only kind LoRA failures are).
fn message<T: std::fmt::Debug>(r: tessera_engine::Result<T>) -> String {
    match r {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// A hub-cache model directory holding repository `id` with `files` (copies of the fixture LoRA).
fn repo_with(cache: &Path, id: &str, files: &[&str]) {
    let folder = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(fixture_lora(), folder.path().join(f)).unwrap();
    }
    link_as_hub_cache(folder.path(), cache, id).unwrap();
    // The links point into `folder`: keep it.
    std::mem::forget(folder);
}

#[test]
fn a_repository_with_one_weights_file_resolves_to_it() {
    let cache = tempfile::tempdir().unwrap();
    repo_with(
        cache.path(),
        "org/style",
        &["my_style.safetensors", "README.txt"],
    );
    let path = resolve_lora(&offline_store(cache.path()), "org/style").unwrap();
    assert!(path.ends_with("my_style.safetensors"), "{}", path.display());
}

#[test]
fn among_several_files_the_conventional_name_wins() {
    let cache = tempfile::tempdir().unwrap();
    repo_with(
        cache.path(),
        "org/style",
        &[
            "a.safetensors",
            "pytorch_lora_weights.safetensors",
            "optimizer.safetensors",
        ],
    );
    let path = resolve_lora(&offline_store(cache.path()), "org/style").unwrap();
    assert!(path.ends_with("pytorch_lora_weights.safetensors"));
}

#[test]
fn several_unconventional_files_are_an_error_naming_them() {
    let cache = tempfile::tempdir().unwrap();
    repo_with(
        cache.path(),
        "org/style",
        &["b.safetensors", "a.safetensors"],
    );
    let m = message(resolve_lora(&offline_store(cache.path()), "org/style"));
    assert_eq!(
        m,
        "Unable to load LoRas for adapter 'org/style': the repository holds several weight files \
         (a.safetensors, b.safetensors) and none is named pytorch_lora_weights.safetensors or \
         adapter_model.safetensors"
    );
}

#[test]
fn missing_loras_are_not_found() {
    let cache = tempfile::tempdir().unwrap();
    let store = offline_store(cache.path());
    assert_eq!(
        message(resolve_lora(&store, "org/nothing")),
        "LoRa repository 'org/nothing' not found"
    );
    let missing = cache.path().join("gone.safetensors").display().to_string();
    assert_eq!(
        message(resolve_lora(&store, &missing)),
        format!("LoRa repository '{missing}' not found")
    );
    assert_eq!(
        message(resolve_lora(&store, "/etc/passwd")),
        "LoRa repository '/etc/passwd' not found"
    );
}

#[test]
fn unsafe_ids_are_refused_before_any_path_is_built() {
    let cache = tempfile::tempdir().unwrap();
    let m = message(resolve_lora(&offline_store(cache.path()), "../../etc"));
    assert!(m.starts_with("invalid LoRa id '../../etc': "), "{m}");
}

#[test]
fn a_local_file_is_used_as_it_is() {
    let cache = tempfile::tempdir().unwrap();
    let id = fixture_lora().display().to_string();
    assert_eq!(
        resolve_lora(&offline_store(cache.path()), &id).unwrap(),
        fixture_lora()
    );
}

fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let map: TensorMap = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn ones(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn unreadable_files_are_unable_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    let unknown = write(
        dir.path(),
        "unknown.safetensors",
        &[("model.diffusion_model.w", ones(&[2, 2]))],
    );
    let half = write(
        dir.path(),
        "half.safetensors",
        &[("lora_unet_conv_in.lora_down.weight", ones(&[2, 4, 3, 3]))],
    );
    let bad_rank = write(
        dir.path(),
        "rank.safetensors",
        &[
            ("unet.conv_in.lora_A.weight", ones(&[2, 4])),
            ("unet.conv_in.lora_B.weight", ones(&[32, 3])),
        ],
    );
    let empty = write(dir.path(), "empty.safetensors", &[]);
    for path in [garbage, unknown, half, bad_rank, empty] {
        let m = message(LoraAdapter::from_file("org/broken", &path));
        assert_eq!(
            m,
            "Unable to load LoRas for adapter 'org/broken'",
            "{}",
            path.display()
        );
    }
}

#[test]
fn the_cache_keeps_the_twelve_most_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = offline_store(dir.path());
    let ids: Vec<String> = (0..=LORA_CACHE_CAPACITY)
        .map(|i| {
            let p = dir.path().join(format!("lora{i}.safetensors"));
            std::fs::copy(fixture_lora(), &p).unwrap();
            p.display().to_string()
        })
        .collect();
    let mut cache = LoraCache::new();
    let first = cache.get_or_load(&store, &ids[0]).unwrap();
    for id in &ids[1..LORA_CACHE_CAPACITY] {
        cache.get_or_load(&store, id).unwrap();
    }
    // A hit hands out the same adapter and makes it the most recently used...
    assert!(Arc::ptr_eq(
        &first,
        &cache.get_or_load(&store, &ids[0]).unwrap()
    ));
    // ...so the thirteenth evicts the second, not the first.
    cache
        .get_or_load(&store, &ids[LORA_CACHE_CAPACITY])
        .unwrap();
    let held: Vec<&str> = cache.ids().collect();
    assert_eq!(held.len(), LORA_CACHE_CAPACITY);
    assert!(held.contains(&ids[0].as_str()));
    assert!(!held.contains(&ids[1].as_str()));
    assert_eq!(held.last(), Some(&ids[LORA_CACHE_CAPACITY].as_str()));
    // A failure is reported and not cached.
    let m = message(cache.get_or_load(&store, "org/absent"));
    assert_eq!(m, "LoRa repository 'org/absent' not found");
    assert_eq!(cache.ids().count(), LORA_CACHE_CAPACITY);
}

/// kohya-ss names SDXL modules after Stability's UNet (`input_blocks_4_1_...`). A LoRA in
/// those names must patch exactly what the same factors under diffusers' names patch. The
/// pairs are written out from the tiny SDXL UNet's layout: layers_per_block 1, down blocks
/// (plain, cross-attention), up blocks (cross-attention, plain).
#[test]
fn kohya_sdxl_stability_names_patch_the_diffusers_modules() {
    let dir = fixtures_dir().join("diffusers-parity/models/tiny-sdxl");
    let unet = load_component(
        &dir.join("unet"),
        "diffusion_pytorch_model",
        None,
        &Device::Cpu,
    )
    .unwrap();
    let te2 = load_component(&dir.join("text_encoder_2"), "model", None, &Device::Cpu).unwrap();
    let unet_pairs = [
        ("input_blocks_0_0", "conv_in"),
        (
            "input_blocks_1_0_in_layers_2",
            "down_blocks.0.resnets.0.conv1",
        ),
        (
            "input_blocks_1_0_emb_layers_1",
            "down_blocks.0.resnets.0.time_emb_proj",
        ),
        ("input_blocks_2_0_op", "down_blocks.0.downsamplers.0.conv"),
        (
            "input_blocks_3_0_out_layers_3",
            "down_blocks.1.resnets.0.conv2",
        ),
        (
            "input_blocks_3_1_proj_in",
            "down_blocks.1.attentions.0.proj_in",
        ),
        (
            "input_blocks_3_1_transformer_blocks_1_attn2_to_k",
            "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
        ),
        ("middle_block_0_in_layers_2", "mid_block.resnets.0.conv1"),
        (
            "middle_block_1_transformer_blocks_0_ff_net_0_proj",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        ),
        ("middle_block_2_out_layers_3", "mid_block.resnets.1.conv2"),
        (
            "output_blocks_0_0_skip_connection",
            "up_blocks.0.resnets.0.conv_shortcut",
        ),
        (
            "output_blocks_1_1_proj_out",
            "up_blocks.0.attentions.1.proj_out",
        ),
        ("output_blocks_1_2_conv", "up_blocks.0.upsamplers.0.conv"),
        (
            "output_blocks_3_0_in_layers_2",
            "up_blocks.1.resnets.1.conv1",
        ),
        ("time_embed_0", "time_embedding.linear_1"),
        ("label_emb_0_2", "add_embedding.linear_2"),
        ("out_2", "conv_out"),
    ];
    let te2_pairs = [
        (
            "text_model_encoder_layers_0_self_attn_q_proj",
            "text_model.encoder.layers.0.self_attn.q_proj",
        ),
        (
            "text_model_encoder_layers_1_mlp_fc2",
            "text_model.encoder.layers.1.mlp.fc2",
        ),
    ];
    let mut kohya = Vec::new();
    let mut peft = Vec::new();
    let mut seed = 0.0;
    let mut add = |prefix_k: &str, prefix_p: &str, k: &str, p: &str, base: &TensorMap| {
        let bare = p.strip_prefix("text_model.").unwrap_or(p);
        let w = base
            .get(&format!("{p}.weight"))
            .or_else(|| base.get(&format!("{bare}.weight")))
            .unwrap_or_else(|| panic!("{p}"));
        let mut down_shape = w.dims().to_vec();
        down_shape[0] = 2;
        let mut up_shape = vec![w.dim(0).unwrap(), 2];
        up_shape.extend(std::iter::repeat_n(1, w.rank() - 2));
        seed += 0.1;
        let down = (Tensor::randn(0f32, 1.0, down_shape, &Device::Cpu).unwrap() + seed).unwrap();
        let up = Tensor::randn(0f32, 1.0, up_shape, &Device::Cpu).unwrap();
        kohya.push((format!("{prefix_k}{k}.lora_down.weight"), down.clone()));
        kohya.push((format!("{prefix_k}{k}.lora_up.weight"), up.clone()));
        kohya.push((
            format!("{prefix_k}{k}.alpha"),
            Tensor::new(2f32, &Device::Cpu).unwrap(),
        ));
        peft.push((format!("{prefix_p}{p}.lora_A.weight"), down));
        peft.push((format!("{prefix_p}{p}.lora_B.weight"), up));
    };
    for (k, p) in unet_pairs {
        add("lora_unet_", "unet.", k, p, &unet);
    }
    for (k, p) in te2_pairs {
        add("lora_te2_", "text_encoder_2.", k, p, &te2);
    }
    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, tensors: &[(String, Tensor)]| {
        let map: TensorMap = tensors.iter().cloned().collect();
        let path = dir.path().join(name);
        candle_core::safetensors::save(&map, &path).unwrap();
        Arc::new(LoraAdapter::from_file(name, &path).unwrap())
    };
    let kohya = save("kohya.safetensors", &kohya);
    let peft = save("peft.safetensors", &peft);
    for (component, base, count) in [
        ("unet", &unet, unet_pairs.len()),
        ("text_encoder_2", &te2, te2_pairs.len()),
    ] {
        let by_kohya = patch(component, base, &[(kohya.clone(), 0.9)]).unwrap();
        let by_peft = patch(component, base, &[(peft.clone(), 0.9)]).unwrap();
        let mut changed = 0;
        for (name, w) in base {
            assert_eq!(max_abs_diff(&by_kohya[name], &by_peft[name]), 0.0, "{name}");
            changed += usize::from(max_abs_diff(&by_kohya[name], w) > 0.0);
        }
        assert_eq!(changed, count, "{component}");
    }
}

/// What the tracing subscriber of a closure writes: the reasons LoRA failures log.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// LyCORIS formats diffusers refuses for SD/SDXL (tests/fixtures/lora/make_formats.py checks
/// that it does), and UNet keys without `unet.`, which it ignores: unable to load, the format
/// named in the log.
#[test]
fn formats_diffusers_does_not_load_are_refused_naming_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let peft_q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    let bare_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora";
    let alpha = || Tensor::new(4f32, &Device::Cpu).unwrap();
    let cases: Vec<(&str, Vec<(String, Tensor)>)> = vec![
        (
            "LoHa",
            vec![
                (format!("{q}.alpha"), alpha()),
                (format!("{q}.hada_w1_a"), ones(&[32, 4])),
                (format!("{q}.hada_w1_b"), ones(&[4, 32])),
                (format!("{q}.hada_w2_a"), ones(&[32, 4])),
                (format!("{q}.hada_w2_b"), ones(&[4, 32])),
            ],
        ),
        (
            "LoKr",
            vec![
                (format!("{q}.alpha"), alpha()),
                (format!("{q}.lokr_w1"), ones(&[4, 4])),
                (format!("{q}.lokr_w2"), ones(&[8, 8])),
            ],
        ),
        (
            "LoKr",
            vec![
                (format!("{peft_q}.lokr_w1"), ones(&[4, 4])),
                (format!("{peft_q}.lokr_w2"), ones(&[8, 8])),
            ],
        ),
        (
            "lora_mid",
            vec![
                (format!("{conv}.alpha"), alpha()),
                (format!("{conv}.lora_down.weight"), ones(&[2, 32, 1, 1])),
                (format!("{conv}.lora_mid.weight"), ones(&[2, 2, 3, 3])),
                (format!("{conv}.lora_up.weight"), ones(&[32, 2, 1, 1])),
            ],
        ),
        (
            "without the 'unet.' prefix",
            vec![
                (format!("{bare_q}.down.weight"), ones(&[4, 32])),
                (format!("{bare_q}.up.weight"), ones(&[32, 4])),
            ],
        ),
    ];
    for (i, (format, tensors)) in cases.into_iter().enumerate() {
        let named: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.clone()))
            .collect();
        let path = write(dir.path(), &format!("{i}.safetensors"), &named);
        let (result, log) = logged(|| LoraAdapter::from_file("org/lycoris", &path));
        assert_eq!(
            message(result),
            "Unable to load LoRas for adapter 'org/lycoris'",
            "{format}"
        );
        assert!(
            log.contains("cannot load LoRA") && log.contains(format),
            "{format}: {log}"
        );
    }
}

/// Every layout of a module patches it alike: the same factors as peft keys, diffusers'
/// pre-peft keys and ≤ 0.20 attention-processor keys give bit-identical weights.
#[test]
fn older_diffusers_layouts_patch_what_peft_keys_patch() {
    let dir = fixtures_dir().join("diffusers-parity/models/tiny-instruct-pix2pix");
    let unet = load_component(
        &dir.join("unet"),
        "diffusion_pytorch_model",
        None,
        &Device::Cpu,
    )
    .unwrap();
    let te = load_component(&dir.join("text_encoder"), "model", None, &Device::Cpu).unwrap();
    let attn = "mid_block.attentions.0.transformer_blocks.0.attn2";
    let layer = "text_model.encoder.layers.1";
    // (peft module, pre-peft key stem, ≤ 0.20 key stem, in, out)
    let unet_modules = [
        (
            format!("{attn}.to_q"),
            format!("{attn}.to_q.lora"),
            format!("{attn}.processor.to_q_lora"),
            64,
            64,
        ),
        (
            format!("{attn}.to_k"),
            format!("{attn}.to_k.lora"),
            format!("{attn}.processor.to_k_lora"),
            32,
            64,
        ),
        (
            format!("{attn}.to_out.0"),
            format!("{attn}.to_out.0.lora"),
            format!("{attn}.processor.to_out_lora"),
            64,
            64,
        ),
    ];
    let te_modules = [
        (
            format!("{layer}.self_attn.v_proj"),
            format!("{layer}.self_attn.v_proj.lora_linear_layer"),
            format!("{layer}.self_attn.to_v_lora"),
            32,
            32,
        ),
        (
            format!("{layer}.self_attn.out_proj"),
            format!("{layer}.self_attn.out_proj.lora_linear_layer"),
            format!("{layer}.self_attn.to_out_lora"),
            32,
            32,
        ),
    ];
    let mut layouts: [Vec<(String, Tensor)>; 3] = Default::default();
    for (prefix, modules) in [
        ("unet", &unet_modules[..]),
        ("text_encoder", &te_modules[..]),
    ] {
        for (peft, old, procs, input, output) in modules.iter() {
            let down = Tensor::randn(0f32, 1.0, (2, *input), &Device::Cpu).unwrap();
            let up = Tensor::randn(0f32, 1.0, (*output, 2), &Device::Cpu).unwrap();
            layouts[0].push((format!("{prefix}.{peft}.lora_A.weight"), down.clone()));
            layouts[0].push((format!("{prefix}.{peft}.lora_B.weight"), up.clone()));
            for (i, stem) in [(1, old), (2, procs)] {
                layouts[i].push((format!("{prefix}.{stem}.down.weight"), down.clone()));
                layouts[i].push((format!("{prefix}.{stem}.up.weight"), up.clone()));
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let adapters: Vec<Arc<LoraAdapter>> = layouts
        .iter()
        .enumerate()
        .map(|(i, tensors)| {
            let named: Vec<(&str, Tensor)> = tensors
                .iter()
                .map(|(k, t)| (k.as_str(), t.clone()))
                .collect();
            let path = write(tmp.path(), &format!("{i}.safetensors"), &named);
            Arc::new(LoraAdapter::from_file(&format!("layout{i}"), &path).unwrap())
        })
        .collect();
    for (component, base, count) in [("unet", &unet, 3), ("text_encoder", &te, 2)] {
        let by_peft = patch(component, base, &[(adapters[0].clone(), 0.8)]).unwrap();
        let changed = base
            .iter()
            .filter(|(n, w)| max_abs_diff(&by_peft[*n], w) > 0.0)
            .count();
        assert_eq!(changed, count, "{component}");
        for other in &adapters[1..] {
            let patched = patch(component, base, &[(other.clone(), 0.8)]).unwrap();
            for name in base.keys() {
                assert_eq!(
                    max_abs_diff(&patched[name], &by_peft[name]),
                    0.0,
                    "{}: {component}/{name}",
                    other.id
                );
            }
        }
    }
}
