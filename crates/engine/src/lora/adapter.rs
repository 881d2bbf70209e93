//! Reading a LoRA file into per-component factor pairs, whatever trainer wrote it.
//!
//! The key layouts understood are the ones diffusers' `load_lora_weights` takes for Stable
//! Diffusion and SDXL:
//! - diffusers/peft: `unet.<module>.lora_A.weight` (down) and `.lora_B.weight` (up), also under
//!   `text_encoder.` and `text_encoder_2.`. Alpha comes from the peft config diffusers stores
//!   in the file's `lora_adapter_metadata` (`lora_alpha`, `alpha_pattern`, `use_rslora`);
//!   without one, alpha = rank (scale 1), the peft convention.
//! - what diffusers' training scripts wrote before peft (0.21–0.26), under the same prefixes:
//!   UNet `<module>.lora.down.weight` / `.lora.up.weight`, text encoders
//!   `<module>.lora_linear_layer.down.weight` / `.up.weight`; and diffusers ≤ 0.20's
//!   attention processors, `<attn>.processor.to_q_lora.down.weight` (`to_k_lora`,
//!   `to_v_lora`, `to_out_lora`), meaning `<attn>.to_q` (`to_out.0`) in the UNet and
//!   `<attn>.q_proj` (`out_proj`) in a text encoder. None of these carries an alpha (scale 1).
//! - kohya-ss: `lora_unet_<module_with_underscores>.lora_down.weight`, `.lora_up.weight` and
//!   an optional scalar `.alpha`; `lora_te_`/`lora_te1_` for the first text encoder,
//!   `lora_te2_` for the second. Module names lose their dots, so they are matched against the
//!   base model's names later (see `targets`).
//!
//! LyCORIS' LoHa (`hada_w1_a`), LoKr (`lokr_w1`) and Tucker-decomposed LoCon (`lora_mid`)
//! files, which diffusers refuses for these models, are refused naming the format in the log;
//! so are UNet keys without the `unet.` prefix, which diffusers ignores.
//!
//! Factors are kept in f32 on the CPU: they are small, and the merge computes in f32.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::unloadable;
use crate::error::Result;

/// A model component a LoRA can patch, named as in a diffusers pipeline folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
    TextEncoder2,
}

impl Component {
    pub const ALL: [Component; 3] = [Self::Unet, Self::TextEncoder, Self::TextEncoder2];

    /// The pipeline folder name: `unet`, `text_encoder`, `text_encoder_2`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// How a file names the module a factor pair belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleName {
    /// A dotted module path, e.g. `down_blocks.0.attentions.0.proj_in` (diffusers/peft).
    Path(String),
    /// kohya-ss's flattened path, dots turned into underscores, e.g.
    /// `down_blocks_0_attentions_0_proj_in`, or for SDXL in the original Stability naming,
    /// `input_blocks_4_1_proj_in`.
    Kohya(String),
}

impl std::fmt::Display for ModuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) | Self::Kohya(p) => f.write_str(p),
        }
    }
}

/// One low-rank update `(alpha/rank)·(up·down)` of one weight.
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub name: ModuleName,
    /// `[rank, in]` for a linear layer, `[rank, in, kh, kw]` for a convolution (a conv to
    /// `rank` channels with the base layer's kernel).
    pub down: Tensor,
    /// `[out, rank]`, or `[out, rank, 1, 1]` (a 1x1 conv) for a convolution.
    pub up: Tensor,
    pub alpha: f64,
    /// peft's rank-stabilised LoRA: the update is scaled by alpha/√rank instead of alpha/rank.
    pub rank_stabilized: bool,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.dim(0).unwrap_or(0)
    }

    /// The kernel `(kh, kw)` of a convolution LoRA, `None` for a linear one.
    pub fn kernel(&self) -> Option<(usize, usize)> {
        match self.down.dims() {
            [_, _, kh, kw] => Some((*kh, *kw)),
            _ => None,
        }
    }

    /// The factor multiplying `up·down` at strength 1.
    pub fn scaling(&self) -> f64 {
        let rank = self.rank() as f64;
        if self.rank_stabilized {
            self.alpha / rank.sqrt()
        } else {
            self.alpha / rank
        }
    }
}

