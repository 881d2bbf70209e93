//! Bounds ai-runner does not have. Past them a request would only tie a worker up or exhaust
//! memory, so every role refuses it up front with a 400 (413 for the body) that names the
//! bound: the runner checks all of them, the orchestrator and the gateway the body size and
//! the image header, so that what they let through a runner with the same limits accepts.

/// Room in a request body for the form's text fields around the image (prompts of 10 000
/// characters are 40 KB of UTF-8 at most).
pub const FORM_OVERHEAD_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest `image` upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest width or height of the decoded image, checked from its header.
    pub max_image_side: u32,
    pub max_images_per_prompt: u32,
    pub max_inference_steps: u32,
    /// In characters, for `prompt` and `negative_prompt` alike (longer than CLIP's 77 tokens
    /// is fine: the tokenizer truncates, as diffusers does).
    pub max_prompt_chars: usize,
}

impl Limits {
    /// The largest request body read: the upload (as base64, the larger of the ways a
    /// request carries it: JSON requests send it so) and the form around it. Past it, 413.
    pub fn max_body_bytes(&self) -> usize {
        self.max_upload_bytes
            .div_ceil(3)
            .saturating_mul(4)
            .saturating_add(FORM_OVERHEAD_BYTES)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 * 1024 * 1024,
            max_image_side: 4096,
            max_images_per_prompt: 10,
            max_inference_steps: 500,
            max_prompt_chars: 10_000,
        }
    }
}
