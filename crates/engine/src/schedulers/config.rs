//! A repository's `scheduler/scheduler_config.json`, read the way diffusers' `from_config`
//! reads it: the keys a class takes override that class's defaults, every other key is ignored.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{read_json, Error, Result};

/// The scheduler classes tessera implements, by their diffusers class names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    EulerDiscrete,
    EulerAncestralDiscrete,
    Ddim,
    DpmSolverMultistep,
    Pndm,
    Ddpm,
    Lcm,
    Tcd,
    HeunDiscrete,
    KDpm2Discrete,
    KDpm2AncestralDiscrete,
    LmsDiscrete,
    UniPcMultistep,
    DeisMultistep,
    DpmSolverSinglestep,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 15] = [
        SchedulerKind::EulerDiscrete,
        SchedulerKind::EulerAncestralDiscrete,
        SchedulerKind::Ddim,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Pndm,
        SchedulerKind::Ddpm,
        SchedulerKind::Lcm,
        SchedulerKind::Tcd,
        SchedulerKind::HeunDiscrete,
        SchedulerKind::KDpm2Discrete,
        SchedulerKind::KDpm2AncestralDiscrete,
        SchedulerKind::LmsDiscrete,
        SchedulerKind::UniPcMultistep,
        SchedulerKind::DeisMultistep,
        SchedulerKind::DpmSolverSinglestep,
    ];

    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
            SchedulerKind::Tcd => "TCDScheduler",
            SchedulerKind::HeunDiscrete => "HeunDiscreteScheduler",
            SchedulerKind::KDpm2Discrete => "KDPM2DiscreteScheduler",
            SchedulerKind::KDpm2AncestralDiscrete => "KDPM2AncestralDiscreteScheduler",
            SchedulerKind::LmsDiscrete => "LMSDiscreteScheduler",
            SchedulerKind::UniPcMultistep => "UniPCMultistepScheduler",
            SchedulerKind::DeisMultistep => "DEISMultistepScheduler",
            SchedulerKind::DpmSolverSinglestep => "DPMSolverSinglestepScheduler",
        }
    }

    /// The kind for a diffusers `_class_name`; an `Error::Model` listing the supported ones
    /// for any other.
    pub fn from_class_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.class_name() == name)
            .ok_or_else(|| {
                let supported: Vec<&str> = Self::ALL.iter().map(|k| k.class_name()).collect();
                Error::Model(format!(
                    "scheduler class '{name}' is not supported; supported classes: {}",
                    supported.join(", ")
                ))
            })
    }

    /// The config keys this class's `__init__` takes (diffusers 0.42.1's signatures): diffusers
    /// ignores the others, even when they are set.
    fn takes(self, key: &str) -> bool {
        const BETAS: &[&str] = &[
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "trained_betas",
            "prediction_type",
        ];
        const SPACING: &[&str] = &["timestep_spacing", "steps_offset"];
        // `sigma_min` / `sigma_max` are `__init__` arguments of EulerDiscrete only, but the
        // other classes' Karras / exponential conversions read them from the config too
        // (diffusers keeps a file's unknown keys there).
        const SIGMA_OPTIONS: &[&str] = &[
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "sigma_min",
            "sigma_max",
        ];
        const THRESHOLDING: &[&str] = &[
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
        ];
        let own: &[&[&str]] = match self {
            SchedulerKind::EulerDiscrete => &[
                SPACING,
                SIGMA_OPTIONS,
                &[
                    "rescale_betas_zero_snr",
                    "interpolation_type",
                    "sigma_min",
                    "sigma_max",
                    "timestep_type",
                    "final_sigmas_type",
                ],
            ],
            SchedulerKind::EulerAncestralDiscrete => &[SPACING, &["rescale_betas_zero_snr"]],
            SchedulerKind::Ddim => &[
                SPACING,
                THRESHOLDING,
                &[
                    "rescale_betas_zero_snr",
                    "clip_sample",
                    "clip_sample_range",
                    "set_alpha_to_one",
                ],
            ],
            SchedulerKind::DpmSolverMultistep => &[
                SPACING,
                SIGMA_OPTIONS,
                THRESHOLDING,
                &[
                    "rescale_betas_zero_snr",
                    "solver_order",
                    "algorithm_type",
                    "solver_type",
                    "lower_order_final",
                    "euler_at_final",
                    "use_lu_lambdas",
                    "use_flow_sigmas",
                    "flow_shift",
                    "final_sigmas_type",
                    "lambda_min_clipped",
                    "variance_type",
                ],
            ],
            SchedulerKind::Pndm => &[SPACING, &["skip_prk_steps", "set_alpha_to_one"]],
            SchedulerKind::Ddpm => &[
                SPACING,
                THRESHOLDING,
                &[
                    "rescale_betas_zero_snr",
                    "variance_type",
                    "clip_sample",
                    "clip_sample_range",
                ],
            ],
            SchedulerKind::Lcm | SchedulerKind::Tcd => &[
                SPACING,
                THRESHOLDING,
                &[
                    "rescale_betas_zero_snr",
                    "original_inference_steps",
                    "clip_sample",
                    "clip_sample_range",
                    "set_alpha_to_one",
                    "timestep_scaling",
                ],
            ],
            SchedulerKind::HeunDiscrete => &[
                SPACING,
                SIGMA_OPTIONS,
                &["clip_sample", "clip_sample_range"],
            ],
            SchedulerKind::KDpm2Discrete
            | SchedulerKind::KDpm2AncestralDiscrete
            | SchedulerKind::LmsDiscrete => &[SPACING, SIGMA_OPTIONS],
            SchedulerKind::UniPcMultistep => &[
                SPACING,
                SIGMA_OPTIONS,
                THRESHOLDING,
                &[
                    "rescale_betas_zero_snr",
                    "solver_order",
                    "predict_x0",
                    "solver_type",
                    "lower_order_final",
                    "disable_corrector",
                    "solver_p",
                    "use_flow_sigmas",
                    "flow_shift",
                    "final_sigmas_type",
                    "use_dynamic_shifting",
                    "time_shift_type",
                    "shift_terminal",
                ],
            ],
            SchedulerKind::DeisMultistep => &[
                SPACING,
                SIGMA_OPTIONS,
                THRESHOLDING,
                &[
                    "solver_order",
                    "algorithm_type",
                    "solver_type",
                    "lower_order_final",
                    "use_flow_sigmas",
                    "flow_shift",
                    "use_dynamic_shifting",
                    "time_shift_type",
                ],
            ],
            // No timestep_spacing / steps_offset / rescale_betas_zero_snr.
            SchedulerKind::DpmSolverSinglestep => &[
                SIGMA_OPTIONS,
                THRESHOLDING,
                &[
                    "solver_order",
                    "algorithm_type",
                    "solver_type",
                    "lower_order_final",
                    "use_flow_sigmas",
                    "flow_shift",
                    "final_sigmas_type",
                    "lambda_min_clipped",
                    "variance_type",
                    "use_dynamic_shifting",
                    "time_shift_type",
                ],
            ],
        };
        BETAS.contains(&key) || own.iter().any(|keys| keys.contains(&key))
    }

    /// Whether this class moves a zero-SNR schedule's final `alphas_cumprod` of 0 to float16's
    /// smallest subnormal (the schedulers that divide by it).
    pub(crate) fn clamps_zero_snr(self) -> bool {
        matches!(
            self,
            SchedulerKind::EulerDiscrete
                | SchedulerKind::EulerAncestralDiscrete
                | SchedulerKind::DpmSolverMultistep
                | SchedulerKind::UniPcMultistep
        )
    }
}