/// A LoRA file, read: its modules per component.
#[derive(Debug)]
pub struct LoraAdapter {
    pub id: String,
    pub components: BTreeMap<Component, Vec<LoraModule>>,
}

impl LoraAdapter {
    /// Reads the safetensors LoRA at `path`, naming it `id` in errors.
    pub fn from_file(id: &str, path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| unloadable(id, &format!("{}: {e}", path.display())))?;
        Self::from_bytes(id, &bytes)
    }

    /// Reads a LoRA from the bytes of a safetensors file.
    pub fn from_bytes(id: &str, bytes: &[u8]) -> Result<Self> {
        let fail = |reason: String| unloadable(id, &reason);
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| fail(format!("unreadable tensors: {e}")))?;
        let components = read_modules(tensors, &metadata).map_err(fail)?;
        if components.is_empty() {
            return Err(fail("the file holds no LoRA weights".into()));
        }
        Ok(Self {
            id: id.to_string(),
            components,
        })
    }

    /// The modules this adapter patches in `component` (none if it leaves it alone).
    pub fn modules(&self, component: Component) -> &[LoraModule] {
        self.components.get(&component).map_or(&[], Vec::as_slice)
    }
}

/// Which factor of a module a tensor is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// Factors of one module as they are collected from the file.
#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

type Key = (Component, bool, String);

fn read_modules(
    tensors: HashMap<String, Tensor>,
    metadata: &HashMap<String, String>,
) -> std::result::Result<BTreeMap<Component, Vec<LoraModule>>, String> {
    // Before anything else, so that the format is named whichever key comes first.
    if let Some((key, format)) = tensors
        .keys()
        .find_map(|k| Some((k, unsupported_format(k)?)))
    {
        return Err(format!(
            "{format} weights ('{key}'), which diffusers does not load either"
        ));
    }
    let mut parts: BTreeMap<Key, Parts> = BTreeMap::new();
    for (key, tensor) in tensors {
        // DoRA magnitudes: diffusers drops them (with a warning) and applies the plain LoRA.
        if key.ends_with(".dora_scale") {
            tracing::warn!(key, "ignoring a DoRA magnitude, as diffusers does");
            continue;
        }
        let (component, kohya, module, part) = classify(&key).ok_or_else(|| {
            if is_unprefixed_unet_key(&key) {
                format!(
                    "UNet LoRA keys without the 'unet.' prefix ('{key}'), which diffusers' \
                     load_lora_weights ignores"
                )
            } else {
                format!("unrecognised key '{key}'")
            }
        })?;
        let entry = parts.entry((component, kohya, module)).or_default();
        let tensor = tensor.to_dtype(DType::F32).map_err(|e| e.to_string())?;
        match part {
            Part::Down => entry.down = Some(tensor),
            Part::Up => entry.up = Some(tensor),
            Part::Alpha => {
                let alpha = tensor
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| e.to_string())?;
                match alpha.as_slice() {
                    [a] if a.is_finite() => entry.alpha = Some(f64::from(*a)),
                    _ => return Err(format!("{key} is not one finite number")),
                }
            }
        }
    }
    let configs = PeftConfigs::from_metadata(metadata)?;
    let mut out: BTreeMap<Component, Vec<LoraModule>> = BTreeMap::new();
    let mut kohya_alphas: BTreeMap<Component, Vec<f64>> = BTreeMap::new();
    for ((component, kohya, name), p) in parts {
        let (Some(down), Some(up)) = (p.down, p.up) else {
            return Err(format!("module '{name}' lacks its down or up weight"));
        };
        check_factor_shapes(&name, &down, &up)?;
        let rank = down.dim(0).map_err(|e| e.to_string())?;
        let (name, alpha, rank_stabilized) = if kohya {
            if let Some(a) = p.alpha {
                kohya_alphas.entry(component).or_default().push(a);
            }
            (ModuleName::Kohya(name), p.alpha, false)
        } else {
            if p.alpha.is_some() {
                return Err(format!("unrecognised key '{name}.alpha' in a peft LoRA"));
            }
            let (alpha, rs) = configs.alpha(component, &name, rank)?;
            (ModuleName::Path(name), Some(alpha), rs)
        };
        out.entry(component).or_default().push(LoraModule {
            name,
            down,
            up,
            // Filled in below for kohya modules without an alpha.
            alpha: alpha.unwrap_or(f64::NAN),
            rank_stabilized,
        });
    }
    // A kohya module without `.alpha`: diffusers gives it the alpha most modules of its
    // component have, or its rank when none has one.
    for (component, modules) in &mut out {
        let common = kohya_alphas.get(component).and_then(|a| most_common(a));
        for m in modules.iter_mut().filter(|m| m.alpha.is_nan()) {
            m.alpha = common.unwrap_or(m.rank() as f64);
        }
    }
    Ok(out)
}

