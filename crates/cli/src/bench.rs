//! `tessera bench`: times the engine's components at real shapes: median and minimum over a
//! few calls after one warm-up, achieved GFLOP/s (from an analytic FLOP count) and peak
//! resident memory. `scripts/bench_diffusers.py` prints the same figures for diffusers on the
//! same folder, and `scripts/bench_compare.sh` puts the two side by side.

mod flops;
mod rss;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tessera_api::defaults;
use tessera_engine::clip::{ClipTextConfig, ClipTextModel};
use tessera_engine::editor::{EditRequest, Editor, EditorConfig};
use tessera_engine::hub::ModelStore;
use tessera_engine::image_io::RgbImage;
use tessera_engine::pipelines::EditParams;
use tessera_engine::safety::SharedSafetyChecker;
use tessera_engine::unet::{AddedConditioning, UNet2DConditionModel, UNetConfig};
use tessera_engine::vae::{AutoencoderKl, VaeConfig};

use crate::random_model::{self, Arch, ArchName, ComponentKind};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A diffusers model folder to load. Without it, --arch is built in memory with random
    /// weights.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The architecture to build when no --model-dir is given.
    #[arg(
        long,
        value_enum,
        default_value = "sd15-pix2pix",
        conflicts_with = "model_dir"
    )]
    arch: ArchName,
    #[arg(long, value_enum, default_value = "all")]
    component: ComponentArg,
    /// Batch size of every component timed (default: UNet 3, as instruct-pix2pix guidance
    /// runs it; text encoders 2, prompt and negative prompt; VAE 1).
    #[arg(long)]
    batch: Option<usize>,
    /// Image size in pixels, square (default: the UNet's sample_size times the VAE scale
    /// factor: 512 for SD 1.5, 1024 for SDXL).
    #[arg(long)]
    size: Option<usize>,
    /// Timed calls after the warm-up call.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

/// The request `--component pipeline` times: a whole edit (prompt encoding, image encoding,
/// denoising, decoding; no safety check) of one `--size` square image, from a model folder.
#[derive(clap::Args)]
struct PipelineArgs {
    /// Denoising steps of the pipeline bench.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = defaults::GUIDANCE_SCALE)]
    guidance_scale: f64,
    #[arg(long, default_value_t = defaults::IMAGE_GUIDANCE_SCALE)]
    image_guidance_scale: f64,
    #[arg(long, default_value_t = defaults::STRENGTH)]
    strength: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ComponentArg {
    Unet,
    VaeEncode,
    VaeDecode,
    /// Every text encoder of the model.
    Text,
    /// Every component above, one by one.
    All,
    /// A whole edit through the pipeline (needs --model-dir; not part of `all`).
    Pipeline,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl DTypeArg {
    fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

/// Where the models come from: a folder on disk, or random weights of a known architecture.
enum Source {
    Folder(PathBuf),
    Random(Arch),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Folder(dir) => dir.display().to_string(),
            Source::Random(arch) => format!("{} (random weights)", arch.name),
        }
    }

    fn components(&self) -> Result<Vec<(String, ComponentKind)>> {
        match self {
            Source::Folder(dir) => {
                let path = dir.join("model_index.json");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                random_model::components(&text).with_context(|| path.display().to_string())
            }
            Source::Random(arch) => arch.components(),
        }
    }

    fn unet_config(&self) -> Result<UNetConfig> {
        match self {
            Source::Folder(dir) => Ok(UNetConfig::from_file(&dir.join("unet/config.json"))?),
            Source::Random(arch) => arch.unet_config(),
        }
    }

    fn vae_config(&self) -> Result<VaeConfig> {
        match self {
            Source::Folder(dir) => Ok(VaeConfig::from_file(&dir.join("vae/config.json"))?),
            Source::Random(arch) => arch.vae_config(),
        }
    }

    fn text_config(&self, name: &str) -> Result<ClipTextConfig> {
        match self {
            Source::Folder(dir) => Ok(ClipTextConfig::from_file(
                &dir.join(name).join("config.json"),
            )?),
            Source::Random(arch) => arch.text_config(name),
        }
    }

    fn unet(&self, dtype: DType, device: &Device) -> Result<UNet2DConditionModel> {
        match self {
            Source::Folder(dir) => Ok(UNet2DConditionModel::load(
                &dir.join("unet"),
                None,
                dtype,
                device,
            )?),
            Source::Random(arch) => Ok(random_model::random_unet(arch, dtype, device)?.0),
        }
    }

    fn vae(&self, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
        match self {
            Source::Folder(dir) => Ok(AutoencoderKl::load(&dir.join("vae"), None, dtype, device)?),
            Source::Random(arch) => Ok(random_model::random_vae(arch, dtype, device)?.0),
        }
    }

    fn text_encoder(
        &self,
        name: &str,
        projection: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<ClipTextModel> {
        match self {
            Source::Folder(dir) => Ok(ClipTextModel::load(&dir.join(name), None, dtype, device)?),
            Source::Random(arch) => {
                Ok(random_model::random_text_encoder(arch, name, projection, dtype, device)?.0)
            }
        }
    }
}

/// The figures of one component.
struct Measurement {
    component: String,
    input: Vec<usize>,
    load_s: f64,
    times_ms: Vec<f64>,
    flops: u64,
    peak_rss: Option<u64>,
}

impl Measurement {
    fn median_ms(&self) -> f64 {
        let mut t = self.times_ms.clone();
        t.sort_by(f64::total_cmp);
        let mid = t.len() / 2;
        if t.len() % 2 == 1 {
            t[mid]
        } else {
            (t[mid - 1] + t[mid]) / 2.0
        }
    }

    fn min_ms(&self) -> f64 {
        self.times_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn gflops(&self) -> f64 {
        self.flops as f64 / self.median_ms() / 1e6
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "component": self.component,
            "input_shape": self.input,
            "load_s": self.load_s,
            "median_ms": self.median_ms(),
            "min_ms": self.min_ms(),
            "times_ms": self.times_ms,
            "gflop": self.flops as f64 / 1e9,
            "gflop_per_s": self.gflops(),
            "peak_rss_mib": self.peak_rss.map(|b| b as f64 / (1 << 20) as f64),
        })
    }

    fn line(&self) -> String {
        let input = format!("{:?}", self.input);
        let rss = self.peak_rss.map_or("?".into(), human_bytes);
        format!(
            "{:<11} {:<18} median {:>9.1} ms  min {:>9.1} ms  {:>9.1} GFLOP  {:>7.1} GFLOP/s  peak RSS {rss}  (load {:.1} s)",
            self.component,
            input,
            self.median_ms(),
            self.min_ms(),
            self.flops as f64 / 1e9,
            self.gflops(),
            self.load_s
        )
    }
}

fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    match bytes as f64 / MIB {
        mib if mib >= 1024.0 => format!("{:.2} GiB", mib / 1024.0),
        mib => format!("{mib:.0} MiB"),
    }
}

