//! The CLIP text encoder of Stable Diffusion pipelines: transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`, built from the component's own `config.json`.
//!
//! Numerics follow transformers 5.24: learned token + position embeddings, pre-norm encoder
//! layers with causal self-attention, a final layer norm, pooling at the EOS position and,
//! for the projection variant, a bias-free linear projection of the pooled state. SD uses
//! the last hidden state; SDXL uses the penultimate layer's output and the projected pooled
//! state of its second encoder, so the forward pass hands back every layer's output.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use crate::error::{read_json, Error, Result};
use crate::weights::{load_component, var_builder, TensorMap};

/// The feed-forward activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Activation {
    /// `quick_gelu`: x * sigmoid(1.702 x), OpenAI's CLIP (SD 1.x).
    QuickGelu,
    /// `gelu`: the exact erf GELU, OpenCLIP models (SD 2.x, SDXL's second encoder). The tanh
    /// approximation differs by ~5e-4 after two tiny layers, far outside parity.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation, which some ports use.
    GeluTanh,
}

impl TryFrom<String> for Activation {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        match name.as_str() {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(format!(
                "unsupported hidden_act '{other}' (expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)"
            )),
        }
    }
}

impl Activation {
    /// The activation as transformers computes it (also used by the safety checker's
    /// vision tower).
    pub(crate) fn apply(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::QuickGelu => (xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?)?,
            Self::Gelu => xs.gelu_erf()?,
            Self::GeluTanh => xs.gelu()?,
        })
    }
}

/// transformers' `CLIPTextConfig`, the keys the text model reads. Missing keys take
/// transformers' defaults (as `from_pretrained` would); unknown keys are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Decides the pooling rule, see [`ClipTextOutput::pooled`].
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// transformers 5.24's `CLIPTextConfig` defaults.
mod defaults {
    use super::Activation;

    pub fn vocab_size() -> usize {
        49408
    }
    pub fn hidden_size() -> usize {
        512
    }
    pub fn intermediate_size() -> usize {
        2048
    }
    pub fn projection_dim() -> usize {
        512
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> Activation {
        Activation::QuickGelu
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn eos_token_id() -> u32 {
        49407
    }
}

/// The `eos_token_id` of checkpoints saved before transformers fixed it (every SD/SDXL
/// repository). transformers keeps their old pooling rule for it: argmax of the token ids.
const LEGACY_EOS_TOKEN_ID: u32 = 2;

impl ClipTextConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        config
            .validate()
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        use crate::error::config_bounds::{at_most, HEADS, LAYERS, POSITIONS, VOCAB, WIDTH};
        at_most("num_hidden_layers", self.num_hidden_layers, LAYERS)?;
        at_most("num_attention_heads", self.num_attention_heads, HEADS)?;
        at_most(
            "max_position_embeddings",
            self.max_position_embeddings,
            POSITIONS,
        )?;
        at_most("vocab_size", self.vocab_size, VOCAB)?;
        for (key, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("projection_dim", self.projection_dim),
        ] {
            at_most(key, value, WIDTH)?;
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// Whether `architectures` names the model with a text projection.
    pub fn declares_projection(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection")
    }

    #[cfg(test)]
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
        }
    }
}

/// What one forward pass computes.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// After the final layer norm: [batch, seq, hidden].
    pub last_hidden_state: Tensor,
    /// transformers' `hidden_states` with `output_hidden_states=True`: the embeddings output,
    /// then every layer's output before the final layer norm (num_hidden_layers + 1 entries).
    /// SDXL conditions on `hidden_states[num_hidden_layers - 1]`, the penultimate entry.
    pub hidden_states: Vec<Tensor>,
    /// `last_hidden_state` at each sequence's EOS position: [batch, hidden]. With the legacy
    /// `eos_token_id` 2 that position is the argmax of the ids (the EOS id is the largest in
    /// CLIP's vocabulary, and the first of equal maxima wins, so EOS padding is harmless);
    /// otherwise it is the first position holding `eos_token_id` (0 when there is none).
    pub pooled: Tensor,
    /// The projected pooled state [batch, projection_dim] when the model has a projection.
    pub text_embeds: Option<Tensor>,
}

/// Token embeddings plus learned absolute position embeddings.
#[derive(Debug)]
struct Embeddings {
    token: Embedding,
    position: Embedding,
}

impl Embeddings {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            token: candle_nn::embedding(c.vocab_size, c.hidden_size, vb.pp("token_embedding"))?,
            position: candle_nn::embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embedding"),
            )?,
        })
    }

    /// Positions always run 0..seq: no caller passes position ids for text conditioning.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let seq = ids.dim(1)?;
        let positions = self.position.embeddings().narrow(0, 0, seq)?;
        Ok(self.token.forward(ids)?.broadcast_add(&positions)?)
    }
}

