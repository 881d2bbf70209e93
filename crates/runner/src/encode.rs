//! The model's images in the file format a request asked for (`output_format`): PNG as
//! ai-runner writes it, JPEG at the asked quality (the `image` crate), and lossy WebP
//! through libwebp (the `webp` crate: the `image` crate writes only lossless WebP).

use image::codecs::jpeg::JpegEncoder;
use tessera_api::{ImageFormat, OutputFormat};
use tessera_engine::image_io::{self, RgbImage};

/// `image` as a file of `output`'s format; an error says what failed.
pub fn encode(image: &RgbImage, output: OutputFormat) -> Result<Vec<u8>, String> {
    match output.format {
        ImageFormat::Png => image_io::encode_png(image).map_err(|e| e.to_string()),
        ImageFormat::Jpeg => {
            let mut out = Vec::new();
            JpegEncoder::new_with_quality(&mut out, output.quality)
                .encode(
                    &image.data,
                    image.width,
                    image.height,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| format!("JPEG encoding: {e}"))?;
            Ok(out)
        }
        ImageFormat::Webp => webp::Encoder::from_rgb(&image.data, image.width, image.height)
            .encode_simple(false, f32::from(output.quality))
            .map(|memory| memory.to_vec())
            .map_err(|e| format!("WebP encoding: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        let (width, height) = (24u32, 16u32);
        let data = (0..width * height)
            .flat_map(|i| [(i % width * 10) as u8, (i / width * 15) as u8, 77])
            .collect();
        RgbImage {
            width,
            height,
            data,
        }
    }

    #[test]
    fn each_format_decodes_as_itself_at_the_right_size() {
        let rgb = gradient();
        for (format, expected) in [
            (ImageFormat::Png, image::ImageFormat::Png),
            (ImageFormat::Jpeg, image::ImageFormat::Jpeg),
            (ImageFormat::Webp, image::ImageFormat::WebP),
        ] {
            let bytes = encode(
                &rgb,
                OutputFormat {
                    format,
                    quality: 80,
                },
            )
            .unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), expected, "{format:?}");
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (24, 16), "{format:?}");
        }
    }

    #[test]
    fn quality_trades_size_for_fidelity() {
        let rgb = gradient();
        for format in [ImageFormat::Jpeg, ImageFormat::Webp] {
            let low = encode(&rgb, OutputFormat { format, quality: 5 }).unwrap();
            let high = encode(
                &rgb,
                OutputFormat {
                    format,
                    quality: 100,
                },
            )
            .unwrap();
            assert!(
                low.len() < high.len(),
                "{format:?}: {} vs {}",
                low.len(),
                high.len()
            );
        }
    }
}
