//! Model ids and the model directory.
//!
//! A model is named by a HuggingFace id (`ORG/NAME`) and lives in a model directory laid out
//! as the HuggingFace hub cache — what `huggingface-cli download --cache-dir DIR` writes and
//! what ai-runner mounts:
//!
//! ```text
//! DIR/models--ORG--NAME/refs/main              the revision (a commit hash) "main" points at
//! DIR/models--ORG--NAME/snapshots/REV/...      the repository's files, usually symlinks
//! DIR/models--ORG--NAME/blobs/ETAG             ... into here
//! ```
//!
//! Ids arrive from HTTP requests (`model_id`, LoRA repositories), so they are checked before
//! they come near a path: an id that is not `ORG/NAME` in the hub's own alphabet never
//! reaches the filesystem. A model missing from the directory is downloaded (with the hf-hub
//! crate, into the same layout) when downloads are allowed; otherwise the error names the id,
//! the directory and what was found there.

mod download;
#[cfg(test)]
pub(crate) mod fake_hub;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_api::quoted;

use crate::error::{Error, Result};

/// The longest organisation or name part the hub accepts.
const MAX_PART_LEN: usize = 96;

/// Checks that `id` is a HuggingFace model id, `ORG/NAME`, before it is used as part of a
/// path. Each part holds ASCII letters, digits, `-`, `_` and `.`, starts and ends with a
/// letter, digit or `_`, and has at most 96 characters; `..` and `--` are refused (the hub
/// refuses them too, and `--` is the separator of the model directory's folder names).
pub fn validate_model_id(id: &str) -> Result<()> {
    id_problem(id).map_or(Ok(()), |reason| {
        Err(Error::InvalidModelId {
            id: quoted(id),
            reason,
        })
    })
}

/// What is wrong with `id`, in words a user understands; `None` for a valid id. The checks
/// go from the most alarming (path tricks) to the most mundane, so that the reason names
/// the real problem rather than a side effect of it.
fn id_problem(id: &str) -> Option<String> {
    const SHAPE: &str = "ids look like ORG/NAME, e.g. timbrooks/instruct-pix2pix";
    if id.is_empty() {
        return Some("it is empty".into());
    }
    if id.chars().any(char::is_control) {
        return Some("it contains a control character".into());
    }
    if id.chars().any(char::is_whitespace) {
        return Some("it contains whitespace".into());
    }
    if id.contains('\\') {
        return Some(format!("it contains a backslash ({SHAPE})"));
    }
    if id.starts_with('/') {
        return Some(format!("it is an absolute path ({SHAPE})"));
    }
    if id.contains("..") {
        return Some("it contains '..'".into());
    }
    let Some((org, name)) = id.split_once('/') else {
        return Some(format!("it has no '/' ({SHAPE})"));
    };
    if name.contains('/') {
        return Some(format!("it has more than one '/' ({SHAPE})"));
    }
    part_problem("organisation", org).or_else(|| part_problem("name", name))
}

