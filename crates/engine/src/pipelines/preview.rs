//! Previews of an image being denoised, cheap enough for every few steps: each latent pixel
//! mapped to RGB by a fixed linear map instead of the VAE decoder (thousands of times less
//! work; the colours and layout are right, the detail is the latents' 1/8 resolution).
//! The factors are the least-squares fits the community measured for SD 1.x/2.x and SDXL
//! latents (as A1111 and ComfyUI preview with); latents of another channel count have no
//! preview.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::image_io::RgbImage;

/// RGB in [-1, 1] = latent channels · `factors` + `bias`, per latent pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentRgb {
    /// One row of (R, G, B) weights per latent channel.
    pub factors: [[f32; 3]; 4],
    pub bias: [f32; 3],
}

impl LatentRgb {
    /// SD 1.x / 2.x latents (scaled by 0.18215), instruct-pix2pix's too.
    pub const SD: Self = Self {
        factors: [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ],
        bias: [0.0; 3],
    };

    /// SDXL latents (scaled by 0.13025).
    pub const SDXL: Self = Self {
        factors: [
            [0.3920, 0.4054, 0.4549],
            [-0.2634, -0.0196, 0.0653],
            [0.0568, 0.1687, -0.0755],
            [-0.3112, -0.2359, -0.2076],
        ],
        bias: [0.0; 3],
    };

    /// The preview of the first image of `latents` (N, 4, h, w): an h×w RGB image.
    pub fn to_rgb(&self, latents: &Tensor) -> Result<RgbImage> {
        let (_, channels, h, w) = latents.dims4()?;
        if channels != self.factors.len() {
            return Err(Error::InvalidInput(format!(
                "a latent preview maps 4 channels, these latents have {channels}"
            )));
        }
        let first = latents
            .narrow(0, 0, 1)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .flatten_from(1)?
            .to_vec2::<f32>()?;
        let mut data = Vec::with_capacity(h * w * 3);
        for pixel in 0..h * w {
            for (c, bias) in self.bias.iter().enumerate() {
                let v = bias
                    + first
                        .iter()
                        .zip(&self.factors)
                        .map(|(channel, row)| channel[pixel] * row[c])
                        .sum::<f32>();
                data.push((((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        Ok(RgbImage {
            width: w as u32,
            height: h as u32,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn each_latent_pixel_becomes_one_rgb_pixel() {
        // A 1x4x1x2 latent: the first pixel's channel 0 at 1, the second pixel all zero.
        let latents = Tensor::from_vec(
            vec![1f32, 0., 0., 0., 0., 0., 0., 0.],
            (1, 4, 1, 2),
            &Device::Cpu,
        )
        .unwrap();
        let rgb = LatentRgb::SD.to_rgb(&latents).unwrap();
        assert_eq!((rgb.width, rgb.height), (2, 1));
        let level = |v: f32| (((v + 1.0) / 2.0) * 255.0).round() as u8;
        assert_eq!(
            &rgb.data[..3],
            &[level(0.3512), level(0.2297), level(0.3227)]
        );
        assert_eq!(&rgb.data[3..], &[128, 128, 128]);
        let three = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(LatentRgb::SDXL.to_rgb(&three).is_err());
    }
}