/// Runs the timing protocol on `call`: one warm-up call, then `iters` timed ones. Device work
/// is waited for inside each timed interval.
fn time_calls(
    iters: usize,
    device: &Device,
    mut call: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    call()?;
    device.synchronize()?;
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            call()?;
            device.synchronize()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// Settings every component's bench shares.
struct Plan {
    batch: Option<usize>,
    size: usize,
    iters: usize,
    dtype: DType,
    device: Device,
}

impl Plan {
    /// Loads (or builds) a component, timing that, then times its calls, tracking the peak
    /// memory of the whole (the peak is reset first where the kernel allows it).
    fn measure<M>(
        &self,
        component: &str,
        input: Vec<usize>,
        flops: u64,
        load: impl FnOnce() -> Result<M>,
        mut call: impl FnMut(&mut M) -> Result<()>,
    ) -> Result<Measurement> {
        let peak_is_own = rss::reset_peak();
        let start = Instant::now();
        let mut model = load().with_context(|| format!("loading {component}"))?;
        let load_s = start.elapsed().as_secs_f64();
        let times_ms = time_calls(self.iters, &self.device, || call(&mut model))
            .with_context(|| format!("running {component}"))?;
        Ok(Measurement {
            component: component.to_string(),
            input,
            load_s,
            times_ms,
            flops,
            peak_rss: rss::peak().filter(|_| peak_is_own),
        })
    }

    fn randn(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1., shape, &self.device)?.to_dtype(self.dtype)?)
    }

    fn text(&self, source: &Source, name: &str, projection: bool) -> Result<Measurement> {
        let config = source.text_config(name)?;
        let load = || source.text_encoder(name, projection, self.dtype, &self.device);
        let (batch, seq) = (self.batch.unwrap_or(2), config.max_position_embeddings);
        let ids = token_ids(batch, seq, config.vocab_size, &self.device)?;
        let flops = flops::clip_text(&config, batch, seq, projection);
        let label = if name == "text_encoder" {
            "text".to_string()
        } else {
            name.replace("text_encoder_", "text-")
        };
        self.measure(
            &label,
            vec![batch, seq],
            flops,
            load,
            |m: &mut ClipTextModel| {
                m.forward(&ids)?;
                Ok(())
            },
        )
    }

    fn vae_encode(&self, source: &Source, cfg: &VaeConfig) -> Result<Measurement> {
        let batch = self.batch.unwrap_or(1);
        let shape = vec![batch, cfg.in_channels, self.size, self.size];
        let x = self.randn(&shape)?;
        let flops = flops::vae_encode(cfg, batch, (self.size, self.size));
        let load = || source.vae(self.dtype, &self.device);
        self.measure("vae-encode", shape, flops, load, |m: &mut AutoencoderKl| {
            m.encode(&x)?;
            Ok(())
        })
    }

    fn vae_decode(&self, source: &Source, cfg: &VaeConfig) -> Result<Measurement> {
        let batch = self.batch.unwrap_or(1);
        let latent = self.size / vae_scale(cfg);
        let shape = vec![batch, cfg.latent_channels, latent, latent];
        let z = self.randn(&shape)?;
        let flops = flops::vae_decode(cfg, batch, (latent, latent));
        let load = || source.vae(self.dtype, &self.device);
        self.measure("vae-decode", shape, flops, load, |m: &mut AutoencoderKl| {
            m.decode(&z)?;
            Ok(())
        })
    }

    fn unet(&self, source: &Source, cfg: &UNetConfig, latent: usize) -> Result<Measurement> {
        const CONTEXT_LEN: usize = 77;
        let batch = self.batch.unwrap_or(3);
        let shape = vec![batch, cfg.in_channels, latent, latent];
        let sample = self.randn(&shape)?;
        let context = self.randn(&[batch, CONTEXT_LEN, cfg.cross_attention_dim])?;
        let added = self.added_conditioning(cfg, batch)?;
        let flops =
            flops::unet(cfg, batch, (latent, latent), CONTEXT_LEN).map_err(anyhow::Error::msg)?;
        let load = || source.unet(self.dtype, &self.device);
        self.measure("unet", shape, flops, load, |m: &mut UNet2DConditionModel| {
            m.forward(&sample, 500.0, &context, added.as_ref())?;
            Ok(())
        })
    }

    /// A whole edit from the folder `dir`, as `tessera edit` runs it (FLOPs not counted).
    fn pipeline(&self, dir: &Path, args: &PipelineArgs) -> Result<Measurement> {
        let batch = self.batch.unwrap_or(1);
        let side = self.size as u32;
        // A smooth gradient: a real image's statistics matter little to the cost.
        let pixels = (0..side * side)
            .flat_map(|i| {
                let (x, y) = (i % side, i / side);
                [(x * 255 / side) as u8, (y * 255 / side) as u8, 128]
            })
            .collect();
        let image = RgbImage::new(side, side, pixels)?;
        let request = EditRequest {
            params: EditParams {
                prompt: "turn it into a watercolour painting".into(),
                negative_prompt: String::new(),
                num_inference_steps: args.steps,
                guidance_scale: args.guidance_scale,
                image_guidance_scale: args.image_guidance_scale,
                strength: args.strength,
            },
            loras: Vec::new(),
            seed: 0,
            num_images: batch,
            safety_check: false,
        };
        let store = ModelStore::new(dir);
        let config = EditorConfig {
            model_id: dir.to_string_lossy().into_owned(),
            safety: Arc::new(SharedSafetyChecker::new(
                store.clone(),
                tessera_engine::safety::DEFAULT_MODEL_ID,
                self.device.clone(),
            )),
            store,
            device: self.device.clone(),
            dtype: self.dtype,
        };
        let load = || Ok(Editor::load(&config)?);
        let input = vec![batch, 3, self.size, self.size];
        self.measure("pipeline", input, 0, load, |editor: &mut Editor| {
            editor.edit(&image, &request, &mut |_, _| {}, &|| true)?;
            Ok(())
        })
    }

    /// SDXL's pooled text embedding and size/crop ids, at the bench's image size.
    fn added_conditioning(
        &self,
        cfg: &UNetConfig,
        batch: usize,
    ) -> Result<Option<AddedConditioning>> {
        let (Some(time_dim), Some(input)) = (
            cfg.addition_time_embed_dim,
            cfg.projection_class_embeddings_input_dim,
        ) else {
            return Ok(None);
        };
        let Some(pooled) = input.checked_sub(6 * time_dim) else {
            bail!("unet config: projection_class_embeddings_input_dim {input} is less than 6 x addition_time_embed_dim {time_dim}");
        };
        let s = self.size as f32;
        let ids: Vec<f32> = (0..batch).flat_map(|_| [s, s, 0., 0., s, s]).collect();
        Ok(Some(AddedConditioning {
            text_embeds: self.randn(&[batch, pooled])?,
            time_ids: Tensor::from_vec(ids, (batch, 6), &self.device)?.to_dtype(self.dtype)?,
        }))
    }
}

