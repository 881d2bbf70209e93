//! tessera's diffusion engine: model loading, text encoders, UNet, VAE, schedulers,
//! pipelines and noise, computing what HuggingFace diffusers computes. No HTTP, no async.

pub mod clip;
pub mod error;
pub mod hub;
pub mod noise;
pub mod schedulers;
pub mod tokenizer;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};
pub mod device;
pub mod editor;
pub mod image_io;
pub mod lora;
pub mod models;
pub mod ops;
pub mod pipelines;
pub mod safety;
pub mod unet;
