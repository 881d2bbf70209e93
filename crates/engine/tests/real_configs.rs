//! The real repositories' own config files (tests/fixtures/real-configs, see SOURCES.md there)
//! through tessera's whole loader: model id -> ModelSpec -> hub cache -> model_index.json ->
//! every component from its config.json, with shape-only weights (`weights::shape_only`: the
//! safetensors files are headers over a hole, so a real-size SDXL costs no memory).
//!
//! For each repo it checks what diffusers does with the same files (generate.py there,
//! diffusers on torch's meta device): the pipeline class, the scheduler class and its
//! timesteps, and that every tensor of every component is taken by tessera in the shape
//! diffusers gives it, and nothing else. Weights are laid out as the Hub's files name them and,
//! again, as transformers 5 names CLIP's tensors.

#[path = "support/clip_vocab.rs"]
mod clip_vocab;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;
use tessera_engine::hub::{link_as_hub_cache, ModelStore};
use tessera_engine::models::{ModelSpec, LIGHTNING_REPO};
use tessera_engine::safety::SafetyChecker;
use tessera_engine::schedulers;
use tessera_engine::weights::shape_only::{self, Built};

type Shapes = BTreeMap<String, Vec<usize>>;

#[derive(Deserialize)]
struct Expected {
    versions: BTreeMap<String, String>,
    repos: BTreeMap<String, Repo>,
    lightning: BTreeMap<String, Lightning>,
    architectures: HashMap<String, Shapes>,
}

#[derive(Deserialize)]
struct Repo {
    folder: String,
    pipeline: String,
    components: BTreeMap<String, Component>,
    schedule: Schedule,
}

#[derive(Deserialize)]
struct Component {
    architecture: String,
    hub_architecture: String,
}

#[derive(Deserialize)]
struct Lightning {
    unet_file: String,
    unet_architecture: String,
    schedule: Schedule,
}

#[derive(Deserialize)]
struct Schedule {
    class: String,
    steps: BTreeMap<String, Step>,
}

#[derive(Deserialize)]
struct Step {
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

/// How the weight files name the tensors.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// As the Hub's repositories hold them (CLIP saved by transformers 4).
    Hub,
    /// As transformers 5 and diffusers name the modules' tensors.
    Module,
}

fn real_configs() -> PathBuf {
    clip_vocab::fixtures_dir().join("real-configs")
}

fn expected() -> Expected {
    let path = real_configs().join("expected.json.gz");
    serde_json::from_slice(&clip_vocab::gunzip(&path)).unwrap()
}

impl Expected {
    fn shapes(&self, component: &Component, layout: Layout) -> &Shapes {
        let key = match layout {
            Layout::Hub => &component.hub_architecture,
            Layout::Module => &component.architecture,
        };
        &self.architectures[key]
    }
}

/// A shape-only weights file of `tensors` (f16).
fn header_only(path: &Path, tensors: &Shapes) {
    shape_only::write_header_only(path, DType::F16, tensors).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The weights file of a component folder, as diffusers and transformers name it.
fn weights_file(component: &str) -> &'static str {
    match component {
        "unet" | "vae" => "diffusion_pytorch_model.safetensors",
        _ => "model.safetensors",
    }
}

/// The repo as a model folder: its real configs, CLIP's real vocabulary in each tokenizer
/// folder, and a shape-only weights file per weighted component.
fn model_folder(root: &Path, repo: &Repo, expected: &Expected, layout: Layout) -> PathBuf {
    let folder = root.join(&repo.folder);
    copy_tree(&clip_vocab::real_config_folder(&repo.folder), &folder);
    let vocab = clip_vocab::build();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("tokenizer") {
            vocab.write(&path);
        }
    }
    for (name, component) in &repo.components {
        let file = folder.join(name).join(weights_file(name));
        header_only(&file, expected.shapes(component, layout));
    }
    folder
}

