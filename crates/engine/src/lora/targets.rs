//! Finding the base weight a LoRA module patches.
//!
//! Weight names are diffusers' state-dict names of the component (`<module>.weight`). A peft
//! module path is one directly. A kohya-ss name is the module path with its dots turned into
//! underscores, which cannot be turned back by rule (`down_blocks_0` vs `to_out_0`): it is
//! looked up among the base model's own names, flattened the same way. SDXL LoRAs from kohya
//! use the original Stability UNet's block names (`input_blocks_4_1_...`), which are first
//! rewritten into diffusers' (`down_blocks_1_attentions_0_...`) using the UNet's
//! `layers_per_block`, read off the base weights.

use std::collections::HashMap;

use super::adapter::{Component, ModuleName};
use crate::weights::TensorMap;

/// Looks up target weights of one component's base map.
pub(super) struct Targets<'a> {
    component: Component,
    base: &'a TensorMap,
    /// Flattened module path -> weight name; `None` where two names flatten alike.
    flat: HashMap<String, Option<&'a str>>,
    /// The UNet's resnets per down block, for Stability block names.
    layers_per_block: Option<usize>,
}

/// The text encoders' weights sit under `text_model.` in Hub checkpoints but not in what
/// transformers 5 saves; LoRA files use either naming.
const TEXT_MODEL: &str = "text_model.";

impl<'a> Targets<'a> {
    pub(super) fn new(component: Component, base: &'a TensorMap) -> Self {
        let mut flat: HashMap<String, Option<&'a str>> = HashMap::new();
        for name in base.keys() {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let mut keys = vec![module.replace('.', "_")];
            if component != Component::Unet && !module.starts_with(TEXT_MODEL) {
                keys.push(format!("{TEXT_MODEL}{module}").replace('.', "_"));
            }
            for key in keys {
                flat.entry(key)
                    .and_modify(|seen| *seen = None)
                    .or_insert(Some(name.as_str()));
            }
        }
        let layers_per_block = (component == Component::Unet)
            .then(|| resnets_in_first_down_block(base))
            .flatten();
        Self {
            component,
            base,
            flat,
            layers_per_block,
        }
    }

    /// The base weight `module` patches, if the base model has it.
    pub(super) fn find(&self, module: &ModuleName) -> Option<&'a str> {
        match module {
            ModuleName::Path(path) => {
                let mut candidates = vec![format!("{path}.weight")];
                if self.component != Component::Unet {
                    match path.strip_prefix(TEXT_MODEL) {
                        Some(bare) => candidates.push(format!("{bare}.weight")),
                        None => candidates.push(format!("{TEXT_MODEL}{path}.weight")),
                    }
                }
                candidates
                    .iter()
                    .find_map(|c| self.base.get_key_value(c).map(|(k, _)| k.as_str()))
            }
            ModuleName::Kohya(flat) => {
                let flat = match (self.component, self.layers_per_block) {
                    (Component::Unet, lpb) if is_stability_name(flat) => {
                        stability_to_diffusers(flat, lpb?)?
                    }
                    _ => flat.clone(),
                };
                self.flat.get(&flat).copied().flatten()
            }
        }
    }
}

/// `layers_per_block` of a UNet: how many resnets its first down block has.
fn resnets_in_first_down_block(base: &TensorMap) -> Option<usize> {
    let count = base
        .keys()
        .filter_map(|k| k.strip_prefix("down_blocks.0.resnets.")?.split('.').next())
        .filter_map(|i| i.parse::<usize>().ok())
        .max()?;
    Some(count + 1)
}

/// Whether a kohya UNet name uses the Stability (sgm) layout rather than diffusers'.
fn is_stability_name(flat: &str) -> bool {
    [
        "input_blocks_",
        "middle_block_",
        "output_blocks_",
        "time_embed_",
        "label_emb_",
    ]
    .iter()
    .any(|p| flat.starts_with(p))
        || flat == "out_2"
}

