//! The uploaded image, decoded defensively: its size is read from the header and checked
//! before any pixel is decoded (a decompression bomb is refused in milliseconds), then the
//! engine decodes it as Pillow's `Image.open(..).convert("RGB")` does, which is what ai-runner
//! (v0.14.1, `routes/image_to_image.py`) hands diffusers: alpha is dropped, not composited,
//! and the EXIF orientation is not applied (a phone photo is edited the way it is stored).

use tessera_engine::image_io::{self, RgbImage};

/// Decodes `bytes` to RGB, refusing images wider or taller than `max_side`. Errors say what
/// is wrong with the image, in the client's terms.
pub fn decode_upload(bytes: &[u8], max_side: u32) -> Result<RgbImage, String> {
    image_io::decode_within(bytes, max_side).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

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
    fn the_exif_orientation_is_left_as_ai_runner_leaves_it() {
        // A 96x64 JPEG tagged "rotate 90° to view" (orientation 6): decoded as stored.
        let path = tessera_testkit::fixtures_dir().join("jpeg/corpus/wide_exif_rotate_6.jpg");
        let bytes = std::fs::read(path).unwrap();
        let img = decode_upload(&bytes, 4096).unwrap();
        assert_eq!((img.width, img.height), (96, 64));
        assert_eq!(img, image_io::decode(&bytes).unwrap());
    }

    #[test]
    fn jpegs_the_image_crate_cannot_read_are_accepted_as_pillow_accepts_them() {
        // Arithmetic coding: Pillow's libjpeg-turbo decodes it, zune-jpeg does not.
        let path = tessera_testkit::fixtures_dir().join("jpeg/corpus/odd_arithmetic.jpg");
        let bytes = std::fs::read(path).unwrap();
        let img = decode_upload(&bytes, 4096).unwrap();
        assert_eq!((img.width, img.height), (83, 70));
        assert_eq!(
            decode_upload(&bytes, 80).unwrap_err(),
            "image is 83x70; the largest accepted is 80x80"
        );
    }
}