/// The value occurring most often (the smallest among equally frequent ones).
fn most_common(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best: Option<(f64, usize)> = None;
    for run in sorted.chunk_by(|a, b| a == b) {
        if best.is_none_or(|(_, n)| run.len() > n) {
            best = Some((run[0], run.len()));
        }
    }
    best.map(|(v, _)| v)
}

/// Splits a file key into (component, is kohya, module name, part).
fn classify(key: &str) -> Option<(Component, bool, String, Part)> {
    const KOHYA: [(&str, Component); 4] = [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ];
    for (prefix, component) in KOHYA {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (module, part) = [
                (".lora_down.weight", Part::Down),
                (".lora_up.weight", Part::Up),
                (".alpha", Part::Alpha),
            ]
            .into_iter()
            .find_map(|(suffix, part)| Some((rest.strip_suffix(suffix)?, part)))?;
            return (!module.is_empty() && !module.contains('.'))
                .then(|| (component, true, module.to_string(), part));
        }
    }
    // `text_encoder_2.` before `text_encoder.`, which is not its prefix but reads alike.
    let (component, rest) = [
        Component::Unet,
        Component::TextEncoder2,
        Component::TextEncoder,
    ]
    .into_iter()
    .find_map(|c| Some((c, key.strip_prefix(c.name())?.strip_prefix('.')?)))?;
    // diffusers drops `.processor.` from every key it converts (≤ 0.20 attention processors).
    let rest = rest.replace(".processor.", ".");
    let suffixes = if component == Component::Unet {
        &UNET_SUFFIXES[..]
    } else {
        &TEXT_ENCODER_SUFFIXES[..]
    };
    suffixes.iter().find_map(|(suffix, tail, part)| {
        let module = rest.strip_suffix(suffix)?;
        (!module.is_empty()).then(|| (component, false, format!("{module}{tail}"), *part))
    })
}

/// (key suffix, what it adds to the module path, part) of the dotted layouts, peft's first.
type Suffix = (&'static str, &'static str, Part);

const UNET_SUFFIXES: [Suffix; 12] = [
    (".lora_A.weight", "", Part::Down),
    (".lora_B.weight", "", Part::Up),
    // diffusers 0.21–0.26 (LoRACompatibleLinear / LoRACompatibleConv).
    (".lora.down.weight", "", Part::Down),
    (".lora.up.weight", "", Part::Up),
    // diffusers ≤ 0.20 attention processors.
    (".to_q_lora.down.weight", ".to_q", Part::Down),
    (".to_q_lora.up.weight", ".to_q", Part::Up),
    (".to_k_lora.down.weight", ".to_k", Part::Down),
    (".to_k_lora.up.weight", ".to_k", Part::Up),
    (".to_v_lora.down.weight", ".to_v", Part::Down),
    (".to_v_lora.up.weight", ".to_v", Part::Up),
    (".to_out_lora.down.weight", ".to_out.0", Part::Down),
    (".to_out_lora.up.weight", ".to_out.0", Part::Up),
];

