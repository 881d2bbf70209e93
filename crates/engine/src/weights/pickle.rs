//! PyTorch checkpoints (`torch.save`: `pytorch_model.bin`, `diffusion_pytorch_model.bin`),
//! read as data and never run.
//!
//! A `torch.save` file is a Python pickle: a small program for a stack machine that may
//! import any Python global and call it (`os.system` as easily as a tensor constructor).
//! This reader is an unpickler of the subset `torch.save` writes for a state dict, and of
//! nothing else:
//!
//! - only the opcodes `torch.save` emits (protocols 2 to 5); any other opcode is refused;
//! - only the globals that rebuild tensors: `torch._utils._rebuild_tensor_v2`,
//!   `torch._utils._rebuild_parameter[_with_state]`, the `torch.*Storage` dtype markers and
//!   `collections.OrderedDict`. Any other global (`os.system`, `posix.system`,
//!   `builtins.eval`, a model class...) is refused when the pickle names it, before anything
//!   else is read, and nothing is ever called: "calling" an allowed global builds a plain
//!   value here (an empty dict, a tensor description);
//! - the result must be a dict of names to tensors.
//!
//! Why not `candle_core::pickle`: it does not execute code either, but it is a lenient
//! parser rather than a guard. It accepts every global and every call (keeping them as
//! opaque objects, and skipping tensors it cannot rebuild with a message on stderr), so a
//! hostile or foreign file is not refused but partly loaded; it allocates whatever a length
//! field declares (a 4 GiB string from a 9-byte file); it deep-copies memoised objects, so a
//! small pickle can expand exponentially; it refuses non-contiguous views other than
//! transposes; it checks no storage against its declared size; and it reopens the archive
//! for every tensor. Here every length is checked against the bytes actually present
//! before anything is allocated, objects live in one flat arena (references are indices,
//! so memo lookups are free, nesting cannot overflow the stack on drop, and memory is
//! linear in the pickle's size), strided views are gathered, and each storage is read
//! once for all the tensors that share it.
//!
//! Both of `torch.save`'s formats are read: the zip archive (torch >= 1.6:
//! `ARCHIVE/data.pkl` plus one stored entry `ARCHIVE/data/KEY` per storage) and the legacy
//! stream (a magic number, a protocol version, system info, the pickle, the storage keys,
//! then each storage's element count and bytes). Errors name the file and what was wrong.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::TensorMap;
use crate::error::{Error, Result};

/// The largest `data.pkl` accepted. A state dict's pickle takes ~100 bytes per tensor
/// (an SDXL UNet's is ~200 KB); the cap bounds the parser's memory on hostile input.
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// The most objects one pickle may build (~15 per tensor in a state dict).
const MAX_OBJECTS: usize = 8 << 20;
/// The most dimensions a tensor may have (torch allows 64 too).
const MAX_RANK: usize = 64;
/// The longest module or attribute name of a `GLOBAL`.
const MAX_GLOBAL_NAME: usize = 256;
/// The legacy format's magic number and protocol version.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i128 = 1001;

