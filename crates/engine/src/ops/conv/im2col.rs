//! Convolution of any geometry by im2col over bands of output rows.
//!
//! The column matrix of a whole SD-VAE image would be 9x its input (over 1 GiB at 512 px with
//! 128 channels); a band of output rows at a time keeps it a few MiB whatever the image size,
//! and one large GEMM per band accumulates straight into the output, pre-filled with the bias.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::{gemm_parallelism, ConvGeometry};
use crate::ops::cpu_kernels::f32_slice;

/// Upper bound on the elements of one band's column matrix (16 MiB in f32): large enough for
/// the GEMM to run at full speed, small enough to stay in the last-level cache.
pub(super) const COLUMN_ELEMENTS: usize = 1 << 22;

/// x (B, Cin, H, W), weight (Cout, Cin, k, k), bias (Cout), all f32.
pub(super) struct Im2colConv {
    pub geometry: ConvGeometry,
    /// At most this many elements in one band's column matrix (at least one output row).
    pub column_elements: usize,
}

/// Sizes of one convolution call.
struct Dims {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    h_out: usize,
    w_out: usize,
}

impl CustomOp3 for Im2colConv {
    fn name(&self) -> &'static str {
        "tessera-im2col-conv"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, weight, bias) = (
            f32_slice(x, x_layout, "conv input")?,
            f32_slice(weight, weight_layout, "conv weight")?,
            f32_slice(bias, bias_layout, "conv bias")?,
        );
        let (batch, c_in, h, w) = x_layout.shape().dims4()?;
        let (c_out, w_in, kh, kw) = weight_layout.shape().dims4()?;
        let k = self.geometry.kernel;
        if w_in != c_in || kh != k || kw != k || bias.len() != c_out {
            candle_core::bail!(
                "im2col conv: input {:?}, weight {:?}, bias {}",
                x_layout.dims(),
                weight_layout.dims(),
                bias.len()
            )
        }
        let d = Dims {
            c_in,
            h,
            w,
            c_out,
            h_out: self.geometry.output_len(h)?,
            w_out: self.geometry.output_len(w)?,
        };
        let out_len = d.c_out * d.h_out * d.w_out;
        let mut out = vec![0f32; batch * out_len];
        for (x, out) in x
            .chunks_exact(c_in * h * w)
            .zip(out.chunks_exact_mut(out_len))
        {
            for (plane, &b) in out.chunks_exact_mut(d.h_out * d.w_out).zip(bias) {
                plane.fill(b);
            }
            self.convolve(x, weight, out, &d);
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, d.c_out, d.h_out, d.w_out)),
        ))
    }
}

impl Im2colConv {
    /// Adds the convolution of one image `x` to `out` (which holds the bias).
    fn convolve(&self, x: &[f32], weight: &[f32], out: &mut [f32], d: &Dims) {
        let g = self.geometry;
        if g == ConvGeometry::same(1) {
            // A pointwise conv is a plain matmul over the input itself.
            gemm_accumulate(
                out,
                d.h_out * d.w_out,
                weight,
                x,
                d.c_out,
                d.c_in,
                d.h * d.w,
            );
            return;
        }
        let taps = d.c_in * g.kernel * g.kernel;
        let band_rows = (self.column_elements / (taps * d.w_out)).clamp(1, d.h_out);
        let mut columns = vec![0f32; taps * band_rows * d.w_out];
        for first_row in (0..d.h_out).step_by(band_rows) {
            let rows = band_rows.min(d.h_out - first_row);
            let n = rows * d.w_out;
            let columns = &mut columns[..taps * n];
            self.im2col(x, columns, first_row, rows, d);
            let out = &mut out[first_row * d.w_out..];
            gemm_accumulate(out, d.h_out * d.w_out, weight, columns, d.c_out, taps, n);
        }
    }

    /// Fills `columns` (taps x rows*w_out, tap order = the weight's (c_in, ky, kx) order) with
    /// the input values under each tap for output rows `first_row..first_row + rows`.
    fn im2col(&self, x: &[f32], columns: &mut [f32], first_row: usize, rows: usize, d: &Dims) {
        let g = self.geometry;
        let n = rows * d.w_out;
        columns
            .par_chunks_mut(g.kernel * g.kernel * n)
            .enumerate()
            .for_each(|(c, taps)| {
                let plane = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
                for (tap, column) in taps.chunks_exact_mut(n).enumerate() {
                    let (ky, kx) = (tap / g.kernel, tap % g.kernel);
                    for (r, dst) in column.chunks_exact_mut(d.w_out).enumerate() {
                        // Input row under this tap, or None in the zero padding.
                        let iy = ((first_row + r) * g.stride + ky)
                            .checked_sub(g.pad_before)
                            .filter(|&iy| iy < d.h);
                        match iy {
                            Some(iy) => self.gather_row(&plane[iy * d.w..(iy + 1) * d.w], kx, dst),
                            None => dst.fill(0.0),
                        }
                    }
                }
            });
    }

    /// One output row's values for horizontal tap `kx` from input row `src`.
    fn gather_row(&self, src: &[f32], kx: usize, dst: &mut [f32]) {
        let (stride, pad) = (self.geometry.stride, self.geometry.pad_before);
        // Output column x reads input column x * stride + kx - pad, which lies inside the row
        // for first <= x < last; the columns either side read the zero padding.
        let first = pad.saturating_sub(kx).div_ceil(stride).min(dst.len());
        let last = (src.len() + pad)
            .saturating_sub(kx)
            .div_ceil(stride)
            .clamp(first, dst.len());
        dst[..first].fill(0.0);
        let inside = &mut dst[first..last];
        if !inside.is_empty() {
            let start = first * stride + kx - pad;
            match stride {
                1 => inside.copy_from_slice(&src[start..start + inside.len()]),
                _ => inside
                    .iter_mut()
                    .zip(src[start..].iter().step_by(stride))
                    .for_each(|(v, &x)| *v = x),
            }
        }
        dst[last..].fill(0.0);
    }
}

/// out (m x n, row stride `out_stride`) += lhs (m x k, contiguous) @ rhs (k x n, contiguous).
fn gemm_accumulate(
    out: &mut [f32],
    out_stride: usize,
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(
        lhs.len() >= m * k && rhs.len() >= k * n,
        "gemm operands too short"
    );
    assert!(
        m == 0 || out.len() >= (m - 1) * out_stride + n,
        "gemm output too short"
    );
    // SAFETY: the asserts above keep every element gemm reads or writes inside the slices;
    // `out` is borrowed mutably, so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(),
        )
    }
}