/// Rewrites a kohya name in the Stability UNet layout into diffusers' layout (still with
/// underscores). The Stability UNet numbers its blocks flat: input block 0 is `conv_in`, then
/// each diffusers down block is `layers_per_block` (resnet, attention) entries plus one
/// downsampler entry; output blocks are `layers_per_block + 1` entries per up block, the
/// upsampler riding along as the last module of the last entry.
fn stability_to_diffusers(flat: &str, layers_per_block: usize) -> Option<String> {
    let per_block = layers_per_block + 1;
    let fixed = [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("out_2", "conv_out"),
        ("input_blocks_0_0", "conv_in"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == flat) {
        return Some(to.to_string());
    }
    if let Some(rest) = flat.strip_prefix("input_blocks_") {
        let (n, m, inner) = two_indices(rest)?;
        let (block, layer) = (n.checked_sub(1)? / per_block, (n - 1) % per_block);
        return Some(match (m, inner) {
            (0, "op") if layer == layers_per_block => {
                format!("down_blocks_{block}_downsamplers_0_conv")
            }
            (0, inner) if layer < layers_per_block => {
                format!("down_blocks_{block}_resnets_{layer}_{}", resnet_part(inner))
            }
            (1, inner) if layer < layers_per_block => {
                format!("down_blocks_{block}_attentions_{layer}_{inner}")
            }
            _ => return None,
        });
    }
    if let Some(rest) = flat.strip_prefix("middle_block_") {
        let (m, inner) = rest.split_once('_')?;
        return Some(match m {
            "0" => format!("mid_block_resnets_0_{}", resnet_part(inner)),
            "1" => format!("mid_block_attentions_0_{inner}"),
            "2" => format!("mid_block_resnets_1_{}", resnet_part(inner)),
            _ => return None,
        });
    }
    let rest = flat.strip_prefix("output_blocks_")?;
    let (n, m, inner) = two_indices(rest)?;
    let (block, layer) = (n / per_block, n % per_block);
    Some(match (m, inner) {
        (1 | 2, "conv") => format!("up_blocks_{block}_upsamplers_0_conv"),
        (0, inner) => format!("up_blocks_{block}_resnets_{layer}_{}", resnet_part(inner)),
        (1, inner) => format!("up_blocks_{block}_attentions_{layer}_{inner}"),
        _ => return None,
    })
}

/// `N_M_rest` -> (N, M, rest).
fn two_indices(s: &str) -> Option<(usize, usize, &str)> {
    let (n, s) = s.split_once('_')?;
    let (m, rest) = s.split_once('_')?;
    Some((n.parse().ok()?, m.parse().ok()?, rest))
}

/// A resnet's layers in the Stability naming -> diffusers'.
fn resnet_part(inner: &str) -> &str {
    match inner {
        "in_layers_2" => "conv1",
        "emb_layers_1" => "time_emb_proj",
        "out_layers_3" => "conv2",
        "skip_connection" => "conv_shortcut",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stability_names_map_to_diffusers_for_sdxl() {
        // SDXL: layers_per_block 2; down block 0 has no attention, up block 2 neither.
        let cases = [
            ("input_blocks_0_0", "conv_in"),
            (
                "input_blocks_1_0_in_layers_2",
                "down_blocks_0_resnets_0_conv1",
            ),
            (
                "input_blocks_2_0_emb_layers_1",
                "down_blocks_0_resnets_1_time_emb_proj",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            (
                "input_blocks_4_0_skip_connection",
                "down_blocks_1_resnets_0_conv_shortcut",
            ),
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            (
                "input_blocks_8_1_proj_in",
                "down_blocks_2_attentions_1_proj_in",
            ),
            ("middle_block_0_out_layers_3", "mid_block_resnets_0_conv2"),
            (
                "middle_block_1_transformer_blocks_9_ff_net_2",
                "mid_block_attentions_0_transformer_blocks_9_ff_net_2",
            ),
            ("middle_block_2_in_layers_2", "mid_block_resnets_1_conv1"),
            (
                "output_blocks_0_1_proj_out",
                "up_blocks_0_attentions_0_proj_out",
            ),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_5_0_in_layers_2",
                "up_blocks_1_resnets_2_conv1",
            ),
            (
                "output_blocks_8_0_skip_connection",
                "up_blocks_2_resnets_2_conv_shortcut",
            ),
            ("time_embed_2", "time_embedding_linear_2"),
            ("label_emb_0_0", "add_embedding_linear_1"),
            ("out_2", "conv_out"),
        ];
        for (from, to) in cases {
            assert!(is_stability_name(from), "{from}");
            assert_eq!(
                stability_to_diffusers(from, 2).as_deref(),
                Some(to),
                "{from}"
            );
        }
        assert!(!is_stability_name("down_blocks_0_resnets_0_conv1"));
    }

    #[test]
    fn impossible_stability_names_map_to_nothing() {
        for bad in [
            "input_blocks_x_0_op",
            "input_blocks_3_1_proj_in", // the downsampler entry has no attention
            "middle_block_3_proj_in",
            "output_blocks_1_3_conv",
        ] {
            assert_eq!(stability_to_diffusers(bad, 2), None, "{bad}");
        }
    }
}
