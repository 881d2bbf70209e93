//! Parity with diffusers 0.42.1: `tests/fixtures/schedulers/generate.py` ran the three
//! schedulers over a grid of configs (each spacing x beta schedule x prediction type x
//! steps_offset, step counts 1/4/7/50, the parity fixture models' own configs, and the
//! options beyond that grid) and recorded what they computed. Training schedules and
//! timesteps must agree exactly where no square root is involved, everything else to 1e-6
//! relative (see `assert_close_floor`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::{json, Value};

use super::schedule::alphas_cumprod;
use super::*;
use crate::error::Error;

const RELATIVE_TOLERANCE: f64 = 1e-6;

#[derive(Deserialize)]
struct Manifest {
    groups: Vec<Group>,
    sweeps: Vec<Sweep>,
    sequences: Vec<Sequence>,
}

/// A stateful run: `add_noise` at `begin`, then every step from `begin` to the end, in order.
#[derive(Deserialize)]
struct Sequence {
    name: String,
    config: Value,
    /// The `eta` passed to `step` (TCD's gamma; the pipelines pass 0).
    eta: f64,
    runs: Vec<SequenceRun>,
}

#[derive(Deserialize)]
struct SequenceRun {
    steps: usize,
    begin: usize,
    prefix: String,
    /// Whether `scale_model_input` changed the sample (`{prefix}.scaled` is recorded then).
    scales: bool,
    /// How many noise tensors each step drew (`{prefix}.step_noise`, all steps' in order).
    draws: Vec<usize>,
}

/// One scheduler config and the step counts it was run with.
#[derive(Deserialize)]
struct Group {
    name: String,
    /// The config inline, or the path (from the repository root) of a fixture model's file.
    config: Option<Value>,
    config_file: Option<String>,
    alphas_cumprod: String,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    steps: usize,
    /// Names the run's tensors: `{prefix}.timesteps`, `.sigmas`, `.scaled`, `.prev`, ...
    prefix: String,
    /// The step indices whose `scale_model_input` / `step` were recorded, in order.
    indices: Vec<usize>,
    add_noise_indices: Vec<usize>,
}

/// Timesteps (and sigmas) for many step counts, concatenated in `steps` order.
#[derive(Deserialize)]
struct Sweep {
    prefix: String,
    config: Value,
    steps: Vec<usize>,
}

struct Fixture {
    manifest: Manifest,
    tensors: HashMap<String, Tensor>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = repo_root().join("tests/fixtures/schedulers");
        let manifest = crate::error::read_json(&dir.join("cases.json")).expect("cases.json");
        let tensors =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)
                .expect("expected.safetensors");
        Fixture { manifest, tensors }
    })
}

impl Fixture {
    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} is missing"))
    }

    fn values(&self, name: &str) -> Vec<f32> {
        to_vec(self.tensor(name))
    }

    /// The fixed step inputs for step index `i` (row `i % 64` of the recorded inputs).
    fn input(&self, name: &str, i: usize) -> Tensor {
        let all = self.tensor(name);
        all.get(i % all.dim(0).unwrap()).unwrap()
    }
}

impl Group {
    fn config(&self) -> SchedulerConfig {
        match (&self.config, &self.config_file) {
            (Some(value), _) => SchedulerConfig::from_value(value.clone()).unwrap(),
            (None, Some(path)) => SchedulerConfig::from_file(&repo_root().join(path)).unwrap(),
            (None, None) => panic!("group {} has no config", self.name),
        }
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// How far from diffusers a value may be: 1e-6 of the larger of its own magnitude and
/// `floor`, the magnitude below which a relative error stops meaning anything (one timestep;
/// the largest value of a sample tensor). The only arithmetic that is not bit-identical is
/// `sqrt`: torch's CPU sqrt (MKL) is not correctly rounded, so sqrt-derived scalars can differ
/// by an ulp, and steps that subtract nearby values amplify that a little.
fn assert_close_floor(what: &str, actual: &[f32], expected: &[f32], floor: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a as f64, e as f64);
        let tolerance = RELATIVE_TOLERANCE * e.abs().max(floor);
        assert!(
            (a - e).abs() <= tolerance,
            "{what}[{i}]: got {a}, diffusers {e}"
        );
    }
}

/// Relative to each value: for noise levels, which span orders of magnitude.
fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_close_floor(what, actual, expected, 0.0);
}

/// Relative to the tensor's largest value: for samples, whose elements cross zero.
fn assert_close_tensor(what: &str, actual: &[f32], expected: &[f32]) {
    let magnitude = expected.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    assert_close_floor(what, actual, expected, magnitude);
}

