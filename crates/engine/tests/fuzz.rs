//! Fuzzing the engine's readers of outside files: uploaded images (every accepted format),
//! safetensors headers, PyTorch pickles (whole files, and the unpickler alone on programs
//! wrapped in a valid archive), scheduler configs, every config file of a model folder, and
//! model ids. Each input must end in a value or an error naming the problem, quickly and in
//! bounded memory, never a panic; see `tessera_testkit::fuzz` for the budget and the
//! regression corpus.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tessera_engine::hub::{validate_model_id, ModelStore};
use tessera_engine::noise::TorchCpuNoise;
use tessera_engine::schedulers::{self, SchedulerConfig};
use tessera_engine::{image_io, pipelines, weights};
use tessera_testkit::fixtures_dir;
use tessera_testkit::fuzz::{CountingAlloc, Fuzz};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The files directly in `dir` whose names pass `keep` and that are at most `max` bytes.
fn files_in(dir: &Path, max: u64, keep: impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| p.metadata().is_ok_and(|m| m.len() <= max))
        .filter(|p| keep(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn fuzz_image_decode() {
    let fixtures = fixtures_dir();
    let mut seeds = files_in(&fixtures.join("image_io/convert"), 8 << 10, |_| true);
    seeds.extend(files_in(&fixtures.join("jpeg/corpus"), 4 << 10, |_| true));
    let max_side = tessera_api::limits::Limits::default().max_image_side;
    // The largest image allowed, 4096 x 4096, held as 16-bit RGBA while it converts to
    // 8-bit RGB, takes ~250 MiB at once: the bound is twice that.
    Fuzz::new("image_decode", seeds)
        .max_memory(512 << 20)
        .dictionary(&[
            b"IHDR".as_slice(),
            b"IDAT",
            b"IEND",
            b"PLTE",
            b"tRNS",
            b"acTL",
            b"\xff\xd8",
            b"\xff\xc0",
            b"\xff\xc2",
            b"\xff\xda",
            b"\xff\xdd",
            b"\xff\xe1Exif\0\0",
            b"GIF89a",
            b"NETSCAPE2.0",
            b"\x21\xf9\x04",
            b"RIFF",
            b"WEBPVP8L",
            b"VP8X",
            b"ANIM",
            b"BM",
            b"II*\0",
            b"MM\0*",
        ])
        .run(|input| image_io::decode_within(input, max_side).is_ok());
}

/// Writes each input to the same file in a temp folder and hands the path over: the
/// weight readers read files (safetensors memory-maps them).
fn through_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

#[test]
fn fuzz_safetensors() {
    let seeds = files_in(&fixtures_dir().join("lora"), 32 << 10, |n| {
        n.ends_with(".safetensors")
    });
    let (_dir, path) = through_file("model.safetensors");
    Fuzz::new("safetensors", seeds)
        .dictionary(&[
            "{\"",
            "\":{\"dtype\":\"",
            "F16",
            "BF16",
            "F32",
            "I64",
            "F8_E4M3",
            "\"shape\":[",
            "\"data_offsets\":[",
            "],",
            "\"__metadata__\"",
            "}",
            "0",
            "4294967295",
        ])
        .run(|input| {
            std::fs::write(&path, input).unwrap();
            weights::load_files(std::slice::from_ref(&path), &Device::Cpu).is_ok()
        });
}

const PICKLE_TOKENS: &[&[u8]] = &[
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch\nFloatStorage\n",
    b"ctorch\nHalfStorage\n",
    b"ccollections\nOrderedDict\n",
    b"cposix\nsystem\n",
    b"cbuiltins\neval\n",
    b"\x8c\x05torch",
    b"\x93", // STACK_GLOBAL
    b"R",    // REDUCE
    b"b",    // BUILD
    b"(",    // MARK
    b"t",    // TUPLE
    b"}",    // EMPTY_DICT
    b"]",    // EMPTY_LIST
    b"u",    // SETITEMS
    b"e",    // APPENDS
    b"q\x00",
    b"h\x00",
    b"r\xff\xff\xff\xff",
    b"j\xff\xff\xff\xff",
    b"X\xff\xff\xff\x7f",
    b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff", // BINUNICODE8
    b"\x8a\x08",                             // LONG1
    b"Q",                                    // BINPERSID
    b"\x94",                                 // MEMOIZE
    b".",
];

#[test]
fn fuzz_pickle_file() {
    let dir = fixtures_dir().join("pickle");
    let mut seeds = files_in(&dir, 16 << 10, |n| {
        n.starts_with("basic") && n.ends_with(".bin")
    });
    seeds.extend(files_in(&dir.join("legacy-checker"), 64 << 10, |n| {
        n.ends_with(".bin")
    }));
    // The fixtures of refused files: a GLOBAL of os.system, storages too short, missing or
    // claiming 2^60 bytes, a cut-off archive.
    let bad = files_in(&dir, 16 << 10, |n| {
        !n.starts_with("basic") && n.ends_with(".bin")
    });
    let (_dir, path) = through_file("pytorch_model.bin");
    Fuzz::new("pickle_file", seeds)
        .bad_seeds(bad)
        .dictionary(PICKLE_TOKENS)
        .run(|input| {
            std::fs::write(&path, input).unwrap();
            weights::load_files(std::slice::from_ref(&path), &Device::Cpu).is_ok()
        });
}

/// The archive `basic.bin` with its `data.pkl` replaced by `program`: the zip layer stays
/// valid, so every mutation reaches the unpickler.
fn with_program(entries: &[(String, Vec<u8>)], program: &[u8]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        out.start_file(name.as_str(), stored).unwrap();
        let data = if name.ends_with("/data.pkl") {
            program
        } else {
            data
        };
        out.write_all(data).unwrap();
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn fuzz_pickle_program() {
    let archive = std::fs::read(fixtures_dir().join("pickle/basic.bin")).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        entries.push((f.name().unwrap().into_owned(), data));
    }
    let program = entries
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .map(|(_, d)| d.clone())
        .unwrap();
    let hostile = {
        // The program of hostile_system.bin: a GLOBAL of os.system.
        let archive = std::fs::read(fixtures_dir().join("pickle/hostile_system.bin")).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
        let name = zip
            .file_names()
            .map(|n| n.unwrap().into_owned())
            .find(|n| n.ends_with("/data.pkl"))
            .unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(&name).unwrap(), &mut data).unwrap();
        data
    };
    let (_dir, path) = through_file("pytorch_model.bin");
    Fuzz::new("pickle_program", vec![program])
        .bad_seeds(vec![hostile])
        .dictionary(PICKLE_TOKENS)
        .run(|input| {
            std::fs::write(&path, with_program(&entries, input)).unwrap();
            weights::load_files(std::slice::from_ref(&path), &Device::Cpu).is_ok()
        });
}

/// Every scheduler config of the scheduler fixtures, built for a few step counts and
/// stepped through on a tiny sample: a config must give a schedule or an error, and a
/// schedule must step without panicking.
#[test]
fn fuzz_scheduler_config() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("schedulers/cases.json")).unwrap(),
    )
    .unwrap();
    let mut seeds: Vec<Vec<u8>> = cases["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["config"].is_object())
        .map(|g| serde_json::to_vec(&g["config"]).unwrap())
        .collect();
    seeds.dedup();
    let sample = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let output = Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    Fuzz::new("scheduler_config", seeds)
        .dictionary(&[
            "\"_class_name\": \"",
            "Scheduler\"",
            "-Infinity",
            "NaN",
            "\"num_train_timesteps\": 0",
            "\"trailing\"",
            "\"karras\"",
            "\"use_karras_sigmas\": true",
            "\"beta_schedule\": \"squaredcos_cap_v2\"",
            "\"solver_order\": 9",
            "\"steps_offset\": ",
            "null",
        ])
        .inputs_scaled(0.5)
        .run(|input| {
            let Ok(value) = tessera_engine::error::parse_json(&String::from_utf8_lossy(input))
            else {
                return false;
            };
            let Ok(config) = SchedulerConfig::from_value(value) else {
                return false;
            };
            let mut built = false;
            for steps in [1, 3, 50] {
                let Ok(mut scheduler) = schedulers::build(&config, steps) else {
                    continue;
                };
                built = true;
                let mut noise = TorchCpuNoise::new(0);
                let mut x = sample.clone();
                for index in 0..scheduler.timesteps().len().min(8) {
                    let _ = scheduler.init_noise_sigma();
                    if let Ok(scaled) = scheduler.scale_model_input(&x, index) {
                        drop(scaled);
                    }
                    let _ = scheduler.add_noise(&sample, &output, index);
                    match scheduler.step(&output, index, &x, &mut noise) {
                        Ok(next) => x = next,
                        Err(_) => break,
                    }
                }
            }
            built
        });
}

