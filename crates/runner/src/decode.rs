//! The uploaded image, decoded defensively: its size is read from the header and checked
//! before any pixel is decoded (a decompression bomb is refused in milliseconds), then the
//! engine decodes it as Pillow's `Image.open(..).convert("RGB")` does (what ai-runner runs:
//! alpha is dropped, not composited, so that results match ai-runner's), and the EXIF
//! orientation is applied so that a phone photo is edited the way up it is shown.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};
use tessera_engine::image_io::{self, RgbImage};

/// Decodes `bytes` to RGB, refusing images wider or taller than `max_side`. Errors say what
/// is wrong with the image, in the client's terms.
pub fn decode_upload(bytes: &[u8], max_side: u32) -> Result<RgbImage, String> {
    let Ok(format) = image::guess_format(bytes) else {
        return Err("not an image: the data is not a recognised image format \
                    (PNG, JPEG, WebP, GIF, BMP or TIFF)"
            .into());
    };
    let decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(|e| format!("cannot read the image header: {e}"))?;
    let (width, height) = decoder.dimensions();
    if width > max_side || height > max_side {
        return Err(format!(
            "image is {width}x{height}; the largest accepted is {max_side}x{max_side}"
        ));
    }
    let orientation = orientation(decoder);
    let rgb = image_io::decode(bytes).map_err(|e| e.to_string())?;
    Ok(orient(rgb, orientation))
}

/// The EXIF orientation, when the file has one; unreadable metadata counts as none, as
/// viewers treat it.
fn orientation(mut decoder: impl ImageDecoder) -> Orientation {
    decoder.orientation().unwrap_or(Orientation::NoTransforms)
}

fn orient(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }
    let Some(buffer) = image::RgbImage::from_raw(rgb.width, rgb.height, rgb.data.clone()) else {
        // The engine's decode always returns width * height pixels.
        return rgb;
    };
    let mut image = DynamicImage::ImageRgb8(buffer);
    image.apply_orientation(orientation);
    let oriented = image.into_rgb8();
    RgbImage {
        width: oriented.width(),
        height: oriented.height(),
        data: oriented.into_raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn the_side_limit_is_checked_from_the_header() {
        let err = decode_upload(&png(40, 20), 32).unwrap_err();
        assert_eq!(err, "image is 40x20; the largest accepted is 32x32");
        let ok = decode_upload(&png(32, 20), 32).unwrap();
        assert_eq!((ok.width, ok.height), (32, 20));
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 2x1 JPEG-free check: orient() on a known buffer, rotation by 90 degrees.
        let rgb = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 1, 1, 2, 2, 2],
        };
        let turned = orient(rgb, Orientation::Rotate90);
        assert_eq!((turned.width, turned.height), (1, 2));
        assert_eq!(turned.data, vec![1, 1, 1, 2, 2, 2]);
        let rgb = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 1, 1, 2, 2, 2],
        };
        let flipped = orient(rgb, Orientation::FlipHorizontal);
        assert_eq!(flipped.data, vec![2, 2, 2, 1, 1, 1]);
    }
}