/// Declares a config option whose JSON value is one of a few strings.
macro_rules! string_option {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The value as diffusers spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            fn parse(key: &str, value: &Value) -> Result<Self> {
                match value.as_str() {
                    $(Some($text) => Ok($name::$variant),)+
                    _ => {
                        let names: &[&str] = &[$($text),+];
                        Err(bad_value(key, value, &format!("one of {}", names.join(", "))))
                    }
                }
            }
        }
    };
}

string_option!(
    /// How the training betas are laid out between `beta_start` and `beta_end`.
    BetaSchedule { Linear = "linear", ScaledLinear = "scaled_linear", SquaredCosCapV2 = "squaredcos_cap_v2" }
);
string_option!(
    /// What the denoising model predicts.
    PredictionType { Epsilon = "epsilon", VPrediction = "v_prediction", Sample = "sample" }
);
string_option!(
    /// How the inference timesteps are spread over the training range (Table 2 of
    /// "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    TimestepSpacing { Linspace = "linspace", Leading = "leading", Trailing = "trailing" }
);
string_option!(
    /// How EulerDiscrete finds sigmas between training timesteps.
    InterpolationType { Linear = "linear", LogLinear = "log_linear" }
);
string_option!(
    /// Whether EulerDiscrete hands the model discrete timesteps or `0.25 * ln(sigma)`
    /// (the latter only with v-prediction, as in diffusers).
    TimestepType { Discrete = "discrete", Continuous = "continuous" }
);
string_option!(
    /// The sigma EulerDiscrete ends on: 0, or the smallest training sigma.
    FinalSigmasType { Zero = "zero", SigmaMin = "sigma_min" }
);
string_option!(
    /// The DPM-Solver family's formulation: data prediction (`++`) or noise prediction, ODE or
    /// SDE. `deis` is what DEIS uses (DPMSolverMultistep reads it as `dpmsolver++`).
    AlgorithmType {
        DpmSolver = "dpmsolver",
        DpmSolverPlusPlus = "dpmsolver++",
        SdeDpmSolver = "sde-dpmsolver",
        SdeDpmSolverPlusPlus = "sde-dpmsolver++",
        Deis = "deis",
    }
);
string_option!(
    /// The multistep solvers' second-order rule. Each class maps the others' names onto its own
    /// (DPM-Solver reads `logrho`, `bh1`, `bh2` as `midpoint`), as diffusers does.
    SolverType { Midpoint = "midpoint", Heun = "heun", Logrho = "logrho", Bh1 = "bh1", Bh2 = "bh2" }
);
string_option!(
    /// DDPM's posterior variance, or the learned-variance layouts of the model output.
    VarianceType {
        FixedSmall = "fixed_small",
        FixedSmallLog = "fixed_small_log",
        FixedLarge = "fixed_large",
        FixedLargeLog = "fixed_large_log",
        Learned = "learned",
        LearnedRange = "learned_range",
    }
);