/// A copy of the tiny instruct-pix2pix folder whose config files can be swapped one at a
/// time; the weights are linked, not copied.
struct ModelFolder {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// (path relative to the root, original bytes) of each config file.
    configs: Vec<(PathBuf, Vec<u8>)>,
}

impl ModelFolder {
    fn new() -> Self {
        let source = fixtures_dir().join("diffusers-parity/models/tiny-instruct-pix2pix");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("model");
        let mut configs = Vec::new();
        for entry in walk(&source) {
            let rel = entry.strip_prefix(&source).unwrap().to_path_buf();
            let to = root.join(&rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            let name = rel.to_string_lossy();
            if name.ends_with(".safetensors") {
                std::os::unix::fs::symlink(&entry, &to).unwrap();
            } else {
                let bytes = std::fs::read(&entry).unwrap();
                std::fs::write(&to, &bytes).unwrap();
                configs.push((rel, bytes));
            }
        }
        configs.sort();
        Self {
            _dir: dir,
            root,
            configs,
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The input's first byte picks which config file of the model folder the rest replaces
/// (model_index.json, the UNet's, the VAE's, the text encoder's, the scheduler's, the
/// tokenizer's files); then the pipeline is loaded from the folder.
#[test]
fn fuzz_model_folder_configs() {
    let folder = ModelFolder::new();
    let seeds = folder
        .configs
        .iter()
        .enumerate()
        .map(|(i, (_, bytes))| {
            let mut seed = vec![i as u8];
            seed.extend_from_slice(bytes);
            seed
        })
        .collect();
    Fuzz::new("model_folder_configs", seeds)
        .dictionary(&[
            "-Infinity",
            "NaN",
            "null",
            "[]",
            "{}",
            "0",
            "-1",
            "4294967296",
            "\"_class_name\"",
            "\"block_out_channels\": [",
            "\"attention_head_dim\": ",
            "\"cross_attention_dim\": ",
            "\"layers_per_block\": ",
            "\"norm_num_groups\": ",
            "\"in_channels\": ",
            "\"hidden_size\": ",
            "\"num_attention_heads\": ",
            "\"max_position_embeddings\": ",
            "\"vocab_size\": ",
            "\"model_max_length\": ",
            "../",
        ])
        .inputs_scaled(0.1)
        .max_time(std::time::Duration::from_secs(2))
        .max_memory(512 << 20)
        .run(|input| {
            let Some((&which, content)) = input.split_first() else {
                return false;
            };
            let (rel, original) = &folder.configs[which as usize % folder.configs.len()];
            let path = folder.root.join(rel);
            std::fs::write(&path, content).unwrap();
            let loaded = pipelines::load(&folder.root, &Device::Cpu, DType::F32).is_ok();
            std::fs::write(&path, original).unwrap();
            loaded
        });
}

/// Model and LoRA ids as requests name them: valid, or refused, and never a path outside
/// the model folder; an empty offline store resolves nothing.
#[test]
fn fuzz_model_id() {
    let seeds = [
        "timbrooks/instruct-pix2pix",
        "ByteDance/SDXL-Lightning",
        "SG161222/RealVisXL_V4.0_Lightning",
        "nerijs/pixel-art-xl",
        "stabilityai/sdxl-turbo",
    ];
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path()).with_downloads(false);
    Fuzz::new(
        "model_id",
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
    )
    .dictionary(&[
        "/", "..", "../", "./", "\\", "~", "%2e%2e", "\0", ":", "C:\\", "//", "@", "?", "#",
        "models--", "--", ".git",
    ])
    .run(|input| {
        let id = String::from_utf8_lossy(input);
        if validate_model_id(&id).is_ok() {
            assert!(
                !id.contains("..") && !id.starts_with('/') && !id.contains('\\'),
                "accepted a path-like id {id:?}"
            );
        }
        assert!(
            store.resolve(&id, None).is_err(),
            "an empty offline store resolved {id:?}"
        );
        validate_model_id(&id).is_ok()
    });
}