/// Loads every tensor of the `torch.save` file `path` onto `device` in its stored dtype.
pub fn load(path: &Path, device: &Device) -> Result<TensorMap> {
    let fail = |msg: String| Error::Model(format!("{}: {msg}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 4];
    let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    drop(file);
    match &head[..got] {
        [b'P', b'K', 3, 4] => load_zip(path, device).map_err(fail),
        [0x80, 2, 0x8a, 10] => load_legacy(path, device).map_err(fail),
        _ => Err(fail(
            "not a PyTorch checkpoint: neither torch.save's zip archive nor its legacy format"
                .into(),
        )),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

type Msg<T> = std::result::Result<T, String>;

// ---------------------------------------------------------------------------------------
// The zip format.

fn load_zip(path: &Path, device: &Device) -> Msg<TensorMap> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("unreadable zip archive (truncated or damaged?): {e}"))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("unreadable zip entry name: {e}"))?;
    let pickles: Vec<&String> = names
        .iter()
        .filter(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|p| !p.is_empty() && !p.contains('/'))
        })
        .collect();
    let prefix = match pickles.as_slice() {
        [one] => one
            .strip_suffix("/data.pkl")
            .unwrap_or_default()
            .to_string(),
        [] => return Err("the archive has no ARCHIVE/data.pkl: not a torch.save file".into()),
        _ => return Err("the archive holds several data.pkl entries".into()),
    };
    let byteorder = format!("{prefix}/byteorder");
    if names.contains(&byteorder) {
        let order = read_entry(&mut zip, &byteorder, 16, file_len)?;
        if order != b"little" {
            return Err(format!(
                "{byteorder} says {:?}; only little-endian checkpoints are read",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let pkl_name = format!("{prefix}/data.pkl");
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES, file_len)?;
    let (pickle, _) = Unpickler::run(&pkl, 0, PidForm::Zip)?;
    let entries = pickle.state_dict()?;
    build_tensors(&pickle, entries, device, |key, _kind| {
        read_entry(
            &mut zip,
            &format!("{prefix}/data/{key}"),
            u64::MAX,
            file_len,
        )
    })
}

/// The bytes of zip entry `name`, refusing entries over `limit` bytes. The buffer grows with
/// the bytes actually read, never beyond the file's size, whatever the entry declares.
fn read_entry<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
    file_len: u64,
) -> Msg<Vec<u8>> {
    let mut entry = match zip.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(format!("the archive has no entry {name}"))
        }
        Err(e) => return Err(format!("entry {name}: {e}")),
    };
    let declared = entry.size();
    if declared > limit {
        return Err(format!(
            "entry {name} declares {declared} bytes; at most {limit} are accepted"
        ));
    }
    if declared > file_len {
        return Err(format!(
            "entry {name} declares {declared} bytes, more than the whole file ({file_len})"
        ));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    entry
        .by_ref()
        .take(declared.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("entry {name} is unreadable (truncated or damaged?): {e}"))?;
    if bytes.len() as u64 != declared {
        return Err(format!(
            "entry {name} holds {} bytes but declares {declared}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// The legacy format.

fn load_legacy(path: &Path, device: &Device) -> Msg<TensorMap> {
    // The pickles come first and have no length prefix, so the file is read whole; legacy
    // checkpoints predate torch 1.6 and are small in diffusers repos.
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let (magic, at) = Unpickler::run(&data, 0, PidForm::None)?;
    if magic.int(magic.root) != Some(LEGACY_MAGIC) {
        return Err("bad magic number for torch's legacy format".into());
    }
    let (version, at) = Unpickler::run(&data, at, PidForm::None)?;
    if version.int(version.root) != Some(LEGACY_PROTOCOL) {
        return Err("unsupported legacy protocol version (only 1001 is read)".into());
    }
    let (sys_info, at) = Unpickler::run(&data, at, PidForm::None)?;
    if let Node::Dict(items) = &sys_info.nodes[sys_info.root] {
        for &(k, v) in items {
            if sys_info.str(k) == Some("little_endian")
                && matches!(sys_info.nodes[v], Node::Bool(false))
            {
                return Err("a big-endian legacy checkpoint; only little-endian is read".into());
            }
        }
    }
    let (pickle, at) = Unpickler::run(&data, at, PidForm::Legacy)?;
    let entries = pickle.state_dict()?;
    let (keys, mut at) = Unpickler::run(&data, at, PidForm::None)?;
    let Node::List(key_ids) = &keys.nodes[keys.root] else {
        return Err("the legacy storage key list is not a list".into());
    };
    // Where each storage's bytes are: in the order of the key list, each an 8-byte element
    // count followed by the elements.
    let kinds = pickle.storage_kinds()?;
    let mut spans: HashMap<String, (usize, usize)> = HashMap::new();
    for &k in key_ids {
        let key = keys.str(k).ok_or("a legacy storage key is not a string")?;
        let kind = *kinds
            .get(key)
            .ok_or_else(|| format!("the storage list names {key}, which no tensor uses"))?;
        let count = data
            .get(at..at + 8)
            .ok_or_else(|| format!("the file ends before storage {key}"))?;
        let count = u64::from_le_bytes(count.try_into().unwrap_or_default());
        let len = count
            .checked_mul(kind.size() as u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| format!("storage {key} declares an impossible size"))?;
        let start = at + 8;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                format!(
                    "the file ends inside storage {key} (truncated?): {count} elements declared"
                )
            })?;
        spans.insert(key.to_string(), (start, end));
        at = end;
    }
    build_tensors(&pickle, entries, device, |key, _kind| {
        let &(start, end) = spans
            .get(key)
            .ok_or_else(|| format!("storage {key} is missing from the file"))?;
        Ok(data[start..end].to_vec())
    })
}

// ---------------------------------------------------------------------------------------
// From the pickle's tensor descriptions to tensors.

/// The element types of the `torch.*Storage` classes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    U8,
    Bool,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::F64 => DType::F64,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 => DType::I16,
            Self::U8 | Self::Bool => DType::U8,
        }
    }

    fn size(self) -> usize {
        self.dtype().size_in_bytes()
    }
}

