//! The NSFW safety checker (diffusers' `StableDiffusionSafetyChecker`): not written yet
//! (issue 6).
