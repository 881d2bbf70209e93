//! Downloading from the HuggingFace hub (hf-hub's blocking client) into the model directory,
//! limited to the files a diffusers pipeline loads.
//!
//! hf-hub 0.4 offers no timeouts for its transfers, so every download starts with the
//! repository listing, sent with a deadline of our own: an unreachable hub (no network,
//! a firewall that drops packets, a wrong `HF_ENDPOINT`) fails within seconds there, and the
//! transfers that follow only start once the hub has answered. The listing also tells which
//! files exist, so that only the useful ones are fetched.
//!
//! Failures come back as sentences (`Err(String)`) that the store folds into its
//! not-found error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
use hf_hub::api::RepoInfo;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::RepoFile;

pub(super) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How long the hub may take to answer the listing: enough for a slow link, short enough
/// that a server does not sit for minutes on a hub it cannot reach.
pub(super) const DEFAULT_HUB_TIMEOUT: Duration = Duration::from_secs(10);

/// The weight file stems diffusers and transformers save (`diffusion_pytorch_model.safetensors`,
/// `model.fp16-00001-of-00002.safetensors`): only after these is a `.xxx` a variant name.
const WEIGHT_STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];
/// The `.bin` weight stems: transformers' `pytorch_model`, diffusers' `diffusion_pytorch_model`.
const BIN_STEMS: [&str; 2] = ["diffusion_pytorch_model", "pytorch_model"];

/// A client for one hub endpoint, writing into one hub-cache directory.
pub(super) struct Hub {
    api: Api,
    endpoint: String,
    /// The deadline of the listing request.
    timeout: Duration,
}

impl Hub {
    pub(super) fn new(
        cache_dir: &Path,
        endpoint: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        // hf-hub's builder reads a token file next to the cache; the token comes from the
        // store instead, so that the model directory's parent plays no part.
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache_dir.to_path_buf()))
            .with_endpoint(endpoint.to_string())
            .with_token(token)
            .with_progress(false)
            .build()
            .map_err(|e| format!("the hub client could not start: {e}"))?;
        Ok(Self {
            api,
            endpoint: endpoint.to_string(),
            timeout,
        })
    }

    /// Downloads what a pipeline needs from repository `id` (see [`select_files`]) and
    /// returns its snapshot folder.
    pub(super) fn download_repo(&self, id: &str, variant: Option<&str>) -> Result<PathBuf, String> {
        let repo = self.api.model(id.to_string());
        let listing: RepoInfo = self.listing(&repo, id, false)?;
        let files: Vec<&str> = listing
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .collect();
        let mut snapshot = None;
        let components = if files.contains(&MODEL_INDEX) {
            let index = self.fetch(&repo, id, MODEL_INDEX)?;
            snapshot = Some(snapshot_of(&index, MODEL_INDEX));
            Some(pipeline_components(&index)?)
        } else {
            None
        };
        let wanted = select_files(&files, components.as_ref(), variant);
        for file in wanted.into_iter().filter(|f| *f != MODEL_INDEX) {
            let path = self.fetch(&repo, id, file)?;
            snapshot.get_or_insert_with(|| snapshot_of(&path, file));
        }
        snapshot.ok_or_else(|| {
            format!("the hub's repository {id} holds no files a diffusers pipeline can load")
        })
    }

    /// Downloads one file of repository `id` and returns its path in the snapshot.
    pub(super) fn download_file(&self, id: &str, file: &str) -> Result<PathBuf, String> {
        let repo = self.api.model(id.to_string());
        let listing: RepoInfo = self.listing(&repo, id, false)?;
        if !listing.siblings.iter().any(|s| s.rfilename == file) {
            return Err(format!("the hub's repository {id} has no file {file}"));
        }
        self.fetch(&repo, id, file)
    }

    /// The top-level files of repository `id` with their sizes: the listing asked with
    /// `blobs=true`, as huggingface_hub's `model_info(files_metadata=True)` asks it, which
    /// adds each file's `size` (and for LFS files an `lfs` object with the same size).
    pub(super) fn top_level_files(&self, id: &str) -> Result<Vec<RepoFile>, String> {
        let repo = self.api.model(id.to_string());
        let listing: SizedListing = self.listing(&repo, id, true)?;
        Ok(listing
            .siblings
            .into_iter()
            .filter(|s| !s.rfilename.contains('/'))
            .map(|s| RepoFile {
                size: s.lfs.and_then(|l| l.size).or(s.size),
                name: s.rfilename,
            })
            .collect())
    }

    /// Downloads `file` of repository `id`, a name its listing gave, and returns its path
    /// in the snapshot.
    pub(super) fn fetch_listed(&self, id: &str, file: &str) -> Result<PathBuf, String> {
        self.fetch(&self.api.model(id.to_string()), id, file)
    }

    /// The repository's file list (with sizes when `sizes`), or why the hub did not give it
    /// in time.
    fn listing<T: DeserializeOwned>(
        &self,
        repo: &ApiRepo,
        id: &str,
        sizes: bool,
    ) -> Result<T, String> {
        let failed = |why: String| format!("downloading it from {} failed: {why}", self.endpoint);
        let mut request = repo.info_request().timeout(self.timeout);
        if sizes {
            request = request.query("blobs", "true");
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(e) => {
                let message = e.to_string();
                return Err(failed(match e.into_response().map(|r| r.status()) {
                    Some(401 | 403 | 404) => format!(
                        "the hub has no public repository {id} ({message}); set HF_TOKEN if it is private or gated"
                    ),
                    _ => message,
                }));
            }
        };
        response
            .into_json()
            .map_err(|e| failed(format!("the hub's listing of {id} is unreadable: {e}")))
    }

    /// Downloads one file into the cache (blob, snapshot link, refs/main), logging it.
    fn fetch(&self, repo: &ApiRepo, id: &str, file: &str) -> Result<PathBuf, String> {
        tracing::info!(model = id, file, endpoint = %self.endpoint, "downloading");
        let path = repo
            .download(file)
            .map_err(|e| format!("downloading {file} from {} failed: {e}", self.endpoint))?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(model = id, file, bytes, path = %path.display(), "downloaded");
        Ok(path)
    }
}