/// Reads every storage the entries use once (`read(key, kind)`) and cuts their tensors out.
fn build_tensors(
    pickle: &Pickle,
    entries: Vec<(String, TensorRef)>,
    device: &Device,
    mut read: impl FnMut(&str, StorageKind) -> Msg<Vec<u8>>,
) -> Msg<TensorMap> {
    let mut by_storage: BTreeMap<&str, Vec<(String, &TensorRef)>> = BTreeMap::new();
    let refs: Vec<(String, TensorRef)> = entries;
    for (name, t) in &refs {
        let storage = pickle.storage(t.storage)?;
        by_storage
            .entry(storage.key.as_str())
            .or_default()
            .push((name.clone(), t));
    }
    let mut map = TensorMap::with_capacity(refs.len());
    for (key, tensors) in by_storage {
        let first = pickle.storage(tensors[0].1.storage)?;
        let kind = first.kind;
        let numel = first.numel;
        for (name, t) in &tensors {
            let s = pickle.storage(t.storage)?;
            if s.kind != kind || s.numel != numel {
                return Err(format!(
                    "tensor {name}: storage {key} is described two different ways"
                ));
            }
        }
        let bytes = read(key, kind)?;
        let want = numel.checked_mul(kind.size() as u64);
        if want != Some(bytes.len() as u64) {
            return Err(format!(
                "storage {key} declares {numel} {:?} elements but holds {} bytes",
                kind.dtype(),
                bytes.len()
            ));
        }
        for (name, t) in tensors {
            let data = cut(&bytes, numel, kind.size(), t)
                .map_err(|e| format!("tensor {name} (storage {key}): {e}"))?;
            let tensor = Tensor::from_raw_buffer(&data, kind.dtype(), &t.size, device)
                .map_err(|e| format!("tensor {name}: {e}"))?;
            map.insert(name, tensor);
        }
    }
    Ok(map)
}

/// The bytes of view `t` of a storage of `numel` elements of `elem` bytes, in row-major
/// order. Every index is checked before it is used.
fn cut(bytes: &[u8], numel: u64, elem: usize, t: &TensorRef) -> Msg<Vec<u8>> {
    let count = t
        .size
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or("its shape overflows")?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // The last element the view touches; all strides are non-negative in torch.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d as u64 - 1)
                .checked_mul(s as u64)
                .and_then(|x| acc.checked_add(x))
        })
        .ok_or("its offset and strides overflow")?;
    if last >= numel {
        return Err(format!(
            "it reaches element {last} of a storage of {numel} elements (truncated or inconsistent file)"
        ));
    }
    if count > numel {
        return Err(format!(
            "it has {count} elements but its storage only {numel} (a broadcast view); refused"
        ));
    }
    let elem64 = elem as u64;
    let start = (t.offset * elem64) as usize;
    let len = (count * elem64) as usize;
    if is_row_major(&t.size, &t.stride) {
        return Ok(bytes[start..start + len].to_vec());
    }
    // A strided view (a transpose, a slice): gather element by element, the innermost
    // dimension in a tight loop.
    let mut out = Vec::with_capacity(len);
    let rank = t.size.len();
    let (inner, inner_stride) = (t.size[rank - 1], t.stride[rank - 1]);
    let mut index = vec![0usize; rank.saturating_sub(1)];
    loop {
        let base = index
            .iter()
            .zip(&t.stride)
            .fold(t.offset as usize, |acc, (&i, &s)| acc + i * s);
        for j in 0..inner {
            let at = (base + j * inner_stride) * elem;
            out.extend_from_slice(&bytes[at..at + elem]);
        }
        // Odometer over the outer dimensions.
        let mut d = index.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// Whether a view with these sizes and strides is laid out contiguously in row-major order
/// (dimensions of size 1 may have any stride).
fn is_row_major(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

// ---------------------------------------------------------------------------------------
// The unpickler.

type Id = usize;

/// The globals a tensor checkpoint may name. Anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageKind),
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Self::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Self::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Self::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Self::RebuildParameterWithState,
            ("torch", storage) => Self::Storage(StorageKind::from_class(storage)?),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct StorageRef {
    kind: StorageKind,
    key: String,
    numel: u64,
}

#[derive(Debug, Clone)]
struct TensorRef {
    /// The `Node::Storage` it views.
    storage: Id,
    offset: u64,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A value the pickle built. Containers refer to other values by index in the arena, as
/// Python refers to objects, so shared and mutated objects behave as in Python.
#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i128),
    Float,
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "a bool",
            Node::Int(_) => "an int",
            Node::Float => "a float",
            Node::Str(_) => "a string",
            Node::Tuple(_) => "a tuple",
            Node::List(_) => "a list",
            Node::Dict(_) => "a dict",
            Node::Global(_) => "a class or function",
            Node::Storage(_) => "a storage",
            Node::Tensor(_) => "a tensor",
        }
    }
}