/// A scheduler configuration: the class and its options, with diffusers' defaults for the
/// options the file leaves out. Options a class does not take keep their defaults and are
/// ignored by that class, as in diffusers.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// diffusers' `_class_name`, e.g. `EulerDiscreteScheduler`; any name is read, only the
    /// supported ones build (see [`SchedulerKind`]).
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Betas given outright, one per training timestep; they replace `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    /// Added to `leading` timesteps (ignored by the other spacings, as in diffusers).
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    /// EulerDiscrete only.
    pub interpolation_type: InterpolationType,
    /// The sigma-based classes: Karras et al. (2022) sigmas, with timesteps mapped back.
    pub use_karras_sigmas: bool,
    /// The sigma-based classes: sigmas evenly spaced in log space.
    pub use_exponential_sigmas: bool,
    /// The sigma-based classes: sigmas at the quantiles of a Beta(0.6, 0.6) distribution.
    pub use_beta_sigmas: bool,
    /// Bounds for Karras / exponential / beta sigmas (default: the schedule's own). An
    /// `__init__` argument of EulerDiscrete and UniPC only, but the others read it from the
    /// config too.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_type: TimestepType,
    pub final_sigmas_type: FinalSigmasType,
    /// DDIM only: clamp the predicted clean sample to `±clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM only: the "previous" alpha product of the last step is 1 instead of `alphas_cumprod[0]`.
    pub set_alpha_to_one: bool,
    /// Dynamic thresholding of the predicted clean sample (DDIM, DDPM, LCM, the DPM-Solver
    /// family, UniPC, DEIS), with its quantile and ceiling.
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    /// Multistep solvers: how many past model outputs a step uses (1 to 3).
    pub solver_order: usize,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    /// Multistep solvers: lower orders on the last steps of short (< 15 step) schedules.
    pub lower_order_final: bool,
    /// DPMSolverMultistep: a first-order last step.
    pub euler_at_final: bool,
    /// DPMSolverMultistep: log-sigmas evenly spaced ("Lu lambdas").
    pub use_lu_lambdas: bool,
    /// DPMSolverMultistep: flow-matching sigmas, not implemented.
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    /// DPMSolverMultistep: the smallest lambda = log(alpha / sigma) the timesteps reach.
    pub lambda_min_clipped: f64,
    /// DPMSolverMultistep (`learned`/`learned_range`, not implemented) and DDPM.
    pub variance_type: Option<VarianceType>,
    /// PNDM: PLMS steps only, without the Runge-Kutta warm-up.
    pub skip_prk_steps: bool,
    /// LCM and TCD: the length of the schedule the model was distilled on.
    pub original_inference_steps: usize,
    /// LCM: the timestep's scale in the boundary-condition scalings.
    pub timestep_scaling: f64,
    /// UniPC: data prediction (true) or noise prediction.
    pub predict_x0: bool,
    /// UniPC: the step indices whose following corrector is skipped.
    pub disable_corrector: Vec<usize>,
    /// UniPC: another scheduler as predictor, not implemented (must be null).
    pub solver_p: Option<Value>,
    /// UniPC and DPM-Solver: flow-matching shifts, not implemented.
    pub use_dynamic_shifting: bool,
    pub shift_terminal: Option<f64>,
    /// The keys set by the file and by [`SchedulerConfig::with`]. Changing `_class_name`
    /// resolves the config again from these, so that the options left out take the new
    /// class's defaults, as diffusers' `NewClass.from_config(old.config)` does.
    given: Map<String, Value>,
}