#[derive(Debug)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, s: &LayerShape) -> Result<Self> {
        let h = s.hidden;
        Ok(Self {
            q: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            heads: s.heads,
            head_dim: h / s.heads,
        })
    }

    /// [batch, seq, hidden] -> [batch, heads, seq, head_dim], contiguous for the matmuls.
    fn split_heads(&self, xs: Tensor) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        Ok(xs
            .reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `mask` is an additive mask in f32, [seq, seq] (the text tower's causal mask; the
    /// vision tower has none). The scores are scaled by 1/sqrt(head_dim) through the queries
    /// (fewer values than the scores, and smaller products in f16), then softmaxed in f32
    /// whatever the model dtype, as transformers does.
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = self.split_heads((self.q.forward(xs)? * scale)?)?;
        let k = self.split_heads(self.k.forward(xs)?)?;
        let v = self.split_heads(self.v.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        Ok(self.out.forward(&context)?)
    }
}

#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn new(vb: VarBuilder, s: &LayerShape) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(s.hidden, s.intermediate, vb.pp("fc1"))?,
            fc2: candle_nn::linear(s.intermediate, s.hidden, vb.pp("fc2"))?,
            act: s.act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.act.apply(&self.fc1.forward(xs)?)?;
        Ok(self.fc2.forward(&hidden)?)
    }
}

/// The sizes of one CLIP transformer layer; the text and vision towers share the layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
}

/// Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)).
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    norm1: LayerNorm,
    attn: SelfAttention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    /// `vb` at the layer (`encoder.layers.N`).
    pub(crate) fn new(vb: VarBuilder, s: &LayerShape) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(s.hidden, s.eps, vb.pp("layer_norm1"))?,
            attn: SelfAttention::new(vb.pp("self_attn"), s)?,
            norm2: candle_nn::layer_norm(s.hidden, s.eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(vb.pp("mlp"), s)?,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?, mask)?)?;
        Ok((&xs + self.mlp.forward(&self.norm2.forward(&xs)?)?)?)
    }
}

/// A CLIP text encoder, with or without the text projection.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    projection: Option<Linear>,
}

impl ClipTextModel {
    /// Builds the model from weights named as transformers saves them, with `vb` at the
    /// component's root. The encoder's tensors sit under `text_model.` in Hub checkpoints and
    /// in the projection model, but transformers 5 saves a bare `CLIPTextModel` without that
    /// prefix, so both layouts are accepted. `text_projection.weight` is at the root.
    pub fn new(vb: VarBuilder, config: ClipTextConfig, with_projection: bool) -> Result<Self> {
        config.validate().map_err(Error::Model)?;
        let projection = if with_projection {
            Some(candle_nn::linear_no_bias(
                config.hidden_size,
                config.projection_dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        let text = if vb.contains_tensor("text_model.final_layer_norm.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let embeddings = Embeddings::new(text.pp("embeddings"), &config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(text.pp("encoder.layers").pp(i), &config.layer_shape()))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = candle_nn::layer_norm(
            config.hidden_size,
            config.layer_norm_eps,
            text.pp("final_layer_norm"),
        )?;
        Ok(Self {
            config,
            embeddings,
            layers,
            final_layer_norm,
            projection,
        })
    }

    /// Folder with config.json + model(.fp16).safetensors. The projection is built when
    /// `architectures` says CLIPTextModelWithProjection or the weights hold
    /// `text_projection.weight` (some conversions leave `architectures` out).
    pub fn load(dir: &Path, variant: Option<&str>, dtype: DType, device: &Device) -> Result<Self> {
        let config = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let weights = load_component(dir, "model", variant, device)?;
        Self::from_weights(config, weights, dtype, device)
    }

    /// The model from a tensor map named as transformers saves it (what LoRA patches).
    pub fn from_weights(
        config: ClipTextConfig,
        weights: TensorMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let with_projection =
            config.declares_projection() || weights.contains_key("text_projection.weight");
        Self::new(var_builder(weights, dtype, device), config, with_projection)
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Whether the model projects its pooled output (`text_embeds`).
    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// ids: integer token ids [batch, seq] (u32), seq at most `max_position_embeddings`.
    /// Attention is causal only: diffusers passes no padding mask for SD/SDXL, so padding
    /// tokens after EOS do not change the states before them.
    pub fn forward(&self, ids: &Tensor) -> Result<ClipTextOutput> {
        let (batch, seq) = ids.dims2()?;
        if seq == 0 || seq > self.config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "text encoder input has {seq} tokens; it takes 1 to {}",
                self.config.max_position_embeddings
            )));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let mask = causal_mask(seq, ids.device())?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        let mut xs = self.embeddings.forward(&ids)?;
        for layer in &self.layers {
            let next = layer.forward(&xs, Some(&mask))?;
            hidden_states.push(xs);
            xs = next;
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        hidden_states.push(xs);

        let positions = self.eos_positions(&ids.to_vec2::<u32>()?);
        let rows: Vec<u32> = positions
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * seq + p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, batch, ids.device())?;
        let pooled = last_hidden_state
            .reshape((batch * seq, ()))?
            .index_select(&rows, 0)?;
        let text_embeds = self
            .projection
            .as_ref()
            .map(|p| p.forward(&pooled))
            .transpose()?;
        Ok(ClipTextOutput {
            last_hidden_state,
            hidden_states,
            pooled,
            text_embeds,
        })
    }

    /// The pooling position of each sequence, by transformers' rule for this config.
    fn eos_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        let eos = self.config.eos_token_id;
        ids.iter()
            .map(|row| {
                if eos == LEGACY_EOS_TOKEN_ID {
                    first_max_position(row)
                } else {
                    row.iter().position(|&t| t == eos).unwrap_or(0)
                }
            })
            .collect()
    }
}

