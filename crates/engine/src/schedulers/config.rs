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
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 3] = [
        SchedulerKind::EulerDiscrete,
        SchedulerKind::EulerAncestralDiscrete,
        SchedulerKind::Ddim,
    ];

    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
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

    /// The config keys this class's `__init__` takes (among those tessera models): diffusers
    /// ignores the others, even when they are set.
    fn takes(self, key: &str) -> bool {
        const COMMON: &[&str] = &[
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "trained_betas",
            "prediction_type",
            "timestep_spacing",
            "steps_offset",
            "rescale_betas_zero_snr",
        ];
        const EULER: &[&str] = &[
            "interpolation_type",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "sigma_min",
            "sigma_max",
            "timestep_type",
            "final_sigmas_type",
        ];
        const DDIM: &[&str] = &[
            "clip_sample",
            "clip_sample_range",
            "set_alpha_to_one",
            "thresholding",
        ];
        COMMON.contains(&key)
            || match self {
                SchedulerKind::EulerDiscrete => EULER.contains(&key),
                SchedulerKind::EulerAncestralDiscrete => false,
                SchedulerKind::Ddim => DDIM.contains(&key),
            }
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
    /// EulerDiscrete only: Karras et al. (2022) sigmas, with timesteps interpolated back.
    pub use_karras_sigmas: bool,
    /// EulerDiscrete only: sigmas evenly spaced in log space.
    pub use_exponential_sigmas: bool,
    /// EulerDiscrete only: not implemented (it needs the beta distribution's quantiles).
    pub use_beta_sigmas: bool,
    /// EulerDiscrete only: bounds for Karras / exponential sigmas (default: the schedule's own).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_type: TimestepType,
    pub final_sigmas_type: FinalSigmasType,
    /// DDIM only: clamp the predicted clean sample to `±clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM only: the "previous" alpha product of the last step is 1 instead of `alphas_cumprod[0]`.
    pub set_alpha_to_one: bool,
    /// DDIM only: dynamic thresholding, not implemented.
    pub thresholding: bool,
    /// The keys set by the file and by [`SchedulerConfig::with`]. Changing `_class_name`
    /// resolves the config again from these, so that the options left out take the new
    /// class's defaults, as diffusers' `NewClass.from_config(old.config)` does.
    given: Map<String, Value>,
}

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
                let sigma_options = [
                    self.use_karras_sigmas,
                    self.use_exponential_sigmas,
                    self.use_beta_sigmas,
                ];
                if sigma_options.iter().filter(|&&on| on).count() > 1 {
                    return Err(Error::Model(format!(
                        "{}: use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas exclude each other",
                        self.class_name
                    )));
                }
                if self.use_beta_sigmas {
                    return unsupported("use_beta_sigmas");
                }
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
            SchedulerKind::Ddim => {
                if self.thresholding {
                    return unsupported("thresholding");
                }
            }
        }
        Ok(kind)
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
        SchedulerConfig {
            class_name,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: if ddim {
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
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            thresholding: false,
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