/// Timesteps: relative, and absolute below one timestep (continuous timesteps cross zero).
fn assert_close_timesteps(what: &str, actual: &[f32], expected: &[f32]) {
    assert_close_floor(what, actual, expected, 1.0);
}

fn timesteps_f32(scheduler: &dyn Scheduler) -> Vec<f32> {
    scheduler.timesteps().iter().map(|&t| t as f32).collect()
}

/// Recorded ancestral noise, handed out once; counts the draws.
struct StepNoise {
    recorded: Option<Tensor>,
    draws: usize,
}

impl NoiseSource for StepNoise {
    fn randn(&mut self, shape: &[usize], tag: &str) -> crate::error::Result<Tensor> {
        assert_eq!(tag, "scheduler_step");
        self.draws += 1;
        let noise = self
            .recorded
            .take()
            .expect("the scheduler drew noise that diffusers did not draw");
        assert_eq!(noise.dims(), shape);
        Ok(noise)
    }
}

#[test]
fn alphas_cumprod_match_torch() {
    let fx = fixture();
    for group in &fx.manifest.groups {
        let config = group.config();
        let kind = config.kind().unwrap();
        let what = format!("{}: alphas_cumprod", group.name);
        let (actual, expected) = (
            alphas_cumprod(&config, kind),
            fx.values(&group.alphas_cumprod),
        );
        if config.rescale_betas_zero_snr {
            // Absolute (they are at most 1): the rescaling subtracts nearby square roots.
            assert_close_tensor(&what, &actual, &expected);
        } else {
            // No square root involved, so torch's float32 steps are reproduced exactly.
            assert_eq!(actual, expected, "{what}");
        }
    }
}

/// Timesteps, sigmas and init_noise_sigma after `set_timesteps`.
#[test]
fn schedules_match_diffusers() {
    let fx = fixture();
    for group in &fx.manifest.groups {
        let config = group.config();
        for run in &group.runs {
            let what = |field: &str| format!("{} steps={}: {field}", group.name, run.steps);
            let sigmas = match config.kind().unwrap() {
                SchedulerKind::EulerDiscrete => Some(
                    EulerDiscrete::new(&config, run.steps)
                        .unwrap()
                        .sigmas()
                        .to_vec(),
                ),
                SchedulerKind::EulerAncestralDiscrete => Some(
                    EulerAncestralDiscrete::new(&config, run.steps)
                        .unwrap()
                        .sigmas()
                        .to_vec(),
                ),
                _ => None,
            };
            if let Some(sigmas) = sigmas {
                assert_close(
                    &what("sigmas"),
                    &sigmas,
                    &fx.values(&format!("{}.sigmas", run.prefix)),
                );
            }
            let scheduler = build(&config, run.steps).unwrap();
            let expected = fx.values(&format!("{}.timesteps", run.prefix));
            assert_close_timesteps(
                &what("timesteps"),
                &timesteps_f32(scheduler.as_ref()),
                &expected,
            );
            let init = [scheduler.init_noise_sigma() as f32];
            assert_close(
                &what("init_noise_sigma"),
                &init,
                &fx.values(&format!("{}.init_noise_sigma", run.prefix)),
            );
        }
    }
}

/// `scale_model_input`, `step` (replaying the ancestral noise) and `add_noise`.
#[test]
fn steps_match_diffusers() {
    let fx = fixture();
    for group in &fx.manifest.groups {
        let config = group.config();
        let kind = config.kind().unwrap();
        for run in &group.runs {
            let mut scheduler = build(&config, run.steps).unwrap();
            let prefix = &run.prefix;
            for (k, &i) in run.indices.iter().enumerate() {
                let what =
                    |field: &str| format!("{} steps={} index={i}: {field}", group.name, run.steps);
                let sample = fx.input("inputs.sample", i);
                let model_output = fx.input("inputs.model_output", i);

                let scaled = to_vec(&scheduler.scale_model_input(&sample, i).unwrap());
                let expected_scaled = match kind {
                    SchedulerKind::Ddim => to_vec(&sample),
                    _ => to_vec(&fx.tensor(&format!("{prefix}.scaled")).get(k).unwrap()),
                };
                assert_close_tensor(&what("scale_model_input"), &scaled, &expected_scaled);

                let recorded = fx
                    .tensors
                    .get(&format!("{prefix}.step_noise"))
                    .map(|t| t.get(k).unwrap());
                let ancestral = recorded.is_some();
                let mut noise = StepNoise { recorded, draws: 0 };
                let prev = scheduler
                    .step(&model_output, i, &sample, &mut noise)
                    .unwrap();
                assert_eq!(
                    noise.draws,
                    usize::from(ancestral),
                    "{}",
                    what("noise draws")
                );
                let expected_prev = to_vec(&fx.tensor(&format!("{prefix}.prev")).get(k).unwrap());
                assert_close_tensor(&what("step"), &to_vec(&prev), &expected_prev);
            }
            for (k, &i) in run.add_noise_indices.iter().enumerate() {
                let what = format!("{} steps={} index={i}: add_noise", group.name, run.steps);
                let noisy = scheduler
                    .add_noise(fx.tensor("inputs.original"), fx.tensor("inputs.noise"), i)
                    .unwrap();
                let expected = to_vec(&fx.tensor(&format!("{prefix}.add_noise")).get(k).unwrap());
                assert_close_tensor(&what, &to_vec(&noisy), &expected);
            }
        }
    }
}

