//! The safety checker's input: transformers' `CLIPImageProcessor` (its Pillow backend, the
//! one callers holding PIL images such as ai-runner go through), driven by the checker's
//! `preprocessor_config.json`.
//!
//! Per image: resize the uint8 image with Pillow (shortest edge to `size`, or to a fixed
//! height x width), center-crop to `crop_size` (numpy's crop, which pads with zeros when
//! the crop is larger than the image), rescale (`uint8 as f64 * factor`, stored as f32)
//! and normalise (`(x - mean) / std` in f32). Every step and value comes from the config;
//! a key it leaves out takes `CLIPImageProcessor`'s class default.
//!
//! ai-runner does not read the checker folder's `preprocessor_config.json`: it builds its
//! processor with `CLIPImageProcessor.from_pretrained("openai/clip-vit-base-patch32")`.
//! The two agree on every value this processor uses: shortest edge 224, bicubic
//! (`resample: 3`), a 224x224 center crop, rescale by 1/255 and OpenAI's CLIP mean / std
//! (`[0.48145466, 0.4578275, 0.40821073]` / `[0.26862954, 0.26130258, 0.27577711]`).
//! Checked against public copies: openai/clip-vit-base-patch32's processor as transformers
//! loads it (`size: {shortest_edge: 224}`, `crop_size: 224x224`, `resample: 3`,
//! `rescale_factor: 1/255`, those mean / std), and the Stable Diffusion v1 feature extractor
//! that ships next to the CompVis checker (stable-diffusion-v1-5 `feature_extractor/`:
//! integer `size: 224`, `crop_size: 224`, `resample: 3`, the same mean / std). The CompVis
//! repository's own file could not be read here; its known form is that same legacy
//! CLIPFeatureExtractor config. Reading the folder's file therefore gives ai-runner's
//! numbers, and a checker folder with a different processor is honoured as diffusers would.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{read_json, Error, Result};
use crate::image_io::{resize, Filter, RgbImage};

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`, `CLIPImageProcessor`'s defaults.
const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `CLIPImageProcessor`'s default `size` (shortest edge) and `crop_size` (square).
const DEFAULT_SIZE: u32 = 224;
/// Pillow's filter numbers (`PIL.Image.Resampling`) for the filters `image_io` reproduces.
const PIL_LANCZOS: u8 = 1;
const PIL_BICUBIC: u8 = 3;

/// `size` as configs write it: a bare number (the old feature-extractor form, which CLIP
/// reads as the shortest edge) or a dict.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Edge(u32),
    Dict {
        shortest_edge: Option<u32>,
        longest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

/// `crop_size`: a bare number means a square.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CropSpec {
    Square(u32),
    Dict { height: u32, width: u32 },
}

/// `image_mean` / `image_std`: one value for every channel, or one per channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ChannelValues {
    All(f64),
    PerChannel(Vec<f64>),
}

/// The keys of `preprocessor_config.json` the processor reads. `do_convert_rgb` is not
/// among them: [`RgbImage`]s are RGB already.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default)]
    size: Option<SizeSpec>,
    #[serde(default)]
    resample: Option<u8>,
    #[serde(default = "yes")]
    do_center_crop: bool,
    #[serde(default)]
    crop_size: Option<CropSpec>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "default_rescale_factor")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default)]
    image_mean: Option<ChannelValues>,
    #[serde(default)]
    image_std: Option<ChannelValues>,
}

fn yes() -> bool {
    true
}

fn default_rescale_factor() -> f64 {
    1.0 / 255.0
}

/// How the image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side becomes this long, the other keeps the aspect ratio (rounded down).
    ShortestEdge(u32),
    /// Exactly this size.
    Exact { height: u32, width: u32 },
}

/// A validated `CLIPImageProcessor` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub resize: Option<(Resize, Filter)>,
    /// (height, width) of the center crop.
    pub crop: Option<(u32, u32)>,
    pub rescale_factor: Option<f64>,
    /// Per-channel mean and std, as the f32 values numpy computes with.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawConfig = read_json(path)?;
        Self::from_raw(raw).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
    }

    fn from_raw(raw: RawConfig) -> std::result::Result<Self, String> {
        let resize = if raw.do_resize {
            Some((resize_rule(raw.size)?, filter(raw.resample)?))
        } else {
            None
        };
        let crop = if raw.do_center_crop {
            let (height, width) = match raw.crop_size {
                None => (DEFAULT_SIZE, DEFAULT_SIZE),
                Some(CropSpec::Square(s)) => (s, s),
                Some(CropSpec::Dict { height, width }) => (height, width),
            };
            positive("crop_size", &[height, width])?;
            Some((height, width))
        } else {
            None
        };
        let rescale_factor = raw.do_rescale.then_some(raw.rescale_factor);
        if rescale_factor.is_some_and(|f| !f.is_finite()) {
            return Err(format!(
                "rescale_factor {} is not finite",
                raw.rescale_factor
            ));
        }
        let normalize = if raw.do_normalize {
            let mean = channels("image_mean", raw.image_mean, OPENAI_CLIP_MEAN)?;
            let std = channels("image_std", raw.image_std, OPENAI_CLIP_STD)?;
            if std.contains(&0.0) {
                return Err(format!("image_std {std:?} holds a zero"));
            }
            Some((mean, std))
        } else {
            None
        };
        Ok(Self {
            resize,
            crop,
            rescale_factor,
            normalize,
        })
    }

    /// One image to the model's input: a `[3, h, w]` f32 tensor on the CPU, as the
    /// processor's `pixel_values` hold it.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let want = img.width as usize * img.height as usize * 3;
        if img.width == 0 || img.height == 0 || img.data.len() != want {
            return Err(Error::InvalidInput(format!(
                "the safety checker needs a non-empty RGB image; got {}x{} with {} bytes",
                img.width,
                img.height,
                img.data.len()
            )));
        }
        let resized;
        let img = match self.resize {
            Some((rule, filter)) => {
                let (h, w) = resized_size(rule, img.width, img.height);
                resized = resize(img, w, h, filter);
                &resized
            }
            None => img,
        };
        let (h, w) = self.crop.unwrap_or((img.height, img.width));
        // The crop window's top-left corner in the image, floor-divided as numpy's
        // center_crop computes it; negative when the crop is larger (zero padding).
        let (top, left) = match self.crop {
            Some((ch, cw)) => (
                (i64::from(img.height) - i64::from(ch)).div_euclid(2),
                (i64::from(img.width) - i64::from(cw)).div_euclid(2),
            ),
            None => (0, 0),
        };
        let plane = h as usize * w as usize;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..h as usize {
            for x in 0..w as usize {
                let (sy, sx) = (y as i64 + top, x as i64 + left);
                let inside = (0..i64::from(img.height)).contains(&sy)
                    && (0..i64::from(img.width)).contains(&sx);
                let px = if inside {
                    let i = (sy as usize * img.width as usize + sx as usize) * 3;
                    [img.data[i], img.data[i + 1], img.data[i + 2]]
                } else {
                    [0; 3]
                };
                for (c, &v) in px.iter().enumerate() {
                    out[c * plane + y * w as usize + x] = self.value(v, c);
                }
            }
        }
        Ok(Tensor::from_vec(
            out,
            (3, h as usize, w as usize),
            &Device::Cpu,
        )?)
    }

    /// One byte through rescale and normalise, rounding where numpy rounds: the rescale
    /// multiplies in f64 and stores f32; the normalisation runs in f32.
    fn value(&self, v: u8, channel: usize) -> f32 {
        let x = match self.rescale_factor {
            Some(factor) => (f64::from(v) * factor) as f32,
            None => f32::from(v),
        };
        match &self.normalize {
            Some((mean, std)) => (x - mean[channel]) / std[channel],
            None => x,
        }
    }
}

fn resize_rule(size: Option<SizeSpec>) -> std::result::Result<Resize, String> {
    let rule = match size {
        None => Resize::ShortestEdge(DEFAULT_SIZE),
        Some(SizeSpec::Edge(s)) => Resize::ShortestEdge(s),
        Some(SizeSpec::Dict {
            shortest_edge: Some(s),
            longest_edge: None,
            ..
        }) => Resize::ShortestEdge(s),
        Some(SizeSpec::Dict {
            shortest_edge: None,
            longest_edge: None,
            height: Some(height),
            width: Some(width),
        }) => Resize::Exact { height, width },
        Some(other) => {
            return Err(format!(
                "size {other:?} is not supported: expected a number, {{\"shortest_edge\": N}} \
                 or {{\"height\": H, \"width\": W}}"
            ))
        }
    };
    match rule {
        Resize::ShortestEdge(s) => positive("size", &[s])?,
        Resize::Exact { height, width } => positive("size", &[height, width])?,
    }
    Ok(rule)
}

/// The Pillow filter `resample` names; absent means bicubic, `CLIPImageProcessor`'s default.
fn filter(resample: Option<u8>) -> std::result::Result<Filter, String> {
    match resample.unwrap_or(PIL_BICUBIC) {
        PIL_BICUBIC => Ok(Filter::Bicubic),
        PIL_LANCZOS => Ok(Filter::Lanczos),
        other => Err(format!(
            "resample {other} is not supported (3 = bicubic and 1 = Lanczos are)"
        )),
    }
}

fn positive(key: &str, values: &[u32]) -> std::result::Result<(), String> {
    if values.contains(&0) {
        return Err(format!("{key} must be at least 1, got {values:?}"));
    }
    Ok(())
}

fn channels(
    key: &str,
    values: Option<ChannelValues>,
    default: [f64; 3],
) -> std::result::Result<[f32; 3], String> {
    let values = match values {
        None => default,
        Some(ChannelValues::All(v)) => [v; 3],
        Some(ChannelValues::PerChannel(v)) => <[f64; 3]>::try_from(v.as_slice())
            .map_err(|_| format!("{key} needs 3 values (one per channel), got {}", v.len()))?,
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format!("{key} {values:?} is not finite"));
    }
    Ok(values.map(|v| v as f32))
}

/// The (height, width) a `width` x `height` image is resized to. For the shortest edge,
/// the longer side is `size * long / short` rounded down, as transformers'
/// `get_resize_output_image_size` computes it (its float division cannot round an exact
/// quotient of such small integers across an integer, so integer division agrees).
fn resized_size(rule: Resize, width: u32, height: u32) -> (u32, u32) {
    match rule {
        Resize::Exact { height, width } => (height, width),
        Resize::ShortestEdge(size) => {
            let (short, long) = (width.min(height), width.max(height));
            let new_long = (u64::from(size) * u64::from(long) / u64::from(short)) as u32;
            if width <= height {
                (new_long, size)
            } else {
                (size, new_long)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<ImageProcessor, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        ImageProcessor::from_raw(raw)
    }

    #[test]
    fn missing_keys_take_clip_defaults() {
        let p = parse("{}").unwrap();
        assert_eq!(p.resize, Some((Resize::ShortestEdge(224), Filter::Bicubic)));
        assert_eq!(p.crop, Some((224, 224)));
        assert_eq!(p.rescale_factor, Some(1.0 / 255.0));
        let (mean, std) = p.normalize.unwrap();
        // transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, as numpy's f32.
        assert_eq!(
            mean,
            [0.48145466f64, 0.4578275, 0.40821073].map(|v| v as f32)
        );
        assert_eq!(
            std,
            [0.26862954f64, 0.26130258, 0.27577711].map(|v| v as f32)
        );
    }

    #[test]
    fn legacy_integer_sizes() {
        let p = parse(r#"{"size": 224, "crop_size": 200}"#).unwrap();
        assert_eq!(p.resize.unwrap().0, Resize::ShortestEdge(224));
        assert_eq!(p.crop, Some((200, 200)));
    }

    #[test]
    fn shortest_edge_keeps_aspect_rounding_down() {
        let rule = Resize::ShortestEdge(32);
        assert_eq!(resized_size(rule, 83, 70), (32, 37)); // 32 * 83 / 70 = 37.94
        assert_eq!(resized_size(rule, 64, 96), (48, 32));
        assert_eq!(resized_size(rule, 5, 5), (32, 32));
    }

    #[test]
    fn unsupported_configs_are_refused() {
        for (json, needle) in [
            (r#"{"resample": 2}"#, "resample 2"),
            (
                r#"{"size": {"shortest_edge": 10, "longest_edge": 20}}"#,
                "not supported",
            ),
            (r#"{"size": 0}"#, "size must be at least 1"),
            (r#"{"crop_size": {"height": 0, "width": 3}}"#, "crop_size"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean needs 3 values"),
            (r#"{"image_std": 0.0}"#, "image_std"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn empty_or_inconsistent_images_are_refused() {
        let p = parse("{}").unwrap();
        for img in [
            RgbImage {
                width: 0,
                height: 4,
                data: vec![],
            },
            RgbImage {
                width: 2,
                height: 2,
                data: vec![0; 5],
            },
        ] {
            let e = p.preprocess(&img).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        }
    }
}