const TEXT_ENCODER_SUFFIXES: [Suffix; 12] = [
    (".lora_A.weight", "", Part::Down),
    (".lora_B.weight", "", Part::Up),
    // diffusers' own text-encoder LoRA layers before peft.
    (".lora_linear_layer.down.weight", "", Part::Down),
    (".lora_linear_layer.up.weight", "", Part::Up),
    // diffusers ≤ 0.20 attention processors, on CLIP's attention.
    (".to_q_lora.down.weight", ".q_proj", Part::Down),
    (".to_q_lora.up.weight", ".q_proj", Part::Up),
    (".to_k_lora.down.weight", ".k_proj", Part::Down),
    (".to_k_lora.up.weight", ".k_proj", Part::Up),
    (".to_v_lora.down.weight", ".v_proj", Part::Down),
    (".to_v_lora.up.weight", ".v_proj", Part::Up),
    (".to_out_lora.down.weight", ".out_proj", Part::Down),
    (".to_out_lora.up.weight", ".out_proj", Part::Up),
];

/// The LyCORIS format a key belongs to, if it is one diffusers does not load for SD/SDXL.
fn unsupported_format(key: &str) -> Option<&'static str> {
    const FORMATS: [(&str, &str); 3] = [
        (".hada_", "LoHa (LyCORIS Hadamard-product)"),
        (".lokr_", "LoKr (LyCORIS Kronecker-product)"),
        (".lora_mid.", "LoCon with a Tucker middle factor (lora_mid)"),
    ];
    FORMATS
        .iter()
        .find(|(part, _)| key.contains(part))
        .map(|(_, format)| *format)
}

/// Whether `key` would be a UNet LoRA key with `unet.` in front: the layout `save_attn_procs`
/// wrote, which diffusers' `load_lora_weights` no longer reads.
fn is_unprefixed_unet_key(key: &str) -> bool {
    const TOP: [&str; 8] = [
        "down_blocks.",
        "mid_block.",
        "up_blocks.",
        "conv_in.",
        "conv_out.",
        "time_embedding.",
        "add_embedding.",
        "conv_norm_out.",
    ];
    TOP.iter().any(|t| key.starts_with(t)) && classify(&format!("unet.{key}")).is_some()
}

/// Factor shapes that make an update at all: down `[r, in]` or `[r, in, kh, kw]`, up
/// `[out, r]` or `[out, r, 1, 1]`, with r > 0. Whether they fit the base weight is checked
/// when patching, against the model at hand.
fn check_factor_shapes(name: &str, down: &Tensor, up: &Tensor) -> std::result::Result<(), String> {
    let ok = match (down.dims(), up.dims()) {
        ([r, i], [o, ur]) | ([r, i, _, _], [o, ur]) | ([r, i, _, _], [o, ur, 1, 1]) => {
            *r > 0 && r == ur && *i > 0 && *o > 0
        }
        _ => false,
    } && down.elem_count() > 0;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "module '{name}': factors of shapes {:?} (down) and {:?} (up) do not form a LoRA",
            down.dims(),
            up.dims()
        ))
    }
}

/// The peft configs diffusers saves in a LoRA file's metadata, one per component, reduced to
/// what sets the scale of a module.
#[derive(Default)]
struct PeftConfigs(BTreeMap<Component, PeftConfig>);

struct PeftConfig {
    lora_alpha: Option<f64>,
    /// (pattern, alpha), matched as peft does: the module name ends with the pattern (a
    /// regular expression) after a dot, or is it.
    alpha_pattern: Vec<(regex::Regex, f64)>,
    use_rslora: bool,
}

impl PeftConfigs {
    /// The key under which diffusers stores the adapter configs, as JSON with keys
    /// `<component>.<LoraConfig field>`.
    const METADATA_KEY: &'static str = "lora_adapter_metadata";