/// The spacing arithmetic over many step counts, including those where numpy's float
/// `arange` makes trailing spacing one timestep longer.
#[test]
fn timestep_sweep_matches_diffusers() {
    let fx = fixture();
    for sweep in &fx.manifest.sweeps {
        let config = SchedulerConfig::from_value(sweep.config.clone()).unwrap();
        let (mut timesteps, mut sigmas) = (Vec::new(), Vec::new());
        for &n in &sweep.steps {
            timesteps.extend(timesteps_f32(build(&config, n).unwrap().as_ref()));
            if config.kind().unwrap() == SchedulerKind::EulerDiscrete {
                sigmas.extend_from_slice(EulerDiscrete::new(&config, n).unwrap().sigmas());
            }
        }
        // numpy's spacing arithmetic is reproduced exactly.
        assert_eq!(
            timesteps,
            fx.values(&format!("{}.timesteps", sweep.prefix)),
            "{}",
            sweep.prefix
        );
        if !sigmas.is_empty() {
            assert_close(
                &format!("{}.sigmas", sweep.prefix),
                &sigmas,
                &fx.values(&format!("{}.sigmas", sweep.prefix)),
            );
        }
    }
}

fn parity_model_config(model: &str) -> SchedulerConfig {
    let path = repo_root()
        .join("tests/fixtures/diffusers-parity/models")
        .join(model)
        .join("scheduler/scheduler_config.json");
    SchedulerConfig::from_file(&path).unwrap()
}

#[test]
fn reads_a_repository_config() {
    let config = parity_model_config("tiny-instruct-pix2pix");
    assert_eq!(config.class_name, "EulerAncestralDiscreteScheduler");
    assert_eq!(config.beta_schedule, BetaSchedule::ScaledLinear);
    assert_eq!((config.beta_start, config.beta_end), (0.00085, 0.012));
    assert_eq!(config.timestep_spacing, TimestepSpacing::Linspace);
    assert_eq!(config.steps_offset, 1);
    assert_eq!(
        config.kind().unwrap(),
        SchedulerKind::EulerAncestralDiscrete
    );
}

/// SDXL-Lightning's override: the SDXL config (leading spacing) switched to trailing gives
/// diffusers' trailing timesteps.
#[test]
fn with_overrides_one_option() {
    let config = parity_model_config("tiny-sdxl")
        .with("timestep_spacing", json!("trailing"))
        .unwrap();
    assert_eq!(config.timestep_spacing, TimestepSpacing::Trailing);
    let fx = fixture();
    let group = fx
        .manifest
        .groups
        .iter()
        .find(|g| g.name == "euler.trailing.scaled_linear.epsilon.offset1")
        .unwrap();
    for run in &group.runs {
        let timesteps = timesteps_f32(build(&config, run.steps).unwrap().as_ref());
        assert_close_timesteps(
            "overridden timesteps",
            &timesteps,
            &fx.values(&format!("{}.timesteps", run.prefix)),
        );
    }
    let err = parity_model_config("tiny-sdxl")
        .with("timestep_spacing", json!("sideways"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Model(m) if m.contains("timestep_spacing") && m.contains("trailing")),
        "{err}"
    );
}

/// Switching class re-resolves the options the file left out with the new class's defaults,
/// as `DDIMScheduler.from_config(euler.config)` does; the ones it set are kept.
#[test]
fn with_class_name_takes_the_new_class_defaults() {
    let euler = SchedulerConfig::from_value(
        json!({"_class_name": "EulerDiscreteScheduler", "steps_offset": 1}),
    )
    .unwrap();
    assert_eq!(euler.timestep_spacing, TimestepSpacing::Linspace);
    let ddim = euler.with("_class_name", json!("DDIMScheduler")).unwrap();
    assert_eq!(ddim.kind().unwrap(), SchedulerKind::Ddim);
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
    assert!(ddim.clip_sample && ddim.set_alpha_to_one);
    assert_eq!(ddim.steps_offset, 1);
}