/// The most training timesteps a config may claim. Every released model was trained with
/// 1000; the bound keeps a hostile config from sizing the schedule's arrays.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(value).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
    }

    /// The config from a JSON object, as found in `scheduler_config.json`.
    pub fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Object(map) => Self::resolve(map),
            other => Err(Error::Model(format!(
                "scheduler config is not a JSON object: {other}"
            ))),
        }
    }

    /// Overrides one field by its diffusers key (e.g. `("timestep_spacing", json!("trailing"))`),
    /// as SDXL-Lightning's pipeline does; `_class_name` switches the class. A key that no
    /// supported class takes is an error here (a typo in our own code), unlike in a file.
    /// Fields changed directly on the struct are kept, except across a class switch.
    pub fn with(mut self, key: &str, value: Value) -> Result<Self> {
        if key == "_class_name" {
            self.given.insert(key.to_string(), value);
            return Self::resolve(self.given);
        }
        if !SchedulerKind::ALL.iter().any(|k| k.takes(key)) {
            return Err(Error::Model(format!(
                "'{key}' is not a scheduler option tessera knows"
            )));
        }
        self.set(key, &value)?;
        self.given.insert(key.to_string(), value);
        Ok(self)
    }

    /// The class to build, once the options are checked: unsupported classes and options the
    /// class would use but tessera does not implement are `Error::Model`.
    pub fn kind(&self) -> Result<SchedulerKind> {
        let kind = SchedulerKind::from_class_name(&self.class_name)?;
        let unsupported = |what: &str| {
            Err(Error::Model(format!(
                "{}: {what} is not supported",
                self.class_name
            )))
        };
        if self.num_train_timesteps == 0 {
            return unsupported("num_train_timesteps = 0");
        }
        if self.num_train_timesteps > MAX_TRAIN_TIMESTEPS {
            // The schedule holds a few f64s per training step: 2^32 of them is 100 GB.
            return unsupported(&format!(
                "num_train_timesteps = {} (at most {MAX_TRAIN_TIMESTEPS})",
                self.num_train_timesteps
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != self.num_train_timesteps {
                return Err(Error::Model(format!(
                    "{}: trained_betas has {} values for num_train_timesteps = {}",
                    self.class_name,
                    betas.len(),
                    self.num_train_timesteps
                )));
            }
        }
        match kind {
            SchedulerKind::EulerDiscrete => {
                self.check_sigma_options()?;
                if self.interpolation_type == InterpolationType::LogLinear {
                    return unsupported("interpolation_type 'log_linear'");
                }
            }
            SchedulerKind::EulerAncestralDiscrete => {
                if self.prediction_type == PredictionType::Sample {
                    // diffusers raises NotImplementedError for it in `step`.
                    return unsupported("prediction_type 'sample'");
                }
            }
            SchedulerKind::Ddim => {}
            SchedulerKind::DpmSolverSinglestep => {
                if self.algorithm_type == AlgorithmType::SdeDpmSolver {
                    return unsupported("algorithm_type = 'sde-dpmsolver'");
                }
                if !(1..=3).contains(&self.solver_order) {
                    // diffusers: "Order > 3 is not supported by this scheduler".
                    return unsupported(&format!("solver_order = {}", self.solver_order));
                }
                self.check_dpm_options()?;
            }
            SchedulerKind::DpmSolverMultistep => {
                if self.solver_order == 0 {
                    return unsupported("solver_order = 0");
                }
                self.check_dpm_options()?;
            }
            SchedulerKind::Pndm => {
                if self.prediction_type == PredictionType::Sample {
                    return unsupported("prediction_type = 'sample'");
                }
            }
            SchedulerKind::Ddpm => {
                // `learned*` need a model that predicts its variance too (twice the channels);
                // diffusers' `fixed_large_log` takes the square root of a logarithm (NaN).
                if let Some(
                    v @ (VarianceType::Learned
                    | VarianceType::LearnedRange
                    | VarianceType::FixedLargeLog),
                ) = self.variance_type
                {
                    return unsupported(&format!("variance_type = '{}'", v.as_str()));
                }
            }
            SchedulerKind::Lcm => {}
            SchedulerKind::UniPcMultistep => {
                self.check_sigma_options()?;
                if self.use_flow_sigmas {
                    return unsupported("use_flow_sigmas = true");
                }
                if self.use_dynamic_shifting {
                    // diffusers' set_timesteps then needs a `mu` no SD pipeline passes.
                    return unsupported("use_dynamic_shifting = true");
                }
                if let Some(v) = self.shift_terminal {
                    return unsupported(&format!("shift_terminal = {v}"));
                }
                if let Some(v) = &self.solver_p {
                    return unsupported(&format!("solver_p = {v}"));
                }
                if self.solver_order == 0 {
                    return unsupported("solver_order = 0");
                }
            }
            SchedulerKind::DeisMultistep => {
                self.check_sigma_options()?;
                // diffusers reads dpmsolver / dpmsolver++ as deis and refuses the SDE ones.
                if matches!(
                    self.algorithm_type,
                    AlgorithmType::SdeDpmSolver | AlgorithmType::SdeDpmSolverPlusPlus
                ) {
                    return unsupported(&format!(
                        "algorithm_type = '{}'",
                        self.algorithm_type.as_str()
                    ));
                }
                if self.use_flow_sigmas {
                    return unsupported("use_flow_sigmas = true");
                }
                if self.solver_order == 0 {
                    return unsupported("solver_order = 0");
                }
            }
            // TCD's step reads neither thresholding nor clip_sample.
            SchedulerKind::Tcd => {}
            SchedulerKind::HeunDiscrete | SchedulerKind::LmsDiscrete => {
                self.check_sigma_options()?
            }
            SchedulerKind::KDpm2Discrete | SchedulerKind::KDpm2AncestralDiscrete => {
                self.check_sigma_options()?;
                if self.prediction_type == PredictionType::Sample {
                    // diffusers raises NotImplementedError for it in `step`.
                    return unsupported("prediction_type = 'sample'");
                }
            }
        }
        Ok(kind)
    }

    /// The options the DPM-Solver schedulers take but tessera does not implement, and the
    /// combination diffusers refuses.
    fn check_dpm_options(&self) -> Result<()> {
        let unsupported = |what: &str| {
            Err(Error::Model(format!(
                "{}: {what} is not supported",
                self.class_name
            )))
        };
        self.check_sigma_options()?;
        if self.use_flow_sigmas {
            return unsupported("use_flow_sigmas = true");
        }
        if self.solver_order == 0 {
            return unsupported("solver_order = 0");
        }
        // Only read for epsilon prediction: the model's extra variance channels are dropped.
        if let Some(v @ (VarianceType::Learned | VarianceType::LearnedRange)) = self.variance_type {
            if self.prediction_type == PredictionType::Epsilon {
                return unsupported(&format!("variance_type = '{}'", v.as_str()));
            }
        }
        // diffusers' own check: the noise-prediction forms cannot end on sigma 0.
        // (It looks at the value as written: `deis`, which it otherwise reads as
        // `dpmsolver++`, fails it too.)
        let algorithm = self.algorithm_type;
        if !matches!(
            algorithm,
            AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
        ) && self.final_sigmas_type == FinalSigmasType::Zero
        {
            return Err(Error::Model(format!(
                "{}: final_sigmas_type = 'zero' is not possible with algorithm_type = '{}' (diffusers refuses it too); use 'sigma_min'",
                self.class_name,
                algorithm.as_str()
            )));
        }
        Ok(())
    }

    /// At most one of the sigma respacings.
    fn check_sigma_options(&self) -> Result<()> {
        let on = [
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        ];
        if on.iter().filter(|&&on| on).count() > 1 {
            return Err(Error::Model(format!(
                "{}: use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas exclude each other",
                self.class_name
            )));
        }
        Ok(())
    }

    /// `(dynamic_thresholding_ratio, sample_max_value)` when thresholding is on.
    pub(crate) fn threshold_options(&self) -> Option<(f64, f64)> {
        self.thresholding
            .then_some((self.dynamic_thresholding_ratio, self.sample_max_value))
    }

    /// DPMSolverMultistep's algorithm: diffusers rewrites `deis` to `dpmsolver++`.
    pub(crate) fn dpm_algorithm(&self) -> AlgorithmType {
        match self.algorithm_type {
            AlgorithmType::Deis => AlgorithmType::DpmSolverPlusPlus,
            other => other,
        }
    }

    /// DPM-Solver's second-order rule: diffusers reads UniPC's and DEIS's names as midpoint.
    pub(crate) fn dpm_solver_type(&self) -> SolverType {
        match self.solver_type {
            SolverType::Heun => SolverType::Heun,
            _ => SolverType::Midpoint,
        }
    }

    fn resolve(given: Map<String, Value>) -> Result<Self> {
        let class_name = match given.get("_class_name") {
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(bad_value("_class_name", other, "a string")),
            None => return Err(Error::Model("scheduler config has no _class_name".into())),
        };
        let kind = SchedulerKind::from_class_name(&class_name).ok();
        let mut config = Self::defaults(class_name, kind);
        for (key, value) in &given {
            // A class ignores the keys it does not take; an unsupported class is only read
            // (building it fails), so read everything tessera knows.
            if kind.is_none_or(|k| k.takes(key)) {
                config.set(key, value)?;
            }
        }
        config.given = given;
        Ok(config)
    }

    /// diffusers' `__init__` defaults for `kind`. They agree across the three classes except
    /// for DDIM's timestep spacing, clipping and final alpha.
    fn defaults(class_name: String, kind: Option<SchedulerKind>) -> Self {
        let ddim = kind == Some(SchedulerKind::Ddim);
        let pndm = kind == Some(SchedulerKind::Pndm);
        let ddpm = kind == Some(SchedulerKind::Ddpm);
        let distilled = matches!(kind, Some(SchedulerKind::Lcm | SchedulerKind::Tcd));
        // Heun and KDPM2 default to Stable Diffusion's beta range (with a linear schedule).
        let sd_range = matches!(
            kind,
            Some(
                SchedulerKind::Lcm
                    | SchedulerKind::Tcd
                    | SchedulerKind::HeunDiscrete
                    | SchedulerKind::KDpm2Discrete
                    | SchedulerKind::KDpm2AncestralDiscrete
            )
        );
        SchedulerConfig {
            class_name,
            num_train_timesteps: 1000,
            beta_start: if sd_range { 0.00085 } else { 0.0001 },
            beta_end: if sd_range { 0.012 } else { 0.02 },
            beta_schedule: if distilled {
                BetaSchedule::ScaledLinear
            } else {
                BetaSchedule::Linear
            },
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: if ddim || pndm || ddpm || distilled {
                TimestepSpacing::Leading
            } else {
                TimestepSpacing::Linspace
            },
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_type: TimestepType::Discrete,
            final_sigmas_type: FinalSigmasType::Zero,
            clip_sample: ddim || ddpm || kind.is_none(),
            clip_sample_range: 1.0,
            set_alpha_to_one: !pndm,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            solver_order: 2,
            algorithm_type: if kind == Some(SchedulerKind::DeisMultistep) {
                AlgorithmType::Deis
            } else {
                AlgorithmType::DpmSolverPlusPlus
            },
            solver_type: match kind {
                Some(SchedulerKind::UniPcMultistep) => SolverType::Bh2,
                Some(SchedulerKind::DeisMultistep) => SolverType::Logrho,
                _ => SolverType::Midpoint,
            },
            lower_order_final: kind != Some(SchedulerKind::DpmSolverSinglestep),
            euler_at_final: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            skip_prk_steps: false,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            predict_x0: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_dynamic_shifting: false,
            shift_terminal: None,
            given: Map::new(),
        }
    }

    /// Sets the field for a diffusers key; unknown keys are left alone.
    fn set(&mut self, key: &str, value: &Value) -> Result<()> {
        match key {
            "num_train_timesteps" => self.num_train_timesteps = count(key, value)?,
            "beta_start" => self.beta_start = number(key, value)?,
            "beta_end" => self.beta_end = number(key, value)?,
            "beta_schedule" => self.beta_schedule = BetaSchedule::parse(key, value)?,
            "trained_betas" => self.trained_betas = optional(value, |v| numbers(key, v))?,
            "prediction_type" => self.prediction_type = PredictionType::parse(key, value)?,
            "timestep_spacing" => self.timestep_spacing = TimestepSpacing::parse(key, value)?,
            "steps_offset" => self.steps_offset = count(key, value)?,
            "rescale_betas_zero_snr" => self.rescale_betas_zero_snr = flag(key, value)?,
            "interpolation_type" => self.interpolation_type = InterpolationType::parse(key, value)?,
            "use_karras_sigmas" => self.use_karras_sigmas = flag(key, value)?,
            "use_exponential_sigmas" => self.use_exponential_sigmas = flag(key, value)?,
            "use_beta_sigmas" => self.use_beta_sigmas = flag(key, value)?,
            "sigma_min" => self.sigma_min = optional(value, |v| number(key, v))?,
            "sigma_max" => self.sigma_max = optional(value, |v| number(key, v))?,
            "timestep_type" => self.timestep_type = TimestepType::parse(key, value)?,
            "final_sigmas_type" => self.final_sigmas_type = FinalSigmasType::parse(key, value)?,
            "clip_sample" => self.clip_sample = flag(key, value)?,
            "clip_sample_range" => self.clip_sample_range = number(key, value)?,
            "set_alpha_to_one" => self.set_alpha_to_one = flag(key, value)?,
            "thresholding" => self.thresholding = flag(key, value)?,
            // Only read with thresholding: a null keeps the default.
            "dynamic_thresholding_ratio" => {
                if let Some(v) = optional(value, |v| number(key, v))? {
                    self.dynamic_thresholding_ratio = v;
                }
            }
            "sample_max_value" => {
                if let Some(v) = optional(value, |v| number(key, v))? {
                    self.sample_max_value = v;
                }
            }
            "solver_order" => self.solver_order = count(key, value)?,
            "algorithm_type" => self.algorithm_type = AlgorithmType::parse(key, value)?,
            "solver_type" => self.solver_type = SolverType::parse(key, value)?,
            "lower_order_final" => self.lower_order_final = flag(key, value)?,
            "euler_at_final" => self.euler_at_final = flag(key, value)?,
            "use_lu_lambdas" => self.use_lu_lambdas = flag(key, value)?,
            "use_flow_sigmas" => self.use_flow_sigmas = flag(key, value)?,
            "flow_shift" => self.flow_shift = number(key, value)?,
            "lambda_min_clipped" => self.lambda_min_clipped = extended_number(key, value)?,
            "variance_type" => {
                self.variance_type = optional(value, |v| VarianceType::parse(key, v))?
            }
            "skip_prk_steps" => self.skip_prk_steps = flag(key, value)?,
            "original_inference_steps" => self.original_inference_steps = count(key, value)?,
            "timestep_scaling" => self.timestep_scaling = number(key, value)?,
            "predict_x0" => self.predict_x0 = flag(key, value)?,
            "disable_corrector" => {
                let none = Vec::new();
                let items = match value {
                    Value::Null => &none,
                    v => v
                        .as_array()
                        .ok_or_else(|| bad_value(key, value, "a list of step indices"))?,
                };
                self.disable_corrector =
                    items.iter().map(|v| count(key, v)).collect::<Result<_>>()?;
            }
            "solver_p" => self.solver_p = optional(value, |v| Ok(v.clone()))?,
            "use_dynamic_shifting" => self.use_dynamic_shifting = flag(key, value)?,
            "shift_terminal" => self.shift_terminal = optional(value, |v| number(key, v))?,
            _ => {}
        }
        Ok(())
    }
}

fn bad_value(key: &str, value: &Value, expected: &str) -> Error {
    Error::Model(format!(
        "scheduler config: {key} = {value} is not {expected}"
    ))
}

fn number(key: &str, value: &Value) -> Result<f64> {
    value
        .as_f64()
        .ok_or_else(|| bad_value(key, value, "a number"))
}

/// A number, or Python's non-finite floats as strings (`"-Infinity"`, `"Infinity"`, `"NaN"`),
/// the form a JSON reader that keeps Python's `-Infinity` can hand them over in.
fn extended_number(key: &str, value: &Value) -> Result<f64> {
    match value.as_str() {
        Some("-Infinity") => Ok(f64::NEG_INFINITY),
        Some("Infinity") => Ok(f64::INFINITY),
        Some("NaN") => Ok(f64::NAN),
        _ => number(key, value),
    }
}

fn count(key: &str, value: &Value) -> Result<usize> {
    value
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| bad_value(key, value, "a non-negative integer"))
}

/// A boolean; `null` reads as false, as Python's `if None:` does.
fn flag(key: &str, value: &Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        _ => Err(bad_value(key, value, "true or false")),
    }
}

fn numbers(key: &str, value: &Value) -> Result<Vec<f64>> {
    let items = value
        .as_array()
        .ok_or_else(|| bad_value(key, value, "a list of numbers"))?;
    items.iter().map(|v| number(key, v)).collect()
}

fn optional<T>(value: &Value, parse: impl FnOnce(&Value) -> Result<T>) -> Result<Option<T>> {
    match value {
        Value::Null => Ok(None),
        v => parse(v).map(Some),
    }
}