/// diffusers' `vae_scale_factor`.
fn vae_scale(cfg: &VaeConfig) -> usize {
    1 << (cfg.block_out_channels.len() - 1)
}

/// Prompts as a tokenizer would give them: start token, a few words, end token, padded with
/// the end token. The ids are made up within the vocabulary (the last two ids are CLIP's start
/// and end tokens); the cost does not depend on them.
fn token_ids(batch: usize, seq: usize, vocab: usize, device: &Device) -> Result<Tensor> {
    let (start, end) = (vocab as u32 - 2, vocab as u32 - 1);
    let row: Vec<u32> = (0..seq)
        .map(|i| match i {
            0 => start,
            1..=8 if i + 1 < seq => 300 + i as u32,
            _ => end,
        })
        .collect();
    let ids: Vec<u32> = (0..batch).flat_map(|_| row.iter().copied()).collect();
    Ok(Tensor::from_vec(ids, (batch, seq), device)?)
}

pub fn run(a: BenchArgs) -> Result<()> {
    let source = match &a.model_dir {
        Some(dir) => Source::Folder(dir.clone()),
        None => Source::Random(a.arch.arch()),
    };
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let parts = source.components()?;
    let has = |kind: fn(&ComponentKind) -> bool| parts.iter().any(|(_, k)| kind(k));
    let unet_cfg = has(|k| *k == ComponentKind::Unet)
        .then(|| source.unet_config())
        .transpose()?;
    let vae_cfg = has(|k| *k == ComponentKind::Vae)
        .then(|| source.vae_config())
        .transpose()?;
    let scale = vae_cfg.as_ref().map_or(8, vae_scale);
    let size = a
        .size
        .or_else(|| {
            unet_cfg
                .as_ref()
                .and_then(|c| c.other.get("sample_size")?.as_u64())
                .map(|s| s as usize * scale)
        })
        .unwrap_or(512);
    if size == 0 || !size.is_multiple_of(scale) {
        bail!("--size {size} must be a positive multiple of the VAE scale factor {scale}");
    }
    let plan = Plan {
        batch: a.batch,
        size,
        iters: a.iters,
        dtype: a.dtype.dtype(),
        device: tessera_engine::device::parse(&a.device)?,
    };
    let wants = |c: ComponentArg| a.component == ComponentArg::All || a.component == c;
    if !a.json {
        println!(
            "tessera bench: {}, {} {}, {} threads, {} px, {} timed calls after 1 warm-up",
            source.describe(),
            a.device,
            plan.dtype.as_str(),
            candle_core::utils::get_num_threads(),
            size,
            a.iters
        );
    }
    let mut results = Vec::new();
    let mut report = |m: Measurement| {
        if !a.json {
            println!("{}", m.line());
        }
        results.push(m);
    };
    // Pipeline order: prompts, image latents, denoising, decoding.
    if wants(ComponentArg::Text) {
        for (name, kind) in &parts {
            if let ComponentKind::TextEncoder { projection } = kind {
                report(plan.text(&source, name, *projection)?);
            }
        }
    }
    if let Some(cfg) = &vae_cfg {
        if wants(ComponentArg::VaeEncode) {
            report(plan.vae_encode(&source, cfg)?);
        }
    }
    if let Some(cfg) = &unet_cfg {
        if wants(ComponentArg::Unet) {
            report(plan.unet(&source, cfg, size / scale)?);
        }
    }
    if let Some(cfg) = &vae_cfg {
        if wants(ComponentArg::VaeDecode) {
            report(plan.vae_decode(&source, cfg)?);
        }
    }
    if a.component == ComponentArg::Pipeline {
        let Source::Folder(dir) = &source else {
            bail!("--component pipeline needs --model-dir (a folder `tessera random-model` writes will do)");
        };
        report(plan.pipeline(dir, &a.pipeline)?);
    }
    if results.is_empty() {
        bail!(
            "{} has no component to bench for this --component",
            source.describe()
        );
    }
    if a.json {
        let out = json!({
            "tool": "tessera",
            "model": source.describe(),
            "device": a.device,
            "dtype": plan.dtype.as_str(),
            "threads": candle_core::utils::get_num_threads(),
            "size": size,
            "iters": a.iters,
            "results": results.iter().map(Measurement::to_json).collect::<Vec<_>>(),
        });
        println!("{out}");
    }
    Ok(())
}
