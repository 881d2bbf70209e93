//! Images in and out of the engine, computed as diffusers + Pillow compute them: decoding to
//! RGB as `Image.open(..).convert("RGB")`, `VaeImageProcessor.preprocess` (Lanczos resize to
//! a multiple of the VAE scale factor, then [-1, 1] NCHW), its `postprocess` to [0, 1] NHWC
//! and `numpy_to_pil`'s 8-bit rounding, and PNG encoding of the results.

mod jpeg;
#[cfg(test)]
mod jpeg_tests;
mod resample;
#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, ImageError, ImageFormat};

use crate::error::{Error, Result};
pub use resample::{resize, Filter};

/// An RGB8 image, rows top to bottom, pixels `[r, g, b]` left to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps a pixel buffer, checking that it holds `width * height` RGB pixels.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<RgbImage> {
        let img = RgbImage {
            width,
            height,
            data,
        };
        img.check()?;
        Ok(img)
    }

    /// The fields are public, so functions that cannot trust them check them.
    fn check(&self) -> Result<()> {
        let want = self.width as usize * self.height as usize * 3;
        if self.data.len() != want {
            return Err(Error::InvalidInput(format!(
                "an RGB image of {}x{} needs {want} bytes, got {}",
                self.width,
                self.height,
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// The largest width or height `decode` accepts. Checked from the header before any pixel is
/// decoded, so a 50000x50000 PNG (a decompression bomb) is refused at once instead of asking
/// for gigabytes. Services set tighter limits of their own.
pub const MAX_DECODED_SIDE: u32 = 8192;

/// Decodes PNG, JPEG, WebP, GIF (first frame), BMP or TIFF bytes to RGB8 as Pillow's
/// `Image.open(..).convert("RGB")` does, bit for bit: alpha dropped (not composited), grey
/// and palettes expanded, 16-bit samples reduced to their high byte except 16-bit grey, which
/// Pillow clips to 255. JPEG goes through libjpeg-turbo's decoder as Pillow's does (the
/// `jpeg` module), CMYK included; lossy WebP decodes exactly as Pillow's libwebp. The EXIF
/// orientation is not applied, as `convert` does not apply it (nor does ai-runner).
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    decode_within(bytes, MAX_DECODED_SIDE)
}

/// [`decode`], refusing images wider or taller than `max_side` (services' own limits), from
/// the header, before any pixel is decoded.
pub fn decode_within(bytes: &[u8], max_side: u32) -> Result<RgbImage> {
    let format = image::guess_format(bytes).map_err(|_| {
        Error::InvalidInput(
            "not an image: the data is not a recognised image format \
             (PNG, JPEG, WebP, GIF, BMP or TIFF)"
                .into(),
        )
    })?;
    if format == ImageFormat::Jpeg {
        return jpeg::decode(bytes, max_side);
    }
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| decode_error(format, e))?;
    check_side(width, height, max_side)?;
    // The header's size is not the whole story: a GIF frame, say, may declare itself far
    // larger than the screen the header gives (a fuzzed 9x5 GIF asked for 636 MiB). The
    // decoder's own limits hold every frame and buffer to the largest image allowed.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(decode_budget(max_side));
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| decode_error(format, e))?;
    Ok(to_pil_rgb(image))
}

/// Bytes a decoder may allocate for an image of at most `max_side` a side: the largest
/// such image in 16-bit RGBA, the widest pixel any accepted format decodes to.
fn decode_budget(max_side: u32) -> u64 {
    u64::from(max_side) * u64::from(max_side) * 8
}

/// Refuses an image wider or taller than `max_side`, naming both sizes.
fn check_side(width: u32, height: u32, max_side: u32) -> Result<()> {
    if width > max_side || height > max_side {
        return Err(Error::InvalidInput(format!(
            "image is {width}x{height}; the largest accepted is {max_side}x{max_side}"
        )));
    }
    Ok(())
}

/// Reads and decodes an image file (see [`decode`]); decode errors name the file.
pub fn read(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|e| match e {
        Error::InvalidInput(msg) => Error::InvalidInput(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Says what is wrong with undecodable data in the caller's terms.
fn decode_error(format: ImageFormat, err: ImageError) -> Error {
    let name = format!("{format:?}").to_uppercase();
    let msg = match err {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("the {name} image is truncated")
        }
        ImageError::Decoding(e) if is_truncation(&e) => {
            format!("the {name} image is truncated ({e})")
        }
        ImageError::Decoding(e) => format!("the {name} image is corrupt: {e}"),
        ImageError::Limits(e) => format!("the {name} image is too large to decode: {e}"),
        ImageError::Unsupported(e) => format!("unsupported image: {e}"),
        other => format!("cannot decode the {name} image: {other}"),
    };
    Error::InvalidInput(msg.trim_end().to_owned())
}

/// Decoders report running out of data as an I/O end-of-file somewhere in their chain.
fn is_truncation(err: &image::error::DecodingError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Pillow's mode conversions to RGB for what the `image` crate decodes. Pillow opens 16-bit
/// RGB(A) and grey+alpha PNGs as 8-bit modes keeping the high byte, but 16-bit grey as
/// mode "I;16", whose conversion to RGB saturates values above 255.
fn to_pil_rgb(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let data: Vec<u8> = match image {
        DynamicImage::ImageRgb8(im) => im.into_raw(),
        DynamicImage::ImageRgba8(im) => im.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(im) => im.pixels().flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageLumaA8(im) => im.pixels().flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageLuma16(im) => {
            im.pixels().flat_map(|p| [p[0].min(255) as u8; 3]).collect()
        }
        DynamicImage::ImageLumaA16(im) => im.pixels().flat_map(|p| [high(p[0]); 3]).collect(),
        DynamicImage::ImageRgb16(im) => im.pixels().flat_map(|p| p.0.map(high)).collect(),
        DynamicImage::ImageRgba16(im) => im
            .pixels()
            .flat_map(|p| [high(p[0]), high(p[1]), high(p[2])])
            .collect(),
        // Float images (which Pillow cannot open as RGB): clamp to [0, 1] and scale.
        other => other.to_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        data,
    }
}

fn high(v: u16) -> u8 {
    (v >> 8) as u8
}

/// PNG bytes of `img` (8-bit RGB).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    img.check()?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &img.data,
            img.width,
            img.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::InvalidInput(format!("cannot encode a PNG: {e}")))?;
    Ok(out)
}

/// Writes `img` as a PNG file.
pub fn write_png(img: &RgbImage, path: &Path) -> Result<()> {
    let bytes = encode_png(img)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Pillow's `resize((width, height), Image.LANCZOS)`, bit-exact; see [`resize`].
pub fn resize_lanczos(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(img, width, height, Filter::Lanczos)
}

/// The size `preprocess` resizes a `width` x `height` image to: each side rounded down to a
/// multiple of `scale_factor` (the VAE's downsampling factor), so that the latents tile it.
pub fn preprocess_size(width: u32, height: u32, scale_factor: usize) -> Result<(u32, u32)> {
    let s = u32::try_from(scale_factor)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| Error::InvalidInput(format!("invalid VAE scale factor {scale_factor}")))?;
    let (w, h) = (width - width % s, height - height % s);
    if w == 0 || h == 0 {
        return Err(Error::InvalidInput(format!(
            "image {width}x{height} is smaller than one latent pixel ({s} px)"
        )));
    }
    Ok((w, h))
}

/// diffusers' `VaeImageProcessor.preprocess` for one image with its defaults (resize with
/// Lanczos to [`preprocess_size`], no RGB conversion, normalise): `[1, 3, h, w]` f32 in
/// [-1, 1] on `device`.
pub fn preprocess(img: &RgbImage, scale_factor: usize, device: &Device) -> Result<Tensor> {
    img.check()?;
    let (w, h) = preprocess_size(img.width, img.height, scale_factor)?;
    let resized;
    let img = if (w, h) == (img.width, img.height) {
        img
    } else {
        resized = resize_lanczos(img, w, h);
        &resized
    };
    let plane = w as usize * h as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            data[c * plane + i] = to_signed_unit(v);
        }
    }
    Ok(Tensor::from_vec(
        data,
        (1, 3, h as usize, w as usize),
        device,
    )?)
}

/// A byte to [-1, 1] in diffusers' f32 operation order: `v / 255` (numpy), then `2 * x - 1`
/// (torch), each rounded to f32.
fn to_signed_unit(v: u8) -> f32 {
    2.0 * (f32::from(v) / 255.0) - 1.0
}

/// diffusers' `postprocess` up to `output_type="np"`: VAE output NCHW (about [-1, 1]) to
/// `(x * 0.5 + 0.5).clamp(0, 1)` as NHWC f32. The arithmetic runs in the input's dtype, as
/// torch does for a half-precision VAE, and only then widens to f32.
pub fn to_unit_nhwc(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    let unit = x.affine(0.5, 0.5)?.clamp(0.0, 1.0)?;
    Ok(unit
        .permute((0, 2, 3, 1))?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

/// NHWC RGB in [0, 1] to 8-bit images as diffusers' `numpy_to_pil`: `(x * 255).round()`
/// in f32, numpy's rounding being half to even.
pub fn to_rgb8(x: &Tensor) -> Result<Vec<RgbImage>> {
    let (_, h, w, c) = x.dims4()?;
    if c != 3 || h == 0 || w == 0 {
        return Err(candle_core::Error::Msg(format!(
            "to_rgb8 expects NHWC images with 3 channels, got shape {:?}",
            x.dims()
        ))
        .into());
    }
    let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(values
        .chunks_exact(h * w * 3)
        .map(|image| RgbImage {
            width: w as u32,
            height: h as u32,
            data: image.iter().map(|&v| unit_to_u8(v)).collect(),
        })
        .collect())
}

/// `numpy.round(v * 255).astype(uint8)` for v in [0, 1]; out-of-range values saturate and
/// NaN gives 0 (what numpy yields for it on x86).
fn unit_to_u8(v: f32) -> u8 {
    (v * 255.0).round_ties_even() as u8
}