const MODEL_INDEX: &str = "model_index.json";

/// The listing with file sizes (`?blobs=true`); only what is read of it.
#[derive(Deserialize)]
struct SizedListing {
    siblings: Vec<SizedSibling>,
}

#[derive(Deserialize)]
struct SizedSibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    size: Option<u64>,
}

/// The component folders a pipeline's `model_index.json` names: entries holding a
/// `[library, class]` pair whose library is set (`[null, null]` marks an absent optional
/// component such as the safety checker).
fn pipeline_components(index: &Path) -> Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let value: serde_json::Value =
        crate::error::parse_json(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("{} is not a JSON object", index.display()))?;
    Ok(object
        .iter()
        .filter(|(key, entry)| {
            !key.starts_with('_')
                && entry
                    .as_array()
                    .is_some_and(|pair| pair.first().is_some_and(|l| l.is_string()))
        })
        .map(|(key, _)| key.clone())
        .collect())
}

/// The files of a listing worth downloading. For a pipeline (`components` from its
/// `model_index.json`): `model_index.json` and the files directly inside the component
/// folders; for any other repository: its top-level files. Of those, JSON and text files
/// (configs, tokenizers) and one set of weights per folder, the set the weight loader
/// (`weights::component_files`) would pick: safetensors when the folder has any, PyTorch
/// `.bin` files (`pytorch_model`/`diffusion_pytorch_model` and their shards) only when it
/// has none, never both; within the format, the `variant` files where one is asked for and
/// the folder has them, the plain files otherwise (or `fp16` when there are only those).
pub(super) fn select_files<'a>(
    files: &[&'a str],
    components: Option<&BTreeSet<String>>,
    variant: Option<&str>,
) -> Vec<&'a str> {
    let mut folders: BTreeMap<&str, Vec<&'a str>> = BTreeMap::new();
    let mut wanted = Vec::new();
    for &file in files {
        let folder = match (components, file.split_once('/')) {
            (Some(_), None) if file == MODEL_INDEX => {
                wanted.push(file);
                continue;
            }
            (Some(components), Some((folder, name)))
                if components.contains(folder) && !name.contains('/') =>
            {
                folder
            }
            (None, None) => "",
            _ => continue,
        };
        folders.entry(folder).or_default().push(file);
    }
    for in_folder in folders.values() {
        wanted.extend(select_in_folder(in_folder, variant));
    }
    wanted
}

/// The two weight formats, in the loader's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Bin,
}

/// A weight file's (or shard index's) format and variant.
type WeightKind = (Format, Option<String>);

/// A weight file's (or shard index's) format and variant; `None` for anything else.
fn weight_kind(name: &str) -> Option<WeightKind> {
    if let Some(v) = weight_variant(name) {
        return Some((Format::Safetensors, v));
    }
    bin_variant(name).map(|v| (Format::Bin, v))
}