/// What the persistent ids (`BINPERSID`) of a pickle look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidForm {
    /// None allowed (the legacy format's header pickles).
    None,
    /// `("storage", torch.XStorage, key, location, numel)`.
    Zip,
    /// The same plus a view description, which must be `None`.
    Legacy,
}

/// A finished pickle: its objects and the one it returned.
struct Pickle {
    nodes: Vec<Node>,
    root: Id,
}

impl Pickle {
    fn int(&self, id: Id) -> Option<i128> {
        match self.nodes[id] {
            Node::Int(i) => Some(i),
            _ => None,
        }
    }

    fn str(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn storage(&self, id: Id) -> Msg<&StorageRef> {
        match &self.nodes[id] {
            Node::Storage(s) => Ok(s),
            other => Err(format!("a tensor's storage is {}", other.kind())),
        }
    }

    /// The (name, tensor) entries of the state dict the pickle returned.
    fn state_dict(&self) -> Msg<Vec<(String, TensorRef)>> {
        let Node::Dict(items) = &self.nodes[self.root] else {
            return Err(format!(
                "the checkpoint holds {}, not a state dict of tensors",
                self.nodes[self.root].kind()
            ));
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(items.len());
        for &(k, v) in items {
            let name = self
                .str(k)
                .ok_or_else(|| format!("a state dict key is {}", self.nodes[k].kind()))?;
            let Node::Tensor(t) = &self.nodes[v] else {
                return Err(format!(
                    "entry {name} is {}, not a tensor",
                    self.nodes[v].kind()
                ));
            };
            if !seen.insert(name) {
                return Err(format!("tensor {name} appears twice"));
            }
            out.push((name.to_string(), t.clone()));
        }
        Ok(out)
    }

    /// The kind of every storage the pickle describes, by key.
    fn storage_kinds(&self) -> Msg<HashMap<&str, StorageKind>> {
        let mut kinds = HashMap::new();
        for node in &self.nodes {
            if let Node::Storage(s) = node {
                if *kinds.entry(s.key.as_str()).or_insert(s.kind) != s.kind {
                    return Err(format!("storage {} has two dtypes", s.key));
                }
            }
        }
        Ok(kinds)
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    pids: PidForm,
}

/// Names of the opcodes torch.save never writes, for the refusal message.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST (instantiate a class)",
        b'o' => "OBJ (instantiate a class)",
        0x81 => "NEWOBJ (instantiate a class)",
        0x92 => "NEWOBJ_EX (instantiate a class)",
        0x82..=0x84 => "EXT (import from the extension registry)",
        b'P' => "PERSID",
        b'S' | b'T' | b'U' => "STRING",
        b'B' | b'C' | 0x8e => "BYTES",
        b'I' | b'L' | b'F' => "a text-form number (protocol 0)",
        _ => "unknown",
    }
}

impl<'a> Unpickler<'a> {
    /// Runs the pickle starting at `start` of `data`; returns it and where it ended.
    fn run(data: &'a [u8], start: usize, pids: PidForm) -> Msg<(Pickle, usize)> {
        let mut u = Unpickler {
            data,
            pos: start,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            pids,
        };
        let root = u
            .execute()
            .map_err(|e| format!("pickle (byte {}): {e}", u.pos))?;
        Ok((
            Pickle {
                nodes: u.nodes,
                root,
            },
            u.pos,
        ))
    }

