//! JPEG decoding as Pillow decodes it, bit for bit: through libjpeg-turbo's own decoder
//! (the `mozjpeg` crate builds it from C), with Pillow's settings — libjpeg's defaults (ISLOW
//! IDCT, fancy upsampling), output colour space RGB, grey or CMYK by the number of components
//! — and Pillow's conversions afterwards (grey replicated, CMYK read with Adobe's inverted
//! polarity and turned to RGB by Pillow's formula). tests/fixtures/jpeg holds the corpus that
//! proves it against Pillow 13's wheel (libjpeg-turbo 3.2 with its SIMD code).
//!
//! mozjpeg-sys builds libjpeg-turbo's x86 SIMD code when `nasm` is installed, else its C
//! code. On valid files the two give the same pixels (the corpus passes with either build).
//! Damaged entropy-coded data ("Corrupt JPEG data", which libjpeg decodes past, as Pillow
//! does) can leave DCT coefficients outside the 16-bit range of the SIMD IDCT, and there the
//! paths differ: the SIMD build then matches Pillow on x86 (Pillow's wheels use SIMD), the C
//! build matches libjpeg-turbo's C path.
//!
//! libjpeg reports a fatal error by calling `error_exit`, whose default ends the process; the
//! crate's handler unwinds instead, and [`decode`] catches that unwinding and returns the
//! message as an error. That needs unwinding panics, hence the check below.

use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, Decompress};

use super::{check_side, RgbImage};
use crate::error::{Error, Result};

#[cfg(panic = "abort")]
compile_error!(
    "tessera-engine's JPEG decoder turns libjpeg's fatal errors into Results by unwinding; \
     build with panic = \"unwind\""
);

/// The most scans a JPEG may hold. A progressive image has about ten; a crafted file with
/// thousands of tiny scans makes libjpeg redo its output pass for each (seconds of CPU from
/// a few kilobytes), which libjpeg-turbo's own tools guard against the same way.
pub(super) const MAX_SCANS: usize = 1000;

/// Decodes JPEG `bytes` to RGB as `Image.open(..).convert("RGB")` does, refusing images wider
/// or taller than `max_side` from their header, before anything is allocated for the pixels.
pub(super) fn decode(bytes: &[u8], max_side: u32) -> Result<RgbImage> {
    if !has_end(bytes) {
        return Err(invalid("the JPEG image is truncated"));
    }
    let scans = count_scans(bytes);
    if scans > MAX_SCANS {
        return Err(invalid(format!(
            "the JPEG image has {scans} scans; at most {MAX_SCANS} are accepted"
        )));
    }
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, max_side))) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg failed");
            let reason = message.trim_start_matches("libjpeg fatal error: ");
            Err(invalid(format!("the JPEG image is corrupt: {reason}")))
        }
    }
}

/// The decode itself; libjpeg's fatal errors unwind out of it.
fn decode_unguarded(bytes: &[u8], max_side: u32) -> Result<RgbImage> {
    let header = Decompress::new_mem(bytes).map_err(corrupt)?;
    let (width, height) = (header.width(), header.height());
    check_side(width as u32, height as u32, max_side)?;
    // Pillow's modes by component count ("L", "RGB", "CMYK"), each read in that colour
    // space: libjpeg converts YCbCr to RGB and YCCK to CMYK itself.
    let components = header.components().len();
    let out = match (components, header.color_space()) {
        (1, _) => ColorSpace::JCS_GRAYSCALE,
        (3, _) => ColorSpace::JCS_RGB,
        (4, _) => ColorSpace::JCS_CMYK,
        (n, space) => {
            return Err(invalid(format!(
                "unsupported JPEG: {n} colour components ({space:?}); Pillow reads 1, 3 or 4"
            )))
        }
    };
    let mut started = header.to_colorspace(out).map_err(corrupt)?;
    let samples: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
    started.finish().map_err(corrupt)?;
    let data = match out {
        ColorSpace::JCS_GRAYSCALE => samples.iter().flat_map(|&v| [v; 3]).collect(),
        ColorSpace::JCS_CMYK => samples
            .chunks_exact(4)
            .flat_map(adobe_cmyk_to_rgb)
            .collect(),
        _ => samples,
    };
    RgbImage::new(width as u32, height as u32, data)
}

/// One pixel as libjpeg outputs Adobe CMYK (inverted: 0 is full ink), converted as Pillow
/// does: it reads the samples as mode "CMYK;I" (255 - v), then `convert("RGB")` computes
/// `255 - K - C·(255 - K)/255` per channel with its rounded division by 255. With the
/// inversion folded in, `255 - K` is the stored K sample.
pub(super) fn adobe_cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let nk = u32::from(px[3]);
    let channel = |stored: u8| {
        let ink = 255 - u32::from(stored);
        let t = ink * nk + 128;
        (nk - (((t >> 8) + t) >> 8)) as u8
    };
    [channel(px[0]), channel(px[1]), channel(px[2])]
}

/// Whether an end-of-image marker follows the last start-of-scan marker. libjpeg paints a
/// cut-off scan grey and succeeds, where Pillow refuses the file ("image file is truncated");
/// entropy-coded data cannot hold either marker (0xFF bytes are stuffed), and an EXIF
/// thumbnail's end marker comes before the main image's scans, so this tells a complete file
/// from a cut one. (A file that lacks only its end marker, which Pillow accepts, is refused
/// too.)
fn has_end(bytes: &[u8]) -> bool {
    let last_marker = |code: u8| bytes.windows(2).rposition(|w| w == [0xFF, code]);
    match (last_marker(0xDA), last_marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// Whether libjpeg-turbo's SIMD IDCT is built in and usable on this CPU.
#[cfg(test)]
pub(super) fn simd_idct() -> bool {
    extern "C" {
        fn jsimd_can_idct_islow() -> std::os::raw::c_int;
    }
    // SAFETY: a libjpeg-turbo function without arguments that only looks at the CPU's
    // features (once, into a static of its own).
    unsafe { jsimd_can_idct_islow() != 0 }
}

/// Start-of-scan markers in the file: every scan, plus any `FF DA` inside metadata (an
/// embedded thumbnail's scans), which only makes the bound stricter.
fn count_scans(bytes: &[u8]) -> usize {
    bytes.windows(2).filter(|w| *w == [0xFF, 0xDA]).count()
}

fn corrupt(e: std::io::Error) -> Error {
    invalid(format!("the JPEG image is corrupt: {e}"))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidInput(message.into())
}