/// The files of one folder to download (see [`select_files`]).
fn select_in_folder<'a>(files: &[&'a str], variant: Option<&str>) -> Vec<&'a str> {
    let name_of = |file: &'a str| file.rsplit('/').next().unwrap_or(file);
    let kinds: Vec<(&'a str, Option<WeightKind>)> = files
        .iter()
        .map(|&f| (f, weight_kind(name_of(f))))
        .collect();
    let format = if kinds
        .iter()
        .any(|(_, k)| matches!(k, Some((Format::Safetensors, _))))
    {
        Format::Safetensors
    } else {
        Format::Bin
    };
    let has = |v: Option<&str>| {
        kinds
            .iter()
            .any(|(_, k)| matches!(k, Some((f, kv)) if *f == format && kv.as_deref() == v))
    };
    let chosen = match variant {
        Some(v) if has(Some(v)) => Some(v),
        None if !has(None) && has(Some("fp16")) => Some("fp16"),
        _ => None,
    };
    kinds
        .into_iter()
        .filter(|(f, kind)| match kind {
            Some((fmt, v)) => *fmt == format && v.as_deref() == chosen,
            None => is_config(name_of(f)),
        })
        .map(|(f, _)| f)
        .collect()
}

/// For a PyTorch weight file or shard index of the stems transformers and diffusers write
/// (`pytorch_model`, `diffusion_pytorch_model`), its variant (`Some(None)` for plain
/// weights); `None` for anything else (`openvino_model.bin`, a LoRA `.bin`...). Recognises
/// `STEM.bin`, `STEM.VARIANT.bin`, `STEM[.VARIANT]-00001-of-00002.bin`,
/// `STEM.bin.index[.VARIANT].json` and the older `STEM.VARIANT.bin.index.json`.
fn bin_variant(name: &str) -> Option<Option<String>> {
    let body = match name.strip_suffix(".bin") {
        Some(body) => strip_shard_suffix(body).to_string(),
        None => {
            let body = name.strip_suffix(".json")?;
            if !body.contains(".bin") || !body.contains(".index") {
                return None;
            }
            let rest: Vec<&str> = body
                .split('.')
                .filter(|part| *part != "bin" && *part != "index")
                .collect();
            rest.join(".")
        }
    };
    let (stem, variant) = match body.split_once('.') {
        Some((stem, v)) if !v.is_empty() && !v.contains('.') => (stem, Some(v.to_string())),
        Some(_) => return None,
        None => (body.as_str(), None),
    };
    BIN_STEMS.contains(&stem).then_some(variant)
}

/// For a safetensors weight file or shard index, its variant (`Some(None)` for plain
/// weights); `None` for anything else. Recognises `STEM.VARIANT.safetensors`,
/// `STEM.VARIANT-00001-of-00002.safetensors`, `STEM.safetensors.index.VARIANT.json` (and the
/// older `STEM.safetensors.VARIANT.index.json`, `STEM.VARIANT.safetensors.index.json`).
fn weight_variant(name: &str) -> Option<Option<String>> {
    if let Some(body) = name.strip_suffix(".safetensors") {
        return Some(stem_variant(strip_shard_suffix(body)));
    }
    let body = name.strip_suffix(".json")?;
    if !body.contains(".safetensors") || !body.contains(".index") {
        return None;
    }
    let rest: Vec<&str> = body
        .split('.')
        .filter(|part| *part != "safetensors" && *part != "index")
        .collect();
    Some(stem_variant(&rest.join(".")))
}

/// `STEM.VARIANT` -> the variant, for the stems diffusers and transformers write; other
/// names (a LoRA file, `sd_xl_base_1.0`) have no variant, whatever dots they hold.
fn stem_variant(body: &str) -> Option<String> {
    let (stem, variant) = body.split_once('.')?;
    let plain = !variant.is_empty() && !variant.contains('.');
    (WEIGHT_STEMS.contains(&stem) && plain).then(|| variant.to_string())
}

/// `NAME-00001-of-00002` -> `NAME`: the shard numbering transformers and diffusers write.
fn strip_shard_suffix(body: &str) -> &str {
    let bytes = body.as_bytes();
    let n = bytes.len();
    // "-00001-of-00002" is 15 bytes: '-', 5 digits, "-of-", 5 digits.
    if n < 15 {
        return body;
    }
    let tail = &bytes[n - 15..];
    let digits = |r: std::ops::Range<usize>| tail[r].iter().all(u8::is_ascii_digit);
    if tail[0] == b'-' && digits(1..6) && &tail[6..10] == b"-of-" && digits(10..15) {
        &body[..n - 15]
    } else {
        body
    }
}

