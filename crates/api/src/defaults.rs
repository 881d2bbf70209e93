//! ai-runner's defaults for what a request leaves out, and the names it serves under. Every
//! role, the engine's `EditParams::default()` and the CLI take them from here.

/// The model ai-runner's image-to-image container serves warm, and the one a request with
/// an empty `model_id` gets.
pub const MODEL_ID: &str = "timbrooks/instruct-pix2pix";

/// The one pipeline tessera serves (ai-runner's `PIPELINE` value for it).
pub const PIPELINE: &str = "image-to-image";

/// ai-runner's port (and `tessera serve`'s).
pub const PORT: u16 = 8000;

pub const NUM_INFERENCE_STEPS: u32 = 100;
pub const GUIDANCE_SCALE: f64 = 7.5;
pub const IMAGE_GUIDANCE_SCALE: f64 = 1.5;
pub const STRENGTH: f64 = 0.8;
pub const NUM_IMAGES_PER_PROMPT: u32 = 1;
pub const SAFETY_CHECK: bool = true;