/// The index of the first largest id, which is what torch's argmax returns on ties.
fn first_max_position(row: &[u32]) -> usize {
    let max = row.iter().copied().max().unwrap_or(0);
    row.iter().position(|&t| t == max).unwrap_or(0)
}

/// Additive causal mask [seq, seq] in f32: 0 where a position may attend (itself and earlier
/// ones), -inf after. transformers' eager path adds the dtype's lowest finite value instead;
/// after the f32 softmax both give exactly zero weight, and every row keeps its diagonal, so
/// no row is all -inf.
fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (seq, seq), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use tessera_testkit::{fixtures_dir, max_abs_diff};

    const TOLERANCE: f32 = 1e-5;

    fn model_dir(rel: &str) -> PathBuf {
        fixtures_dir().join("diffusers-parity/models").join(rel)
    }

    /// A reference file written by tests/fixtures/clip/make_fixtures.py.
    fn expected(name: &str) -> HashMap<String, Tensor> {
        let path = fixtures_dir()
            .join("clip")
            .join(format!("{name}.safetensors"));
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
    }

    fn ids(exp: &HashMap<String, Tensor>) -> Tensor {
        exp["ids"].to_dtype(DType::U32).unwrap()
    }

    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        let d = max_abs_diff(got, want);
        assert!(d <= tol, "{what}: max abs difference {d} > {tol}");
    }

    /// Compares every output the reference recorded; `hidden_states.*` only when present.
    fn check(name: &str, model: &ClipTextModel, tol: f32) {
        let exp = expected(name);
        let out = model.forward(&ids(&exp)).unwrap();
        assert_close(
            &format!("{name} last_hidden_state"),
            &out.last_hidden_state,
            &exp["last_hidden_state"],
            tol,
        );
        assert_close(&format!("{name} pooled"), &out.pooled, &exp["pooled"], tol);
        match (&out.text_embeds, exp.get("text_embeds")) {
            (Some(got), Some(want)) => assert_close(&format!("{name} text_embeds"), got, want, tol),
            (None, None) => {}
            (got, want) => panic!(
                "{name}: text_embeds {} but reference {}",
                got.is_some(),
                want.is_some()
            ),
        }
        if exp.contains_key("hidden_states.0") {
            assert_eq!(
                out.hidden_states.len(),
                model.config().num_hidden_layers + 1
            );
            for (i, got) in out.hidden_states.iter().enumerate() {
                assert_close(
                    &format!("{name} hidden_states[{i}]"),
                    got,
                    &exp[&format!("hidden_states.{i}")],
                    tol,
                );
            }
        }
    }

    fn load_f32(rel: &str) -> ClipTextModel {
        ClipTextModel::load(&model_dir(rel), None, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn pix2pix_encoder_matches_transformers() {
        let model = load_f32("tiny-instruct-pix2pix/text_encoder");
        check("pix2pix_text_encoder", &model, TOLERANCE);
        check("pix2pix_short", &model, TOLERANCE);
    }

    #[test]
    fn sd_encoder_matches_transformers() {
        check(
            "sd_text_encoder",
            &load_f32("tiny-sd-img2img/text_encoder"),
            TOLERANCE,
        );
    }

    #[test]
    fn sdxl_encoders_match_transformers() {
        let first = load_f32("tiny-sdxl/text_encoder");
        assert!(first.projection.is_none());
        check("sdxl_text_encoder", &first, TOLERANCE);
        let second = load_f32("tiny-sdxl/text_encoder_2");
        assert!(
            second.projection.is_some(),
            "CLIPTextModelWithProjection must get its projection"
        );
        assert_eq!(second.config().hidden_act, Activation::Gelu);
        check("sdxl_text_encoder_2", &second, TOLERANCE);
    }

    /// Config variants of the SD encoder: same weights, another activation or EOS rule.
    fn variant(name: &str) -> ClipTextModel {
        let config = ClipTextConfig::from_file(
            &fixtures_dir()
                .join("clip/variants")
                .join(name)
                .join("config.json"),
        )
        .unwrap();
        let weights = load_component(
            &model_dir("tiny-sd-img2img/text_encoder"),
            "model",
            None,
            &Device::Cpu,
        )
        .unwrap();
        ClipTextModel::new(
            var_builder(weights, DType::F32, &Device::Cpu),
            config,
            false,
        )
        .unwrap()
    }

    #[test]
    fn exact_gelu_matches_transformers() {
        let model = variant("gelu");
        assert_eq!(model.config().hidden_act, Activation::Gelu);
        check("variant_gelu", &model, TOLERANCE);
    }

    #[test]
    fn tanh_gelus_match_transformers() {
        check("variant_gelu_tanh", &variant("gelu_tanh"), TOLERANCE);
        check("variant_gelu_new", &variant("gelu_new"), TOLERANCE);
    }

    #[test]
    fn non_legacy_eos_pools_first_eos_position() {
        let model = variant("eos_first");
        assert_eq!(model.config().eos_token_id, 500);
        check("variant_eos_first", &model, TOLERANCE);
    }

    #[test]
    fn legacy_pooling_takes_first_largest_id() {
        assert_eq!(first_max_position(&[998, 5, 999, 999, 999]), 2);
        assert_eq!(first_max_position(&[998, 5, 7, 999, 0, 0]), 3);
    }

    /// Half precision runs the same graph with an f32 softmax; it cannot match to 1e-5, but it
    /// must stay close to the f32 reference and keep the requested dtype.
    #[test]
    fn half_precision_stays_close() {
        for (dtype, tol) in [(DType::F16, 1e-2), (DType::BF16, 6e-2)] {
            let dir = model_dir("tiny-sdxl/text_encoder_2");
            let model = ClipTextModel::load(&dir, None, dtype, &Device::Cpu).unwrap();
            let exp = expected("sdxl_text_encoder_2");
            let out = model.forward(&ids(&exp)).unwrap();
            assert_eq!(out.last_hidden_state.dtype(), dtype);
            assert_close(
                &format!("{dtype:?} last_hidden_state"),
                &out.last_hidden_state,
                &exp["last_hidden_state"],
                tol,
            );
            let embeds = out.text_embeds.unwrap();
            assert_close(
                &format!("{dtype:?} text_embeds"),
                &embeds,
                &exp["text_embeds"],
                tol,
            );
        }
    }

    #[test]
    fn too_long_input_is_refused() {
        let model = load_f32("tiny-sd-img2img/text_encoder");
        let ids = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
        let err = model.forward(&ids).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        assert!(err.to_string().contains("78 tokens"), "{err}");
    }

    fn config_error(json: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        ClipTextConfig::from_file(&path).unwrap_err().to_string()
    }

    #[test]
    fn bad_configs_are_named() {
        let e = config_error(r#"{"hidden_act": "relu"}"#);
        assert!(e.contains("'relu'") && e.contains("config.json"), "{e}");
        let e = config_error(r#"{"hidden_size": 30, "num_attention_heads": 4}"#);
        assert!(e.contains("hidden_size 30"), "{e}");
    }

    #[test]
    fn missing_keys_take_transformers_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"hidden_size": 768, "num_attention_heads": 12, "unknown": true}"#,
        )
        .unwrap();
        let c = ClipTextConfig::from_file(&path).unwrap();
        assert_eq!(
            (c.hidden_size, c.head_dim(), c.num_hidden_layers),
            (768, 64, 12)
        );
        assert_eq!(
            (c.vocab_size, c.max_position_embeddings, c.eos_token_id),
            (49408, 77, 49407)
        );
        assert_eq!(c.hidden_act, Activation::QuickGelu);
        assert!(!c.declares_projection());
    }
}