/// Configuration and tokenizer files: small, and all a pipeline reads besides weights.
fn is_config(name: &str) -> bool {
    name.ends_with(".json") || name.ends_with(".txt")
}

/// The snapshot folder holding `file` (a repository path, `unet/config.json`) at `path`.
fn snapshot_of(path: &Path, file: &str) -> PathBuf {
    let mut snapshot = path.to_path_buf();
    for _ in file.split('/') {
        snapshot.pop();
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What stabilityai/stable-diffusion-xl-base-1.0 lists (abridged; every kind of file
    /// is there), with the weights that must and must not be chosen.
    const SDXL_BASE: &[&str] = &[
        ".gitattributes",
        "01.png",
        "LICENSE.md",
        "README.md",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "sd_xl_base_1.0.safetensors",
        "sd_xl_base_1.0_0.9vae.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors",
        "text_encoder/config.json",
        "text_encoder/flax_model.msgpack",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.onnx",
        "text_encoder/model.safetensors",
        "text_encoder/openvino_model.bin",
        "text_encoder/openvino_model.xml",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors",
        "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.fp16.json",
        "text_encoder_2/model.safetensors",
        "text_encoder_2/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/model.onnx_data",
        "unet/diffusion_flax_model.msgpack",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae_1_0/config.json",
        "vae_1_0/diffusion_pytorch_model.safetensors",
        "vae_decoder/model.onnx",
    ];

    const CONFIGS: &[&str] = &[
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "vae/config.json",
    ];

    fn sdxl_components() -> BTreeSet<String> {
        [
            "scheduler",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "unet",
            "vae",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    fn sorted<'a>(files: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut files: Vec<&str> = files.into_iter().collect();
        files.sort_unstable();
        files
    }

    #[test]
    fn pipeline_without_variant_takes_plain_safetensors_of_its_components() {
        let got = select_files(SDXL_BASE, Some(&sdxl_components()), None);
        let mut expected = CONFIGS.to_vec();
        expected.extend([
            "text_encoder/model.safetensors",
            "text_encoder_2/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]);
        assert_eq!(sorted(got), sorted(expected));
    }

    #[test]
    fn pipeline_with_variant_takes_variant_weights_and_shard_index() {
        let got = select_files(SDXL_BASE, Some(&sdxl_components()), Some("fp16"));
        let mut expected = CONFIGS.to_vec();
        expected.extend([
            "text_encoder/model.fp16.safetensors",
            "text_encoder_2/model.fp16-00001-of-00002.safetensors",
            "text_encoder_2/model.fp16-00002-of-00002.safetensors",
            "text_encoder_2/model.safetensors.index.fp16.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ]);
        assert_eq!(sorted(got), sorted(expected));
    }

    #[test]
    fn variant_missing_in_a_folder_falls_back_to_plain_weights_there() {
        let files = [
            "model_index.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
            "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
            "vae/diffusion_pytorch_model.safetensors.index.json",
            "vae/diffusion_pytorch_model.bin",
        ];
        let components = ["unet", "vae"].into_iter().map(String::from).collect();
        let got = select_files(&files, Some(&components), Some("fp16"));
        assert_eq!(
            sorted(got),
            sorted([
                "model_index.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
                "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
                "vae/diffusion_pytorch_model.safetensors.index.json",
            ])
        );
    }

    #[test]
    fn plain_repository_takes_top_level_configs_and_safetensors() {
        let files = [
            "README.md",
            "config.json",
            "preprocessor_config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "pytorch_lora_weights.safetensors",
            "sd_xl_offset_example-lora_1.0.safetensors",
            "checkpoints/model.ckpt",
            "extra/model.safetensors",
        ];
        assert_eq!(
            sorted(select_files(&files, None, None)),
            sorted([
                "config.json",
                "model.safetensors",
                "preprocessor_config.json",
                "pytorch_lora_weights.safetensors",
                "sd_xl_offset_example-lora_1.0.safetensors",
            ])
        );
    }

    #[test]
    fn weight_variants_are_read_from_every_naming_scheme() {
        let cases: &[(&str, Option<Option<&str>>)] = &[
            ("diffusion_pytorch_model.safetensors", Some(None)),
            (
                "diffusion_pytorch_model.fp16.safetensors",
                Some(Some("fp16")),
            ),
            ("model-00001-of-00003.safetensors", Some(None)),
            ("model.bf16-00001-of-00003.safetensors", Some(Some("bf16"))),
            ("model.safetensors.index.json", Some(None)),
            ("model.safetensors.index.fp16.json", Some(Some("fp16"))),
            ("model.safetensors.fp16.index.json", Some(Some("fp16"))),
            (
                "diffusion_pytorch_model.fp16.safetensors.index.json",
                Some(Some("fp16")),
            ),
            ("sd_xl_base_1.0.safetensors", Some(None)),
            ("pytorch_lora_weights.safetensors", Some(None)),
            ("pytorch_model.bin.index.json", None),
            ("diffusion_pytorch_model.bin", None),
            ("config.json", None),
        ];
        for (name, expected) in cases {
            let got = weight_variant(name);
            assert_eq!(got.as_ref().map(|v| v.as_deref()), *expected, "{name}");
        }
    }

    #[test]
    fn bin_weights_only_where_a_folder_has_no_safetensors() {
        // CompVis/stable-diffusion-safety-checker's main branch.
        let checker = [
            ".gitattributes",
            "README.md",
            "config.json",
            "preprocessor_config.json",
            "pytorch_model.bin",
        ];
        assert_eq!(
            sorted(select_files(&checker, None, None)),
            sorted([
                "config.json",
                "preprocessor_config.json",
                "pytorch_model.bin"
            ])
        );
        let files = [
            "model_index.json",
            "text_encoder/config.json",
            "text_encoder/pytorch_model-00001-of-00002.bin",
            "text_encoder/pytorch_model-00002-of-00002.bin",
            "text_encoder/pytorch_model.bin.index.json",
            "text_encoder/openvino_model.bin",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.fp16.bin",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.bin",
            "vae/diffusion_pytorch_model.fp16.bin",
        ];
        let components = ["text_encoder", "unet", "vae"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            sorted(select_files(&files, Some(&components), None)),
            sorted([
                "model_index.json",
                "text_encoder/config.json",
                "text_encoder/pytorch_model-00001-of-00002.bin",
                "text_encoder/pytorch_model-00002-of-00002.bin",
                "text_encoder/pytorch_model.bin.index.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.bin",
            ])
        );
        let got = select_files(&files, Some(&components), Some("fp16"));
        assert!(
            got.contains(&"vae/diffusion_pytorch_model.fp16.bin"),
            "{got:?}"
        );
        assert!(!got.contains(&"vae/diffusion_pytorch_model.bin"), "{got:?}");
        assert!(
            got.contains(&"unet/diffusion_pytorch_model.safetensors"),
            "{got:?}"
        );
        assert!(!got
            .iter()
            .any(|f| f.starts_with("unet/") && f.ends_with(".bin")));
    }

    #[test]
    fn only_fp16_weights_are_taken_without_a_variant() {
        let files = ["config.json", "model.fp16.safetensors", "pytorch_model.bin"];
        assert_eq!(
            sorted(select_files(&files, None, None)),
            sorted(["config.json", "model.fp16.safetensors"])
        );
    }

    #[test]
    fn bin_variants_are_read_from_every_naming_scheme() {
        let cases: &[(&str, Option<Option<&str>>)] = &[
            ("pytorch_model.bin", Some(None)),
            ("diffusion_pytorch_model.bin", Some(None)),
            ("diffusion_pytorch_model.fp16.bin", Some(Some("fp16"))),
            ("pytorch_model-00001-of-00002.bin", Some(None)),
            ("pytorch_model.fp16-00001-of-00002.bin", Some(Some("fp16"))),
            ("pytorch_model.bin.index.json", Some(None)),
            ("pytorch_model.bin.index.fp16.json", Some(Some("fp16"))),
            ("pytorch_model.fp16.bin.index.json", Some(Some("fp16"))),
            ("openvino_model.bin", None),
            ("pytorch_lora_weights.bin", None),
            ("model.safetensors", None),
            ("config.json", None),
        ];
        for (name, expected) in cases {
            let got = bin_variant(name);
            assert_eq!(got.as_ref().map(|v| v.as_deref()), *expected, "{name}");
        }
    }

    #[test]
    fn components_are_the_entries_with_a_library() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(MODEL_INDEX);
        std::fs::write(
            &index,
            r#"{"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                "requires_safety_checker": false, "safety_checker": [null, null],
                "unet": ["diffusers", "UNet2DConditionModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}"#,
        )
        .unwrap();
        let got = pipeline_components(&index).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["tokenizer", "unet"]);
    }

    #[test]
    fn snapshot_is_found_above_nested_files() {
        let path = Path::new("/m/models--a--b/snapshots/abc/unet/config.json");
        assert_eq!(
            snapshot_of(path, "unet/config.json"),
            Path::new("/m/models--a--b/snapshots/abc")
        );
    }
}