    fn bytes(&mut self, n: usize) -> Msg<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("the pickle ends early (needs {n} more bytes; truncated?)"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Msg<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Msg<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn len_u32(&mut self) -> Msg<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn line(&mut self) -> Msg<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(MAX_GLOBAL_NAME + 1)
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL name is unterminated or too long")?;
        let line = std::str::from_utf8(&rest[..n]).map_err(|_| "a GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(line)
    }

    fn new_node(&mut self, node: Node) -> Msg<Id> {
        if self.nodes.len() >= MAX_OBJECTS {
            return Err(format!("more than {MAX_OBJECTS} objects: not a state dict"));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn push(&mut self, node: Node) -> Msg<()> {
        let id = self.new_node(node)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Msg<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&self) -> Msg<Id> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "empty stack".into())
    }

    fn pop_mark(&mut self) -> Msg<Vec<Id>> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    fn string(&mut self, n: usize) -> Msg<()> {
        let s = std::str::from_utf8(self.bytes(n)?).map_err(|_| "a string is not UTF-8")?;
        self.push(Node::Str(s.to_string()))
    }

    fn global(&mut self, module: &str, name: &str) -> Msg<()> {
        match Global::lookup(module, name) {
            Some(g) => self.push(Node::Global(g)),
            None => Err(format!(
                "refused: the pickle asks for the Python global `{}.{}`; a weights file may only \
                 name torch's tensor-rebuilding functions and storage types and \
                 collections.OrderedDict (nothing in it was run)",
                module.escape_debug(),
                name.escape_debug()
            )),
        }
    }

    fn execute(&mut self) -> Msg<Id> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(format!("pickle protocol {proto} (torch.save writes 2)"));
                    }
                }
                0x95 => {
                    self.bytes(8)?; // FRAME: a length hint.
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(root);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Node::Int(v as i128))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i128))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Node::Int(v as i128))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 16 {
                        return Err(format!("a {n}-byte integer"));
                    }
                    let b = self.bytes(n)?;
                    let mut v: i128 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Node::Int(v))?
                }
                b'G' => {
                    self.bytes(8)?; // A float: no tensor field takes one.
                    self.push(Node::Float)?
                }
                b'X' => {
                    let n = self.len_u32()?;
                    self.string(n)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.string(n)?
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.array()?);
                    let n = usize::try_from(n).map_err(|_| "a string longer than memory")?;
                    self.string(n)?
                }
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items))?
                }
                b']' => self.push(Node::List(Vec::new()))?,
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_get(i)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(module), Node::Str(name)) =
                        (&self.nodes[module], &self.nodes[name])
                    else {
                        return Err("STACK_GLOBAL of something other than two strings".into());
                    };
                    let (module, name) = (module.clone(), name.clone());
                    self.global(&module, &name)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(Node::Storage(storage))?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let id = self.reduce(callable, args)?;
                    self.stack.push(id);
                }
                b'b' => {
                    let _state = self.pop()?;
                    let target = self.top()?;
                    // `_metadata` (module versions) set on a state dict's OrderedDict.
                    if !matches!(self.nodes[target], Node::Dict(_)) {
                        return Err(format!(
                            "BUILD on {}: only a state dict's attributes may be set",
                            self.nodes[target].kind()
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "refused: opcode 0x{other:02x} ({}), which torch.save never writes",
                        opcode_name(other)
                    ))
                }
            }
        }
    }

    fn memo_put(&mut self, i: u32) -> Msg<()> {
        let top = self.top()?;
        self.memo.insert(i, top);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> Msg<()> {
        let id = *self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo entry {i} was never stored"))?;
        if self.stack.len() >= MAX_OBJECTS {
            return Err(format!("more than {MAX_OBJECTS} stack entries"));
        }
        self.stack.push(id);
        Ok(())
    }

    fn append(&mut self, items: Vec<Id>) -> Msg<()> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => Err(format!("APPEND to {}", other.kind())),
        }
    }

    fn set_items(&mut self, items: Vec<Id>) -> Msg<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::Dict(dict) => {
                dict.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            other => Err(format!("SETITEM on {}", other.kind())),
        }
    }

    fn tuple(&self, id: Id, what: &str) -> Msg<&Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(items) => Ok(items),
            other => Err(format!("{what} is {}, not a tuple", other.kind())),
        }
    }

    fn uint(&self, id: Id, what: &str) -> Msg<u64> {
        match self.nodes[id] {
            Node::Int(i) => u64::try_from(i).map_err(|_| format!("{what} is {i}")),
            ref other => Err(format!("{what} is {}, not an int", other.kind())),
        }
    }

    fn usizes(&self, id: Id, what: &str) -> Msg<Vec<usize>> {
        let items = self.tuple(id, what)?;
        if items.len() > MAX_RANK {
            return Err(format!("{what} has {} dimensions", items.len()));
        }
        items
            .iter()
            .map(|&i| {
                let v = self.uint(i, what)?;
                usize::try_from(v).map_err(|_| format!("{what} holds {v}"))
            })
            .collect()
    }

    fn empty_dict(&self, id: Id, what: &str) -> Msg<()> {
        match &self.nodes[id] {
            Node::Dict(items) if items.is_empty() => Ok(()),
            Node::None => Ok(()),
            Node::Dict(_) => Err(format!("{what} is not empty; refused")),
            other => Err(format!("{what} is {}, not a dict", other.kind())),
        }
    }

    /// `("storage", torch.XStorage, key, location, numel[, view])` -> a storage reference.
    fn persistent_load(&self, pid: Id) -> Msg<StorageRef> {
        let items = self.tuple(pid, "a persistent id")?;
        let want = match self.pids {
            PidForm::None => return Err("a persistent id outside the main pickle".into()),
            PidForm::Zip => 5,
            PidForm::Legacy => 6,
        };
        if items.len() != want || !matches!(&self.nodes[items[0]], Node::Str(s) if s == "storage") {
            return Err("a persistent id that is not a tensor storage".into());
        }
        let Node::Global(Global::Storage(kind)) = self.nodes[items[1]] else {
            return Err(format!(
                "a storage whose type is {}",
                self.nodes[items[1]].kind()
            ));
        };
        let Node::Str(key) = &self.nodes[items[2]] else {
            return Err("a storage key that is not a string".into());
        };
        if key.is_empty()
            || key.len() > 64
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("storage key {:?} is not a plain name", key));
        }
        let numel = self.uint(items[4], "a storage's size")?;
        if numel.checked_mul(kind.size() as u64).is_none() {
            return Err(format!("storage {key} declares {numel} elements"));
        }
        if want == 6 && !matches!(self.nodes[items[5]], Node::None) {
            return Err(format!(
                "storage {key} is a view of another storage (legacy format); not supported"
            ));
        }
        Ok(StorageRef {
            kind,
            key: key.clone(),
            numel,
        })
    }

    /// A call of an allowed global: builds the value the call would, never runs anything.
    fn reduce(&mut self, callable: Id, args: Id) -> Msg<Id> {
        let Node::Global(global) = self.nodes[callable] else {
            return Err(format!("REDUCE of {}", self.nodes[callable].kind()));
        };
        let args = self.tuple(args, "the arguments of a call")?.clone();
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err("OrderedDict(...) with arguments".into());
                }
                self.new_node(Node::Dict(Vec::new()))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks
                //  [, metadata]): metadata only appears for conjugate/negative views.
                if !(6..=7).contains(&args.len()) {
                    return Err(format!("_rebuild_tensor_v2 with {} arguments", args.len()));
                }
                if !matches!(self.nodes[args[0]], Node::Storage(_)) {
                    return Err(format!(
                        "_rebuild_tensor_v2 of {}",
                        self.nodes[args[0]].kind()
                    ));
                }
                let offset = self.uint(args[1], "a tensor's storage offset")?;
                let size = self.usizes(args[2], "a tensor's size")?;
                let stride = self.usizes(args[3], "a tensor's stride")?;
                if size.len() != stride.len() {
                    return Err("a tensor whose size and stride differ in rank".into());
                }
                self.empty_dict(args[5], "a tensor's backward hooks")?;
                if let Some(&meta) = args.get(6) {
                    self.empty_dict(meta, "a tensor's metadata (conjugate or negative bit)")?;
                }
                self.new_node(Node::Tensor(TensorRef {
                    storage: args[0],
                    offset,
                    size,
                    stride,
                }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                // (data, requires_grad, backward_hooks[, state]): the data is the tensor.
                let n = if global == Global::RebuildParameter {
                    3
                } else {
                    4
                };
                if args.len() != n || !matches!(self.nodes[args[0]], Node::Tensor(_)) {
                    return Err("a Parameter that is not a rebuilt tensor".into());
                }
                self.empty_dict(args[2], "a parameter's backward hooks")?;
                Ok(args[0])
            }
            Global::Storage(_) => Err("a storage type called as a function".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Msg<Pickle> {
        Unpickler::run(bytes, 0, PidForm::Zip).map(|(p, _)| p)
    }

    #[test]
    fn refuses_foreign_globals_before_running_anything() {
        // cos\nsystem\n(S'echo'\ntR.
        let e = run(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echo\x85R.")
            .err()
            .unwrap();
        assert!(e.contains("`os.system`"), "{e}");
        let e = run(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.")
            .err()
            .unwrap();
        assert!(e.contains("`builtins.eval`"), "{e}");
    }

    #[test]
    fn refuses_unknown_opcodes_and_truncation() {
        let e = run(b"\x80\x02(i__main__\nX\n.").err().unwrap();
        assert!(e.contains("INST"), "{e}");
        let e = run(b"\x80\x02X\xff\xff\xff\xff").err().unwrap();
        assert!(e.contains("ends early"), "{e}");
        let e = run(b"\x80\x02}").err().unwrap();
        assert!(e.contains("ends early"), "{e}");
    }

    #[test]
    fn deep_nesting_and_memo_fanout_stay_linear() {
        // 200k nested 1-tuples: no recursion anywhere, so no stack overflow.
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 200_000));
        p.push(b'.');
        let pickle = run(&p).unwrap();
        assert_eq!(pickle.nodes.len(), 200_001);
        // A list that holds itself many times over.
        let mut p = b"\x80\x02]q\x00(".to_vec();
        for _ in 0..1000 {
            p.extend(b"h\x00");
        }
        p.extend(b"e.");
        assert!(run(&p).is_ok());
    }

    #[test]
    fn views_are_cut_with_bounds_checks() {
        let bytes: Vec<u8> = (0..24u8).collect();
        let t = |offset, size: &[usize], stride: &[usize]| TensorRef {
            storage: 0,
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        };
        // A 2x3 transposed view of 3x2 u8 elements.
        let got = cut(&bytes, 6, 1, &t(0, &[2, 3], &[1, 2])).unwrap();
        assert_eq!(got, vec![0, 2, 4, 1, 3, 5]);
        // Offset + contiguous.
        assert_eq!(
            cut(&bytes, 6, 1, &t(2, &[2, 2], &[2, 1])).unwrap(),
            vec![2, 3, 4, 5]
        );
        // One past the end.
        let e = cut(&bytes, 6, 1, &t(3, &[2, 2], &[2, 1])).unwrap_err();
        assert!(e.contains("reaches element 6"), "{e}");
        // A broadcast view larger than its storage.
        let e = cut(&bytes, 6, 1, &t(0, &[1000, 1000], &[0, 0])).unwrap_err();
        assert!(e.contains("broadcast"), "{e}");
        // Overflowing strides.
        let e = cut(&bytes, 6, 1, &t(0, &[3, 3], &[usize::MAX, 1])).unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        // Empty tensors need no storage.
        assert!(cut(&bytes, 0, 1, &t(100, &[0, 5], &[5, 1]))
            .unwrap()
            .is_empty());
    }
}
