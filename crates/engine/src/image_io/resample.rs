//! Pillow's `Image.resize` for RGB8 images with its convolution filters, reproduced to the
//! bit: the same kernels evaluated in f64, the same support and centre arithmetic, weights
//! normalised per output pixel and then quantised to 22-bit fixed point, integer
//! accumulation with a rounding bias, clipping to 0..=255 after each pass, and Pillow's
//! order of the two passes (each rounds to 8 bits, so the order shows in the result).
//! Facts from Pillow 13's `src/libImaging/Resample.c` and `src/_imaging.c`.

use rayon::prelude::*;

use super::RgbImage;

/// A resampling filter of Pillow's convolution family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BICUBIC`: Keys' cubic convolution with a = -0.5, support 2.
    Bicubic,
    /// `Image.LANCZOS`: a 3-lobed Lanczos window, support 3 (what diffusers resizes with).
    Lanczos,
}

impl Filter {
    /// Half-width of the kernel, in source pixels when not downscaling.
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernel at `x`. The operations are ordered as Pillow orders them, since the
    /// weights feed a rounding step and must agree to the last bit.
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Fixed-point fraction bits of the weights: 8 bits of pixel value and 2 bits of headroom
/// for kernels whose lobes push a sum below 0 or above 255 leave 22 of an i32.
const PRECISION_BITS: u32 = 22;

/// The source span and quantised weights of every output pixel along one axis.
struct Kernel {
    /// Number of weights stored per output pixel (Pillow's `ksize`).
    stride: usize,
    /// First source pixel and number of source pixels of each output pixel.
    spans: Vec<(usize, usize)>,
    /// `spans.len() * stride` weights in 1/2^22 units, zero past each span.
    weights: Vec<i32>,
}

impl Kernel {
    /// Weights for resampling `in_size` pixels to `out_size` over the whole source.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Kernel {
        let scale = in_size as f64 / out_size as f64;
        // When downscaling the kernel is stretched so that it still averages every source
        // pixel; when upscaling it keeps its natural width.
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filter_scale = 1.0 / filter_scale;
        let mut spans = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut real = Vec::with_capacity(stride);
        for (out, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // Float-to-int casts truncate toward zero like C's; the clamps make the
            // negative case irrelevant.
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (end - first).max(0) as usize;
            real.clear();
            real.extend((0..count).map(|i| {
                filter.weight(((i as i64 + first) as f64 - center + 0.5) * inv_filter_scale)
            }));
            let total: f64 = real.iter().sum();
            if total != 0.0 {
                real.iter_mut().for_each(|w| *w /= total);
            }
            for (q, &w) in row.iter_mut().zip(&real) {
                *q = quantise(w);
            }
            spans.push((first as usize, count));
        }
        Kernel {
            stride,
            spans,
            weights,
        }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (first, count) = self.spans[out];
        let start = out * self.stride;
        (first, &self.weights[start..start + count])
    }

    /// Source rows (or columns) that any output pixel reads: `first..end`.
    fn used_range(&self) -> (usize, usize) {
        let first = self.spans.first().map_or(0, |s| s.0);
        let end = self.spans.last().map_or(0, |s| s.0 + s.1);
        (first, end)
    }
}

/// Rounds a weight half away from zero to 22-bit fixed point.
fn quantise(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Start value of every accumulator: one half in fixed point, so that the final shift
/// rounds to nearest instead of truncating.
const ROUNDING_BIAS: i32 = 1 << (PRECISION_BITS - 1);

/// Fixed point back to a byte, saturating the over- and undershoot of negative lobes.
/// Sums stay far inside i32: 255 * (sum of |weights|, at most ~1.3 for Lanczos) * 2^22.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `img` to `width` x `height` as Pillow's `Image.resize((width, height), filter)`
/// (no box, `reducing_gap=None`). The same size returns an unchanged copy, as Pillow does.
///
/// # Panics
/// If `width` or `height` is 0 (Pillow raises), or `img.data` does not hold
/// `img.width * img.height` RGB pixels.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    assert!(
        width > 0 && height > 0,
        "resize target {width}x{height} must be at least 1x1"
    );
    assert_eq!(
        img.data.len(),
        img.width as usize * img.height as usize * 3,
        "RGB buffer does not match {}x{}",
        img.width,
        img.height
    );
    let (in_w, in_h) = (img.width as usize, img.height as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let vertical = (out_h != in_h).then(|| Kernel::new(in_h, out_h, filter));
    let horizontal = (out_w != in_w).then(|| Kernel::new(in_w, out_w, filter));
    match (horizontal, vertical) {
        (None, None) => img.clone(),
        (Some(h), None) => horizontal_pass(img, 0, in_h, &h),
        (None, Some(v)) => vertical_pass(img, 0, &v),
        // Pillow 13 shrinks the height first when the width does not shrink (less work
        // for the horizontal pass); the order shows in the 8-bit intermediate.
        (Some(h), Some(v)) if out_w >= in_w && out_h < in_h => {
            let tall = vertical_pass(img, 0, &v);
            horizontal_pass(&tall, 0, out_h, &h)
        }
        (Some(h), Some(v)) => {
            // Only the rows the vertical pass will read are resampled horizontally.
            let (first, end) = v.used_range();
            let wide = horizontal_pass(img, first, end, &h);
            vertical_pass(&wide, first, &v)
        }
    }
}

/// Resamples rows `first..end` of `img` to the kernel's output width.
fn horizontal_pass(img: &RgbImage, first: usize, end: usize, kernel: &Kernel) -> RgbImage {
    let in_stride = img.width as usize * 3;
    let out_w = kernel.spans.len();
    let mut data = vec![0u8; out_w * 3 * (end - first)];
    data.par_chunks_mut(out_w * 3)
        .zip(img.data[first * in_stride..end * in_stride].par_chunks(in_stride))
        .for_each(|(out_row, in_row)| {
            for (x, out_px) in out_row.chunks_exact_mut(3).enumerate() {
                let (start, taps) = kernel.taps(x);
                let mut acc = [ROUNDING_BIAS; 3];
                for (px, &k) in in_row[start * 3..].chunks_exact(3).zip(taps) {
                    for c in 0..3 {
                        acc[c] += i32::from(px[c]) * k;
                    }
                }
                for c in 0..3 {
                    out_px[c] = clip8(acc[c]);
                }
            }
        });
    RgbImage {
        width: out_w as u32,
        height: (end - first) as u32,
        data,
    }
}

/// Resamples the columns of `img` to the kernel's output height; the kernel's row indices
/// are shifted down by `row_offset` (rows of the source that `img` does not hold).
fn vertical_pass(img: &RgbImage, row_offset: usize, kernel: &Kernel) -> RgbImage {
    let stride = img.width as usize * 3;
    let out_h = kernel.spans.len();
    let mut data = vec![0u8; stride * out_h];
    data.par_chunks_mut(stride).enumerate().for_each_init(
        || vec![0i32; stride],
        |acc, (y, out_row)| {
            let (start, taps) = kernel.taps(y);
            acc.fill(ROUNDING_BIAS);
            // Integer sums are exact, so accumulating row by row equals Pillow's
            // per-pixel loop.
            for (i, &k) in taps.iter().enumerate() {
                let row = start - row_offset + i;
                let in_row = &img.data[row * stride..(row + 1) * stride];
                for (a, &v) in acc.iter_mut().zip(in_row) {
                    *a += i32::from(v) * k;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                *o = clip8(a);
            }
        },
    );
    RgbImage {
        width: img.width,
        height: out_h as u32,
        data,
    }
}