/// Checks that each component was built exactly once and took every tensor its file holds,
/// in its shape: the loader asks for nothing diffusers' model lacks (the shape-only map
/// refuses unknown names and wrong shapes) and leaves nothing diffusers' model has.
fn check_built(what: &str, built: &[Built], components: &[(&str, &Shapes)]) {
    let mut seen = vec![0; components.len()];
    for b in built {
        let Some(i) = components.iter().position(|(_, s)| **s == b.offered) else {
            panic!(
                "{what}: a model was built from {} tensors that are no component's",
                b.offered.len()
            );
        };
        seen[i] += 1;
        let (name, _) = components[i];
        let left: Vec<&String> = b
            .offered
            .keys()
            .filter(|k| !b.taken.contains_key(*k))
            .collect();
        assert!(
            left.is_empty(),
            "{what}: {name}: {} tensors are never used, e.g. {:?}",
            left.len(),
            &left[..left.len().min(5)]
        );
        assert_eq!(b.taken, b.offered, "{what}: {name}: shapes differ");
    }
    for ((name, _), n) in components.iter().zip(seen) {
        assert_eq!(n, 1, "{what}: {name} was built {n} times");
    }
}

fn check_schedule(what: &str, spec: &ModelSpec, folder: &Path, want: &Schedule) {
    let config = spec.scheduler_config(folder).unwrap();
    assert_eq!(config.kind().unwrap().class_name(), want.class, "{what}");
    for (steps, step) in &want.steps {
        let n: usize = steps.parse().unwrap();
        let scheduler = schedulers::build(&config, n).unwrap();
        let got = scheduler.timesteps();
        assert_eq!(got.len(), step.timesteps.len(), "{what}: {n} steps");
        for (g, w) in got.iter().zip(&step.timesteps) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{what}: {n} steps: timesteps {got:?}, diffusers {:?}",
                step.timesteps
            );
        }
        let sigma = scheduler.init_noise_sigma();
        assert!(
            (sigma - step.init_noise_sigma).abs() <= 1e-5 * step.init_noise_sigma,
            "{what}: {n} steps: init_noise_sigma {sigma}, diffusers {}",
            step.init_noise_sigma
        );
    }
}

#[test]
#[ignore = "needs the Hub repos' own config files in tests/fixtures/real-configs/<org>--<name>/ (see SOURCES.md there): not committed, as fetched data; run with --ignored where they are present"]
fn every_repo_loads_from_its_real_configs_as_diffusers_builds_it() {
    let expected = expected();
    assert_eq!(expected.repos.len(), 5, "{:?}", expected.versions);
    for layout in [Layout::Hub, Layout::Module] {
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("hub");
        for (id, repo) in &expected.repos {
            let folder = model_folder(root.path(), repo, &expected, layout);
            link_as_hub_cache(&folder, &cache, id).unwrap();
        }
        let store = ModelStore::new(&cache).with_downloads(false);
        for (id, repo) in &expected.repos {
            let what = format!("{id} ({layout:?} names)");
            let spec = ModelSpec::for_id(id).unwrap();
            assert_eq!(&spec.base, id, "{what}");
            let (pipeline, built) =
                shape_only::record(|| spec.load(&store, &Device::Cpu, DType::F32));
            let pipeline = pipeline.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(pipeline.name(), repo.pipeline, "{what}");
            // The pipeline loads everything but the safety checker, which is its own model.
            let components: Vec<(&str, &Shapes)> = repo
                .components
                .iter()
                .filter(|(name, _)| *name != "safety_checker")
                .map(|(name, c)| (name.as_str(), expected.shapes(c, layout)))
                .collect();
            check_built(&what, &built, &components);
            check_schedule(
                &what,
                &spec,
                &spec.base_folder(&store).unwrap(),
                &repo.schedule,
            );
        }
    }
}