/// What is wrong with one part of an id (`what` names it in the message).
fn part_problem(what: &str, part: &str) -> Option<String> {
    if part.is_empty() {
        return Some(format!("the {what} part is empty"));
    }
    if let Some(c) = part.chars().find(|c| !is_id_char(*c)) {
        return Some(format!(
            "it contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    if part.contains("--") {
        return Some("it contains '--', which the model directory uses as its separator".into());
    }
    let edge = |c: char| c == '-' || c == '.';
    if part.starts_with(edge) || part.ends_with(edge) {
        return Some(format!("the {what} part starts or ends with '-' or '.'"));
    }
    if part.len() > MAX_PART_LEN {
        return Some(format!(
            "the {what} part has {} characters; at most {MAX_PART_LEN} are allowed",
            part.len()
        ));
    }
    None
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Checks a file name inside a repository (`unet/config.json`, a LoRA weights file): a
/// relative path of plain components, so that joining it to a snapshot cannot leave it.
fn validate_file_name(id: &str, file: &str) -> Result<()> {
    let problem = if file.is_empty() {
        Some("it is empty")
    } else if file.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if file.contains('\\') {
        Some("it contains a backslash (use '/' between folders)")
    } else if file.starts_with('/') {
        Some("it is an absolute path")
    } else if file.split('/').any(|c| c == "..") {
        Some("it contains '..'")
    } else if file.split('/').any(|c| c.is_empty() || c == ".") {
        Some("it has an empty or '.' folder")
    } else {
        None
    };
    problem.map_or(Ok(()), |reason| {
        Err(Error::InvalidInput(format!(
            "invalid file name '{}' in model '{}': {reason}",
            quoted(file),
            quoted(id)
        )))
    })
}

/// The folder of repository `id` in a hub cache: `models--ORG--NAME`. Only for validated
/// ids, which hold exactly one '/' and no '--', so the mapping cannot collide.
fn repo_folder_name(id: &str) -> String {
    format!("models--{}", id.replace('/', "--"))
}

/// Where a repository stands in the model directory.
enum Local {
    /// Usable: the folder (a snapshot, or a file inside one).
    Found(PathBuf),
    /// Not usable as it is, and why (said to the user when nothing else helps).
    Missing(String),
}

/// Where models live when no directory is given (`--model-dir` and `MODEL_DIR` come first,
/// in the callers): the HuggingFace hub cache, found as huggingface_hub's `constants.py`
/// finds it (checked against huggingface_hub 2.4):
///
/// 1. `HF_HUB_CACHE`,
/// 2. else `HUGGINGFACE_HUB_CACHE` (the older name; ai-runner's image sets it to `/models`),
/// 3. else `HF_HOME/hub`,
/// 4. else `XDG_CACHE_HOME/huggingface/hub`,
/// 5. else `~/.cache/huggingface/hub`.
///
/// As in huggingface_hub, a leading `~` and `$VAR` / `${VAR}` in `HF_HUB_CACHE`,
/// `HUGGINGFACE_HUB_CACHE` and `HF_HOME` are expanded. Unlike it, a variable set to the
/// empty string counts as unset (Python would use the working directory).
pub fn default_model_dir() -> PathBuf {
    model_dir_from(&|name| std::env::var_os(name))
}

/// [`default_model_dir`] with the environment given as a lookup.
fn model_dir_from(env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let home = || {
        var("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let expand = |v: std::ffi::OsString| PathBuf::from(expand_path(&v.to_string_lossy(), env));
    if let Some(d) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return expand(d);
    }
    if let Some(d) = var("HF_HOME") {
        return expand(d).join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"));
    cache.join("huggingface").join("hub")
}

/// Python's `os.path.expandvars(os.path.expanduser(path))` for the forms configs use: a
/// leading `~` or `~/`, and `$NAME` / `${NAME}` (left as they are when `NAME` is unset).
fn expand_path(path: &str, env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> String {
    let path = match path.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match env("HOME") {
            Some(home) => format!("{}{rest}", home.to_string_lossy()),
            None => path.to_string(),
        },
        _ => path.to_string(),
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(path.len());
    let mut rest = path.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match env(name).filter(|_| !name.is_empty() && name.chars().all(is_name)) {
            Some(value) => out.push_str(&value.to_string_lossy()),
            None => out.push_str(&rest[at..at + 1 + len]),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// A model directory in the HuggingFace hub cache layout, and the policy for what is not
/// in it yet: download it from the hub (the default) or fail with an error that names the
/// id and the directory. Cheap to clone; holds no open files or connections.
#[derive(Clone)]
pub struct ModelStore {
    dir: PathBuf,
    downloads: bool,
    endpoint: String,
    token: Option<String>,
    hub_timeout: Duration,
    max_lora_bytes: u64,
}

/// A file of a repository: its name there and its size in bytes, where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    pub name: String,
    pub size: Option<u64>,
}

impl std::fmt::Debug for ModelStore {
    // Written out so that the access token never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("dir", &self.dir)
            .field("downloads", &self.downloads)
            .field("endpoint", &self.endpoint)
            .field("hub_timeout", &self.hub_timeout)
            .field("max_lora_bytes", &self.max_lora_bytes)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ModelStore {
    /// A store over `dir`. The environment gives the defaults the HuggingFace tools use:
    /// downloads unless `HF_HUB_OFFLINE` is true, from `HF_ENDPOINT` (else huggingface.co),
    /// authenticated with `HF_TOKEN` if set (private and gated repositories).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let env = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        Self {
            dir: dir.into(),
            downloads: !is_truthy(env("HF_HUB_OFFLINE").as_deref()),
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| download::DEFAULT_ENDPOINT.into()),
            token: env("HF_TOKEN"),
            hub_timeout: download::DEFAULT_HUB_TIMEOUT,
            max_lora_bytes: crate::lora::DEFAULT_MAX_LORA_MIB * MIB,
        }
    }

    /// Allows or forbids downloading what the directory lacks. Forbidden, nothing ever
    /// touches the network.
    pub fn with_downloads(mut self, allow: bool) -> Self {
        self.downloads = allow;
        self
    }

    /// The hub to download from (a mirror, or a local test server), e.g.
    /// `https://huggingface.co`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self
    }

    /// How long the hub may take to answer before a download is given up (10 s by
    /// default). It bounds the first exchange with the hub, which every download starts
    /// with; the transfers themselves are not limited, large weights take their time.
    pub fn with_hub_timeout(mut self, timeout: Duration) -> Self {
        self.hub_timeout = timeout;
        self
    }

    /// The largest LoRA weights file that is loaded (and so downloaded): 2048 MiB unless set.
    /// A larger one is refused before any byte of it is fetched.
    pub fn with_max_lora_mib(mut self, mib: u64) -> Self {
        self.max_lora_bytes = mib.saturating_mul(MIB);
        self
    }

    /// See [`ModelStore::with_max_lora_mib`], in bytes.
    pub fn max_lora_bytes(&self) -> u64 {
        self.max_lora_bytes
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot folder of diffusers repository `id` (holding `model_index.json` and the
    /// component folders, or for a repository that is not a pipeline, its files).
    ///
    /// A snapshot already in the directory is taken as it is, whatever `variant` asks; the
    /// weight loader picks the variant among the files there. A missing one is downloaded
    /// when allowed, limited to what a diffusers pipeline loads: `model_index.json` and, in
    /// the component folders it names, the JSON and text files (configs, tokenizers) and
    /// one set of weights per folder — safetensors, or the PyTorch `.bin` files only where a
    /// folder has no safetensors (never both); the `variant` (e.g. `fp16`) ones where a
    /// component has them and a variant is asked for, the plain ones otherwise. `.ckpt`
    /// single-file checkpoints, ONNX, OpenVINO and Flax files are never fetched.
    pub fn resolve(&self, id: &str, variant: Option<&str>) -> Result<PathBuf> {
        validate_model_id(id)?;
        let why = match self.local_snapshot(id)? {
            Local::Found(path) => return Ok(path),
            Local::Missing(why) => why,
        };
        if !self.downloads {
            return Err(self.not_found(id, &why, "downloads are disabled"));
        }
        self.hub(id, &why)?
            .download_repo(id, variant)
            .map_err(|failure| self.not_found(id, &why, &failure))
    }

    /// One file of repository `id` (e.g. ByteDance/SDXL-Lightning's
    /// `sdxl_lightning_4step_unet.safetensors`, or a LoRA's weights), downloading just that
    /// file when it is missing and downloads are allowed.
    pub fn resolve_file(&self, id: &str, file: &str) -> Result<PathBuf> {
        validate_model_id(id)?;
        validate_file_name(id, file)?;
        let why = match self.local_file(id, file)? {
            Local::Found(path) => return Ok(path),
            Local::Missing(why) => why,
        };
        if !self.downloads {
            return Err(self.not_found(id, &why, "downloads are disabled"));
        }
        self.hub(id, &why)?
            .download_file(id, file)
            .map_err(|failure| self.not_found(id, &why, &failure))
    }

    /// The top-level file of repository `id` that `choose` picks among the repository's
    /// top-level files (with their sizes): from the directory's snapshot when it has one,
    /// else from the hub's listing, downloading just the chosen file when downloads are
    /// allowed. An error from `choose` comes back as it is, before anything is downloaded:
    /// this is how a LoRA repository's weights are found, and an oversized file refused,
    /// without fetching the rest of the repository.
    pub fn resolve_chosen_file(
        &self,
        id: &str,
        choose: &dyn Fn(&[RepoFile]) -> Result<String>,
    ) -> Result<PathBuf> {
        validate_model_id(id)?;
        let why = match self.local_snapshot(id)? {
            Local::Found(snapshot) => {
                let name = choose(&top_level_files(&snapshot)?)?;
                validate_file_name(id, &name)?;
                return Ok(snapshot.join(name));
            }
            Local::Missing(why) => why,
        };
        if !self.downloads {
            return Err(self.not_found(id, &why, "downloads are disabled"));
        }
        let hub = self.hub(id, &why)?;
        let files = hub
            .top_level_files(id)
            .map_err(|failure| self.not_found(id, &why, &failure))?;
        let name = choose(&files)?;
        validate_file_name(id, &name)?;
        hub.fetch_listed(id, &name)
            .map_err(|failure| self.not_found(id, &why, &failure))
    }

    /// The CLI's `--model ID_OR_DIR`: an existing folder is used as it is (a model saved
    /// with `save_pretrained`, or a snapshot folder); anything else must be a model id.
    pub fn resolve_id_or_dir(&self, s: &str, variant: Option<&str>) -> Result<PathBuf> {
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(path.to_path_buf());
        }
        self.resolve(s, variant).map_err(|e| match e {
            Error::InvalidModelId { id, reason } => Error::InvalidModelId {
                id,
                reason: format!("there is no such folder, and {reason}"),
            },
            other => other,
        })
    }

    /// The snapshot of `id` the directory holds: the one `refs/main` names, else the only
    /// one there is. A ref naming a missing snapshot, or several snapshots and no ref to
    /// choose, is reported rather than guessed around.
    fn local_snapshot(&self, id: &str) -> Result<Local> {
        let folder = repo_folder_name(id);
        let repo = self.dir.join(&folder);
        if !repo.is_dir() {
            return Ok(Local::Missing(format!("there is no {folder} folder")));
        }
        let snapshots = repo.join("snapshots");
        let ref_path = repo.join("refs").join("main");
        match std::fs::read_to_string(&ref_path) {
            Ok(text) => {
                let rev = text.trim();
                if rev.is_empty() || rev.contains(['/', '\\']) || rev == "." || rev == ".." {
                    return Err(Error::Model(format!(
                        "{} holds '{}', which is not a revision",
                        ref_path.display(),
                        quoted(rev)
                    )));
                }
                let snapshot = snapshots.join(rev);
                Ok(if snapshot.is_dir() {
                    Local::Found(snapshot)
                } else {
                    Local::Missing(format!(
                        "{folder}/refs/main names snapshot {rev}, which is not in {folder}/snapshots"
                    ))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                only_snapshot(&snapshots, &folder)
            }
            Err(e) => Err(Error::io(ref_path, e)),
        }
    }

    /// `file` inside the local snapshot of `id`.
    fn local_file(&self, id: &str, file: &str) -> Result<Local> {
        let snapshot = match self.local_snapshot(id)? {
            Local::Found(snapshot) => snapshot,
            missing => return Ok(missing),
        };
        let path = snapshot.join(file);
        Ok(if path.is_file() {
            Local::Found(path)
        } else if path.symlink_metadata().is_ok() {
            Local::Missing(format!(
                "{} links to a blob that is missing",
                path.display()
            ))
        } else {
            Local::Missing(format!("{} has no {file}", snapshot.display()))
        })
    }

    /// A client for the configured hub, or the not-found error saying why there is none.
    fn hub(&self, id: &str, why: &str) -> Result<download::Hub> {
        download::Hub::new(
            &self.dir,
            &self.endpoint,
            self.token.clone(),
            self.hub_timeout,
        )
        .map_err(|failure| self.not_found(id, why, &failure))
    }

    /// The error for a model that is neither in the directory nor downloadable: what the
    /// directory lacks (`why`) and why the hub did not help (`after`).
    fn not_found(&self, id: &str, why: &str, after: &str) -> Error {
        Error::ModelNotFound {
            id: id.to_string(),
            dir: self.dir.clone(),
            hint: format!(": {why}; {after}"),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// The files directly inside `snapshot` (following the links into `blobs/`), sorted by name;
/// links to missing blobs are left out.
fn top_level_files(snapshot: &Path) -> Result<Vec<RepoFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(snapshot).map_err(|e| Error::io(snapshot, e))? {
        let entry = entry.map_err(|e| Error::io(snapshot, e))?;
        let (Ok(name), Ok(meta)) = (
            entry.file_name().into_string(),
            std::fs::metadata(entry.path()),
        ) else {
            continue;
        };
        if meta.is_file() {
            files.push(RepoFile {
                name,
                size: Some(meta.len()),
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Without `refs/main`, the single snapshot in `snapshots` (folder named `folder` in messages).
fn only_snapshot(snapshots: &Path, folder: &str) -> Result<Local> {
    let entries = match std::fs::read_dir(snapshots) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Local::Missing(format!("{folder} has no snapshots folder")))
        }
        Err(e) => return Err(Error::io(snapshots, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(snapshots, e))?;
        if entry.path().is_dir() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(match found.as_slice() {
        [only] => Local::Found(only.clone()),
        [] => Local::Missing(format!("{folder}/snapshots is empty")),
        several => Local::Missing(format!(
            "{folder} has {} snapshots and no refs/main to choose between them",
            several.len()
        )),
    })
}

/// The HuggingFace tools' reading of a boolean environment variable (`1`, `true`, `yes`,
/// `on`, any case).
fn is_truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Hub caches name snapshots by commit hash; a linked folder has no commit, so the null
/// hash stands in for one.
const LINKED_REVISION: &str = "0000000000000000000000000000000000000000";

/// Lays out `model_folder` (a plain diffusers folder) inside `cache_dir` as repository `id`
/// of a hub cache: `refs/main` naming a snapshot whose files are symlinks to the folder's
/// files (copies where symlinks are unavailable). Lets tests and tools resolve local
/// folders by id, e.g. the parity fixtures as `timbrooks/instruct-pix2pix`. Running it
/// again refreshes the links.
pub fn link_as_hub_cache(model_folder: &Path, cache_dir: &Path, id: &str) -> Result<()> {
    validate_model_id(id)?;
    let source = model_folder
        .canonicalize()
        .map_err(|e| Error::io(model_folder, e))?;
    let repo = cache_dir.join(repo_folder_name(id));
    let snapshot = repo.join("snapshots").join(LINKED_REVISION);
    link_tree(&source, &snapshot)?;
    let refs = repo.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| Error::io(&refs, e))?;
    let main = refs.join("main");
    std::fs::write(&main, LINKED_REVISION).map_err(|e| Error::io(&main, e))
}

/// Mirrors the files under `from` into `to` as links, creating folders as needed.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            link_file(&src, &dst)?;
        }
    }
    Ok(())
}

fn link_file(src: &Path, dst: &Path) -> Result<()> {
    if dst.symlink_metadata().is_ok() {
        std::fs::remove_file(dst).map_err(|e| Error::io(dst, e))?;
    }
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(src, dst);
    #[cfg(not(unix))]
    let linked = std::fs::copy(src, dst).map(|_| ());
    linked.map_err(|e| Error::io(dst, e))
}