#[test]
fn with_rejects_unknown_keys() {
    let err = parity_model_config("tiny-sdxl")
        .with("timestep_spaceing", json!("trailing"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Model(m) if m.contains("timestep_spaceing")),
        "{err}"
    );
}

/// A class ignores the options it does not take, even set to values it could not honour.
#[test]
fn options_of_other_classes_are_ignored() {
    let base =
        json!({"_class_name": "EulerAncestralDiscreteScheduler", "beta_schedule": "scaled_linear"});
    let mut with_extras = base.clone();
    with_extras["use_beta_sigmas"] = json!(true);
    with_extras["thresholding"] = json!(true);
    with_extras["interpolation_type"] = json!("log_linear");
    with_extras["clip_sample"] = json!("not even a bool");
    let plain = build(&SchedulerConfig::from_value(base).unwrap(), 7).unwrap();
    let extras = build(&SchedulerConfig::from_value(with_extras).unwrap(), 7).unwrap();
    assert_eq!(plain.timesteps(), extras.timesteps());
    assert_eq!(plain.init_noise_sigma(), extras.init_noise_sigma());
}

#[test]
fn unknown_class_is_a_model_error_listing_the_supported_ones() {
    let config = SchedulerConfig::from_value(
        json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "skip_prk_steps": true}),
    )
    .unwrap();
    let err = build(&config, 10).err().unwrap();
    let Error::Model(msg) = &err else {
        panic!("expected Error::Model, got {err:?}")
    };
    for name in [
        "FlowMatchEulerDiscreteScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DDIMScheduler",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    // Switching to a supported class makes the same config usable.
    let config = config
        .with("_class_name", json!("EulerDiscreteScheduler"))
        .unwrap();
    assert!(build(&config, 10).is_ok());
}

#[test]
fn step_counts_out_of_range_are_invalid_input() {
    for kind in SchedulerKind::ALL {
        let config =
            SchedulerConfig::from_value(json!({"_class_name": kind.class_name()})).unwrap();
        for steps in [0, 1001] {
            let err = build(&config, steps).err().unwrap();
            assert!(
                matches!(err, Error::InvalidInput(_)),
                "{kind:?} with {steps} steps: {err:?}"
            );
        }
        if matches!(kind, SchedulerKind::Lcm | SchedulerKind::Tcd) {
            // At most original_inference_steps (50 by default).
            let err = build(&config, 51).err().unwrap();
            assert!(matches!(err, Error::InvalidInput(_)), "{kind:?}: {err:?}");
            assert_eq!(build(&config, 50).unwrap().timesteps().len(), 50);
            continue;
        }
        // PNDM's Runge-Kutta warm-up adds 9 sub-steps (12 timesteps for the last 3).
        // The second-order schedulers list every timestep but the first twice.
        let expected = match kind {
            SchedulerKind::Pndm => 1009,
            SchedulerKind::HeunDiscrete
            | SchedulerKind::KDpm2Discrete
            | SchedulerKind::KDpm2AncestralDiscrete => 1999,
            _ => 1000,
        };
        assert_eq!(
            build(&config, 1000).unwrap().timesteps().len(),
            expected,
            "{kind:?}"
        );
    }
}