    fn from_metadata(metadata: &HashMap<String, String>) -> std::result::Result<Self, String> {
        let Some(raw) = metadata.get(Self::METADATA_KEY) else {
            return Ok(Self::default());
        };
        let bad = |e: String| format!("unreadable {}: {e}", Self::METADATA_KEY);
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let mut configs = BTreeMap::new();
        for component in Component::ALL {
            let field = |f: &str| json.get(&format!("{}.{f}", component.name()));
            let lora_alpha = match field("lora_alpha") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(finite(v).ok_or_else(|| bad(format!("lora_alpha {v}")))?),
            };
            let mut alpha_pattern = Vec::new();
            if let Some(patterns) = field("alpha_pattern").and_then(|v| v.as_object()) {
                for (pattern, v) in patterns {
                    let alpha = finite(v).ok_or_else(|| bad(format!("alpha_pattern {v}")))?;
                    let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$"))
                        .map_err(|e| bad(e.to_string()))?;
                    alpha_pattern.push((re, alpha));
                }
            }
            let use_rslora = field("use_rslora").and_then(|v| v.as_bool()) == Some(true);
            if lora_alpha.is_some() || !alpha_pattern.is_empty() || use_rslora {
                configs.insert(
                    component,
                    PeftConfig {
                        lora_alpha,
                        alpha_pattern,
                        use_rslora,
                    },
                );
            }
        }
        Ok(Self(configs))
    }

    /// (alpha, rank-stabilised) of a peft module of `rank`.
    fn alpha(
        &self,
        component: Component,
        module: &str,
        rank: usize,
    ) -> std::result::Result<(f64, bool), String> {
        let Some(config) = self.0.get(&component) else {
            return Ok((rank as f64, false));
        };
        let alpha = config
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map(|(_, a)| *a)
            .or(config.lora_alpha)
            .unwrap_or(PEFT_DEFAULT_ALPHA);
        Ok((alpha, config.use_rslora))
    }
}

/// peft's `LoraConfig.lora_alpha` when a saved config does not set it.
const PEFT_DEFAULT_ALPHA: f64 = 8.0;

fn finite(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_diffusers_layouts_name_the_peft_module() {
        let attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        let te = "text_model.encoder.layers.0";
        let cases = [
            (
                format!("unet.{attn}.to_q.lora.down.weight"),
                Component::Unet,
                format!("{attn}.to_q"),
                Part::Down,
            ),
            (
                format!("unet.{attn}.to_out.0.lora.up.weight"),
                Component::Unet,
                format!("{attn}.to_out.0"),
                Part::Up,
            ),
            (
                format!("unet.{attn}.processor.to_out_lora.down.weight"),
                Component::Unet,
                format!("{attn}.to_out.0"),
                Part::Down,
            ),
            (
                format!("unet.{attn}.processor.to_k_lora.up.weight"),
                Component::Unet,
                format!("{attn}.to_k"),
                Part::Up,
            ),
            (
                format!("text_encoder.{te}.mlp.fc1.lora_linear_layer.down.weight"),
                Component::TextEncoder,
                format!("{te}.mlp.fc1"),
                Part::Down,
            ),
            (
                format!("text_encoder_2.{te}.self_attn.to_out_lora.up.weight"),
                Component::TextEncoder2,
                format!("{te}.self_attn.out_proj"),
                Part::Up,
            ),
        ];
        for (key, component, module, part) in cases {
            let (c, kohya, m, p) = classify(&key).unwrap_or_else(|| panic!("{key}"));
            assert!(
                c == component && !kohya && m == module && p == part,
                "{key}: {m}"
            );
        }
        // Each layout stays in its component: diffusers reads `lora_linear_layer` only in text
        // encoders and `.lora.down` only in the UNet.
        for key in [
            format!("unet.{attn}.to_q.lora_linear_layer.down.weight"),
            format!("text_encoder.{te}.mlp.fc1.lora.down.weight"),
        ] {
            assert!(classify(&key).is_none(), "{key}");
        }
    }

    #[test]
    fn lycoris_and_unprefixed_lora_keys_are_told_apart() {
        let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
        assert_eq!(
            unsupported_format(&format!("{q}.hada_w1_a")),
            Some("LoHa (LyCORIS Hadamard-product)")
        );
        assert_eq!(
            unsupported_format(&format!("{q}.lokr_w2")),
            Some("LoKr (LyCORIS Kronecker-product)")
        );
        assert!(unsupported_format(&format!("{q}.lora_mid.weight")).is_some());
        assert_eq!(unsupported_format(&format!("{q}.lora_down.weight")), None);
        assert!(is_unprefixed_unet_key(
            "mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"
        ));
        assert!(is_unprefixed_unet_key("conv_in.lora_A.weight"));
        assert!(!is_unprefixed_unet_key("model.diffusion_model.w"));
        assert!(!is_unprefixed_unet_key(
            "down_blocks.0.resnets.0.conv1.weight"
        ));
    }
}