#[test]
#[ignore = "needs the Hub repos' own config files in tests/fixtures/real-configs/<org>--<name>/ (see SOURCES.md there): not committed, as fetched data; run with --ignored where they are present"]
fn sdxl_lightning_is_the_sdxl_base_with_bytedances_unet_and_scheduler() {
    let expected = expected();
    let checkpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(real_configs().join("ByteDance--SDXL-Lightning/checkpoints.json"))
            .unwrap(),
    )
    .unwrap();
    let base_id = "stabilityai/stable-diffusion-xl-base-1.0";
    let base = &expected.repos[base_id];
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("hub");
    let folder = model_folder(root.path(), base, &expected, Layout::Hub);
    link_as_hub_cache(&folder, &cache, base_id).unwrap();
    let lightning = root.path().join("lightning");
    std::fs::create_dir_all(&lightning).unwrap();
    for l in expected.lightning.values() {
        header_only(
            &lightning.join(&l.unet_file),
            &expected.architectures[&l.unet_architecture],
        );
    }
    link_as_hub_cache(&lightning, &cache, LIGHTNING_REPO).unwrap();
    let store = ModelStore::new(&cache).with_downloads(false);

    assert_eq!(expected.lightning.len(), 3);
    for (id, l) in &expected.lightning {
        let spec = ModelSpec::for_id(id).unwrap();
        assert_eq!(spec.base, base_id, "{id}");
        let (repo, file) = spec.unet_weights.clone().unwrap();
        assert_eq!(
            (repo.as_str(), file.as_str()),
            (LIGHTNING_REPO, l.unet_file.as_str())
        );
        let steps = l.schedule.steps.keys().next().unwrap();
        assert_eq!(checkpoints["unet"][steps], file.as_str(), "{id}");

        let (pipeline, built) = shape_only::record(|| spec.load(&store, &Device::Cpu, DType::F32));
        let pipeline = pipeline.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(pipeline.name(), base.pipeline, "{id}");
        let components: Vec<(&str, &Shapes)> = base
            .components
            .iter()
            .map(|(name, c)| (name.as_str(), expected.shapes(c, Layout::Hub)))
            .collect();
        check_built(id, &built, &components);
        check_schedule(id, &spec, &folder, &l.schedule);
    }
}

#[test]
#[ignore = "needs the Hub repos' own config files in tests/fixtures/real-configs/<org>--<name>/ (see SOURCES.md there): not committed, as fetched data; run with --ignored where they are present"]
fn the_safety_checker_of_the_real_configs_takes_every_tensor() {
    let expected = expected();
    let mut checked = 0;
    for layout in [Layout::Hub, Layout::Module] {
        for (id, repo) in &expected.repos {
            let Some(component) = repo.components.get("safety_checker") else {
                continue;
            };
            // The pipeline repos' safety_checker/ is the CompVis checker saved by diffusers;
            // a checker folder also holds the image processor the pipeline keeps apart.
            let real = clip_vocab::real_config_folder(&repo.folder);
            let dir = tempfile::tempdir().unwrap();
            std::fs::copy(
                real.join("safety_checker/config.json"),
                dir.path().join("config.json"),
            )
            .unwrap();
            std::fs::copy(
                real.join("feature_extractor/preprocessor_config.json"),
                dir.path().join("preprocessor_config.json"),
            )
            .unwrap();
            let shapes = expected.shapes(component, layout);
            header_only(&dir.path().join("model.safetensors"), shapes);
            let what = format!("{id} safety checker ({layout:?} names)");
            let (checker, built) =
                shape_only::record(|| SafetyChecker::load(dir.path(), &Device::Cpu, DType::F32));
            checker.unwrap_or_else(|e| panic!("{what}: {e}"));
            check_built(&what, &built, &[("safety_checker", shapes)]);
            checked += 1;
        }
    }
    assert_eq!(
        checked, 4,
        "instruct-pix2pix and SD 1.5 ship a checker, in two layouts"
    );
}