#[test]
fn unsupported_options_are_model_errors() {
    let cases = [
        json!({"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}),
        json!({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true, "use_exponential_sigmas": true}),
        json!({"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}),
        json!({"_class_name": "DDIMScheduler", "num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}),
    ];
    for case in cases {
        let config = SchedulerConfig::from_value(case.clone()).unwrap();
        let err = build(&config, 1).err().unwrap();
        assert!(matches!(err, Error::Model(_)), "{case}: {err:?}");
    }
}

#[test]
fn malformed_values_name_their_key() {
    let cases = [
        (
            json!({"_class_name": "DDIMScheduler", "steps_offset": -1}),
            "steps_offset",
        ),
        (
            json!({"_class_name": "DDIMScheduler", "beta_schedule": "cubic"}),
            "beta_schedule",
        ),
        (
            json!({"_class_name": "EulerDiscreteScheduler", "trained_betas": [0.1, "x"]}),
            "trained_betas",
        ),
        (
            json!({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": "yes"}),
            "use_karras_sigmas",
        ),
        (json!({"beta_start": 0.1}), "_class_name"),
    ];
    for (case, key) in cases {
        let err = SchedulerConfig::from_value(case.clone()).unwrap_err();
        assert!(
            matches!(&err, Error::Model(m) if m.contains(key)),
            "{case}: {err}"
        );
    }
}

#[test]
fn indices_past_the_schedule_are_invalid_input() {
    for kind in SchedulerKind::ALL {
        let config =
            SchedulerConfig::from_value(json!({"_class_name": kind.class_name()})).unwrap();
        let mut scheduler = build(&config, 4).unwrap();
        let end = scheduler.timesteps().len();
        let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut noise = StepNoise {
            recorded: None,
            draws: 0,
        };
        assert!(matches!(
            scheduler.scale_model_input(&x, end),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            scheduler.step(&x, end, &x, &mut noise),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            scheduler.add_noise(&x, &x, end),
            Err(Error::InvalidInput(_))
        ));
    }
}

/// Recorded per-step noise of a whole sequence, handed out in order.
struct QueuedNoise {
    queue: std::collections::VecDeque<Tensor>,
    draws: usize,
}

impl NoiseSource for QueuedNoise {
    fn randn(&mut self, shape: &[usize], tag: &str) -> crate::error::Result<Tensor> {
        assert_eq!(tag, "scheduler_step");
        self.draws += 1;
        let noise = self
            .queue
            .pop_front()
            .expect("the scheduler drew noise that diffusers did not draw");
        assert_eq!(noise.dims(), shape);
        Ok(noise)
    }
}

/// diffusers' `sigmas` after `set_timesteps`, for the classes that have them.
fn sequence_sigmas(config: &SchedulerConfig, steps: usize) -> Option<Vec<f32>> {
    match config.kind().unwrap() {
        SchedulerKind::EulerDiscrete => {
            Some(EulerDiscrete::new(config, steps).unwrap().sigmas().to_vec())
        }
        SchedulerKind::DpmSolverMultistep => Some(
            DpmSolverMultistep::new(config, steps)
                .unwrap()
                .sigmas()
                .to_vec(),
        ),
        SchedulerKind::HeunDiscrete => {
            Some(HeunDiscrete::new(config, steps).unwrap().sigmas().to_vec())
        }
        SchedulerKind::KDpm2Discrete => {
            Some(KDpm2Discrete::new(config, steps).unwrap().sigmas().to_vec())
        }
        SchedulerKind::KDpm2AncestralDiscrete => Some(
            KDpm2AncestralDiscrete::new(config, steps)
                .unwrap()
                .sigmas()
                .to_vec(),
        ),
        SchedulerKind::LmsDiscrete => {
            Some(LmsDiscrete::new(config, steps).unwrap().sigmas().to_vec())
        }
        SchedulerKind::UniPcMultistep => Some(
            UniPcMultistep::new(config, steps)
                .unwrap()
                .sigmas()
                .to_vec(),
        ),
        SchedulerKind::DeisMultistep => {
            Some(DeisMultistep::new(config, steps).unwrap().sigmas().to_vec())
        }
        SchedulerKind::DpmSolverSinglestep => Some(
            DpmSolverSinglestep::new(config, steps)
                .unwrap()
                .sigmas()
                .to_vec(),
        ),
        _ => None,
    }
}

/// The stateful schedulers over whole runs, from `begin` as img2img starts them: timesteps,
/// sigmas, `add_noise` at the start, then every `scale_model_input` and `step` in order
/// (replaying the noise each step drew). Every sequence is checked; the failures are listed
/// together at the end. `SCHEDULER_REPORT=1` prints each sequence's worst error.
#[test]
fn sequences_match_diffusers() {
    let fx = fixture();
    assert!(!fx.manifest.sequences.is_empty());
    let report = std::env::var_os("SCHEDULER_REPORT").is_some();
    let mut failed = Vec::new();
    for seq in &fx.manifest.sequences {
        let mut check = Check::default();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_sequence(fx, seq, &mut check)
        }));
        if report {
            eprintln!(
                "{:40} worst {:.2e} at {}",
                seq.name, check.worst, check.worst_at
            );
        }
        if outcome.is_err() || !check.failures.is_empty() {
            failed.push(format!("{}: {}", seq.name, check.failures.join("; ")));
        }
    }
    assert!(
        failed.is_empty(),
        "sequences differing from diffusers:\n{}",
        failed.join("\n")
    );
}

/// The relative tolerance of a class's sequences.
///
/// 1e-6 where the arithmetic is diffusers' to the rounding of `sqrt`, as for the grid. The
/// solvers that work in lambda = log(alpha / sigma) (DPM-Solver, UniPC, DEIS) take logs and
/// exps of float32 scalars: torch's and numpy's float32 `log` are not correctly rounded (about
/// 5% and 8% of values are an ulp off the true logarithm; Rust's `ln` is correctly rounded),
/// and the higher-order updates divide differences of those lambdas, so an ulp there moves a
/// step's output by up to ~1.2e-5 of its magnitude (UniPC order 3, the worst). KDPM2's
/// midpoint sigmas come from torch's vectorised float32 `log`/`exp` (Sleef, within an ulp or
/// two), moving its steps by up to ~2e-6.
fn sequence_tolerance(kind: SchedulerKind) -> f64 {
    match kind {
        // About three times the worst seen: DPM-Solver 2.7e-6 (zero SNR), DEIS 5.1e-6 (order
        // 3), UniPC 1.2e-5 (order 3).
        SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverSinglestep => 1e-5,
        SchedulerKind::DeisMultistep => 2e-5,
        SchedulerKind::UniPcMultistep => 5e-5,
        SchedulerKind::KDpm2Discrete | SchedulerKind::KDpm2AncestralDiscrete => 1e-5,
        _ => RELATIVE_TOLERANCE,
    }
}

/// Collects a sequence's comparisons: its worst relative error and its failures.
#[derive(Default)]
struct Check {
    tolerance: f64,
    worst: f64,
    worst_at: String,
    failures: Vec<String>,
}

impl Check {
    /// `actual` against diffusers' `expected`, relative to max(|value|, `floor`); NaN matches
    /// NaN (diffusers' own degenerate steps).
    fn close(&mut self, what: &str, actual: &[f32], expected: &[f32], floor: f64) {
        if actual.len() != expected.len() {
            self.failures.push(format!(
                "{what}: {} values, diffusers {}",
                actual.len(),
                expected.len()
            ));
            return;
        }
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let (a, e) = (a as f64, e as f64);
            if a.is_nan() && e.is_nan() || a == e {
                continue;
            }
            // NaN against a number counts as infinitely far.
            let error = match (a - e).abs() / e.abs().max(floor) {
                x if x.is_nan() => f64::INFINITY,
                x => x,
            };
            if error > self.worst {
                self.worst = error;
                self.worst_at = format!("{what}[{i}]");
            }
            if error > self.tolerance {
                self.failures
                    .push(format!("{what}[{i}]: got {a}, diffusers {e}"));
                return;
            }
        }
    }

    fn close_tensor(&mut self, what: &str, actual: &[f32], expected: &[f32]) {
        let magnitude = expected.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        self.close(what, actual, expected, magnitude);
    }
}

fn check_sequence(fx: &Fixture, seq: &Sequence, check: &mut Check) {
    let config = SchedulerConfig::from_value(seq.config.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", seq.name));
    let kind = config
        .kind()
        .unwrap_or_else(|e| panic!("{}: {e}", seq.name));
    check.tolerance = sequence_tolerance(kind);
    for run in &seq.runs {
        let prefix = &run.prefix;
        let what = |field: &str| format!("steps={} begin={}: {field}", run.steps, run.begin);
        let fresh = || -> Box<dyn Scheduler> {
            if seq.eta != 0.0 {
                Box::new(
                    Tcd::new(&config, run.steps)
                        .and_then(|s| s.with_eta(seq.eta))
                        .unwrap(),
                )
            } else {
                build(&config, run.steps).unwrap_or_else(|e| panic!("{}: {e}", what("build")))
            }
        };
        let mut scheduler = fresh();
        // KDPM2's midpoint timesteps come from float32 logs of float32 midpoints, an ulp of
        // which moves them by up to ~1e-3 (see `sequence_tolerance`): absolute 1e-3 there.
        let timestep_floor = match kind {
            SchedulerKind::KDpm2Discrete | SchedulerKind::KDpm2AncestralDiscrete => {
                1e-3 / check.tolerance
            }
            _ => 1.0,
        };
        check.close(
            &what("timesteps"),
            &timesteps_f32(scheduler.as_ref()),
            &fx.values(&format!("{prefix}.timesteps")),
            timestep_floor,
        );
        if let Some(expected) = fx.tensors.get(&format!("{prefix}.sigmas")) {
            let sigmas = sequence_sigmas(&config, run.steps)
                .unwrap_or_else(|| panic!("{}", what("no sigmas")));
            check.close(&what("sigmas"), &sigmas, &to_vec(expected), 0.0);
        }
        check.close(
            &what("init_noise_sigma"),
            &[scheduler.init_noise_sigma() as f32],
            &fx.values(&format!("{prefix}.init_noise_sigma")),
            0.0,
        );
        let noisy = scheduler
            .add_noise(
                fx.tensor("inputs.original"),
                fx.tensor("inputs.noise"),
                run.begin,
            )
            .unwrap();
        check.close_tensor(
            &what("add_noise"),
            &to_vec(&noisy),
            &fx.values(&format!("{prefix}.add_noise")),
        );

        let recorded = fx.tensors.get(&format!("{prefix}.step_noise"));
        let queue = match recorded {
            Some(t) => (0..t.dim(0).unwrap()).map(|k| t.get(k).unwrap()).collect(),
            None => Default::default(),
        };
        let mut noise = QueuedNoise { queue, draws: 0 };
        let len = scheduler.timesteps().len();
        assert_eq!(run.draws.len(), len - run.begin, "{}", what("steps"));
        for (k, i) in (run.begin..len).enumerate() {
            let what = |field: &str| what(&format!("index {i}: {field}"));
            let sample = fx.input("inputs.sample", i);
            let model_output = fx.input("inputs.model_output", i);
            let scaled = to_vec(&scheduler.scale_model_input(&sample, i).unwrap());
            let expected_scaled = if run.scales {
                to_vec(&fx.tensor(&format!("{prefix}.scaled")).get(k).unwrap())
            } else {
                to_vec(&sample)
            };
            check.close_tensor(&what("scale_model_input"), &scaled, &expected_scaled);

            noise.draws = 0;
            let prev = scheduler
                .step(&model_output, i, &sample, &mut noise)
                .unwrap_or_else(|e| panic!("{}: {e}", what("step")));
            assert_eq!(noise.draws, run.draws[k], "{}", what("noise draws"));
            let expected = to_vec(&fx.tensor(&format!("{prefix}.prev")).get(k).unwrap());
            check.close_tensor(&what("step"), &to_vec(&prev), &expected);
        }

        // From the seed alone: diffusers drew from `torch.Generator("cpu").manual_seed(steps)`,
        // so torch's generator reimplemented gives the same steps when the draws come in
        // diffusers' order and shapes.
        if run.draws.iter().any(|&d| d > 0) {
            let mut scheduler = fresh();
            let mut seeded = crate::noise::TorchCpuNoise::new(run.steps as u64);
            for (k, i) in (run.begin..len).enumerate() {
                let sample = fx.input("inputs.sample", i);
                let model_output = fx.input("inputs.model_output", i);
                scheduler.scale_model_input(&sample, i).unwrap();
                let prev = scheduler
                    .step(&model_output, i, &sample, &mut seeded)
                    .unwrap();
                let expected = to_vec(&fx.tensor(&format!("{prefix}.prev")).get(k).unwrap());
                check.close_tensor(
                    &what(&format!("index {i}: seeded step")),
                    &to_vec(&prev),
                    &expected,
                );
            }
        }
    }
}

/// Values the new classes read but tessera does not implement: `Error::Model` naming the key
/// and the value, as diffusers would compute something else (or fail).
#[test]
fn unsupported_options_name_key_and_value() {
    let cases = [
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true}),
            "use_flow_sigmas",
            "true",
        ),
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned_range"}),
            "variance_type",
            "learned_range",
        ),
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 0}),
            "solver_order",
            "0",
        ),
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"}),
            "final_sigmas_type",
            "zero",
        ),
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"}),
            "prediction_type",
            "flow_prediction",
        ),
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver+++"}),
            "algorithm_type",
            "dpmsolver+++",
        ),
        (
            json!({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "euler"}),
            "solver_type",
            "euler",
        ),
        (
            json!({"_class_name": "DPMSolverSinglestepScheduler", "solver_order": 4}),
            "solver_order",
            "4",
        ),
        (
            json!({"_class_name": "DPMSolverSinglestepScheduler", "algorithm_type": "sde-dpmsolver"}),
            "algorithm_type",
            "sde-dpmsolver",
        ),
        (
            json!({"_class_name": "UniPCMultistepScheduler", "solver_p": {"_class_name": "DDIMScheduler"}}),
            "solver_p",
            "DDIMScheduler",
        ),
        (
            json!({"_class_name": "UniPCMultistepScheduler", "use_dynamic_shifting": true}),
            "use_dynamic_shifting",
            "true",
        ),
        (
            json!({"_class_name": "DEISMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}),
            "algorithm_type",
            "sde-dpmsolver++",
        ),
        (
            json!({"_class_name": "PNDMScheduler", "prediction_type": "sample"}),
            "prediction_type",
            "sample",
        ),
        (
            json!({"_class_name": "DDPMScheduler", "variance_type": "learned"}),
            "variance_type",
            "learned",
        ),
        (
            json!({"_class_name": "DDPMScheduler", "variance_type": "fixed_large_log"}),
            "variance_type",
            "fixed_large_log",
        ),
        (
            json!({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"}),
            "beta_schedule",
            "sigmoid",
        ),
        (
            json!({"_class_name": "LCMScheduler", "original_inference_steps": 2000}),
            "original_inference_steps",
            "2000",
        ),
        (
            json!({"_class_name": "KDPM2DiscreteScheduler", "prediction_type": "sample"}),
            "prediction_type",
            "sample",
        ),
    ];
    for (case, key, value) in cases {
        let err = SchedulerConfig::from_value(case.clone()).and_then(|c| build(&c, 4).map(|_| ()));
        let err = err.expect_err(&case.to_string());
        assert!(
            matches!(&err, Error::Model(m) if m.contains(key) && m.contains(value)),
            "{case}: {err}"
        );
    }
}

/// A DPM-Solver config as diffusers writes it (DreamShaper-style DPM++ 2M Karras), with the
/// other classes' keys it ignores; `lambda_min_clipped` as the string a Python-JSON reader may
/// hand over for `-Infinity`.
#[test]
fn reads_a_dpm_solver_repository_config() {
    let config = SchedulerConfig::from_value(json!({
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": "0.21.0",
        "algorithm_type": "dpmsolver++",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "dynamic_thresholding_ratio": 0.995,
        "euler_at_final": false,
        "interpolation_type": "linear",
        "lambda_min_clipped": "-Infinity",
        "lower_order_final": true,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "solver_order": 2,
        "solver_type": "midpoint",
        "steps_offset": 1,
        "thresholding": false,
        "timestep_spacing": "leading",
        "trained_betas": null,
        "use_karras_sigmas": true,
        "variance_type": null
    }))
    .unwrap();
    assert_eq!(config.kind().unwrap(), SchedulerKind::DpmSolverMultistep);
    assert_eq!(config.lambda_min_clipped, f64::NEG_INFINITY);
    assert!(config.use_karras_sigmas && config.lower_order_final);
    let scheduler = build(&config, 25).unwrap();
    assert_eq!(scheduler.timesteps().len(), 25);
    assert_eq!(scheduler.timesteps()[0], 999.0);
}

/// The second-order schedulers say so, and img2img's start index (`t_start * order`) lands on
/// the first half of a step.
#[test]
fn second_order_schedulers_have_order_two() {
    for class in [
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
    ] {
        let config = SchedulerConfig::from_value(json!({ "_class_name": class })).unwrap();
        let scheduler = build(&config, 10).unwrap();
        assert_eq!(scheduler.order(), 2, "{class}");
        assert_eq!(scheduler.timesteps().len(), 19, "{class}");
    }
    for kind in SchedulerKind::ALL {
        let config =
            SchedulerConfig::from_value(json!({"_class_name": kind.class_name()})).unwrap();
        let second = matches!(
            kind,
            SchedulerKind::HeunDiscrete
                | SchedulerKind::KDpm2Discrete
                | SchedulerKind::KDpm2AncestralDiscrete
        );
        assert_eq!(
            build(&config, 10).unwrap().order(),
            if second { 2 } else { 1 }
        );
    }
}

/// A `scheduler_config.json` as diffusers writes it for DPM++ 2M Karras (Python's json:
/// a bare `-Infinity`) loads, with the value diffusers reads.
#[test]
fn a_config_file_with_pythons_infinity_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(
        &path,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.27.0",
            "algorithm_type": "dpmsolver++", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "euler_at_final": false, "final_sigmas_type": "zero",
            "lambda_min_clipped": -Infinity, "lower_order_final": true,
            "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
            "solver_order": 2, "solver_type": "midpoint", "steps_offset": 1,
            "thresholding": false, "timestep_spacing": "leading", "trained_betas": null,
            "use_karras_sigmas": true, "use_lu_lambdas": false, "variance_type": null}"#,
    )
    .unwrap();
    let config = SchedulerConfig::from_file(&path).unwrap();
    assert_eq!(config.lambda_min_clipped, f64::NEG_INFINITY);
    assert!(super::build(&config, 20).is_ok());
}
