//! Stride-1 "same" convolution without a column matrix.
//!
//! With the input zero-padded to (H+k-1) x (W+k-1), output pixel (y, x) of kernel tap (i, j)
//! reads padded pixel (y+i, x+j). Computing the output over the padded width (W+k-1 columns
//! per row, the k-1 extra ones dropped at the end) makes that a constant shift, so every tap is
//! one plain strided matrix product (Cout x Cin) . (Cin x H*Wp) accumulated into the same
//! destination: k*k GEMMs, no im2col copy.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::gemm_parallelism;
use crate::ops::cpu_kernels::f32_slice;

/// x (B, Cin, H, W), weight (Cout, Cin, k, k), bias (Cout), all f32, k odd.
pub(super) struct ImplicitGemmConv {
    pub kernel: usize,
}

impl CustomOp3 for ImplicitGemmConv {
    fn name(&self) -> &'static str {
        "tessera-implicit-gemm-conv"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        bias: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            f32_slice(x, xl, "conv input")?,
            f32_slice(w, wl, "conv weight")?,
        );
        let bias = f32_slice(bias, bl, "conv bias")?;
        let (b, cin, hh, ww) = xl.shape().dims4()?;
        let (cout, wcin, kh, kw) = wl.shape().dims4()?;
        let k = self.kernel;
        if wcin != cin || kh != k || kw != k || k.is_multiple_of(2) || bias.len() != cout {
            candle_core::bail!(
                "implicit-GEMM conv: input {:?}, weight {:?}, bias {}",
                xl.dims(),
                wl.dims(),
                bias.len()
            );
        }
        let pad = k / 2;
        let (hp, wp) = (hh + 2 * pad, ww + 2 * pad);
        // 2*pad spare elements so the last tap's strided view stays inside the plane.
        let plane = hp * wp + 2 * pad;
        let mut out = vec![0f32; b * cout * hh * ww];
        let mut padded = vec![0f32; cin * plane];
        let mut wide = vec![0f32; cout * hh * wp];
        for (xb, ob) in x
            .chunks_exact(cin * hh * ww)
            .zip(out.chunks_exact_mut(cout * hh * ww))
        {
            padded
                .par_chunks_mut(plane)
                .zip(xb.par_chunks(hh * ww))
                .for_each(|(p, src)| {
                    for (y, row) in src.chunks_exact(ww).enumerate() {
                        let at = (y + pad) * wp + pad;
                        p[at..at + ww].copy_from_slice(row);
                    }
                });
            for i in 0..k {
                for j in 0..k {
                    // SAFETY: lhs walks w[co][ci][i][j] (strides cin*k*k, k*k) inside w; rhs
                    // walks padded[ci][i*wp + j + n] with n < hh*wp, so the offset stays below
                    // (k-1)*wp + (k-1) + hh*wp = hp*wp + 2*pad = plane; dst is cout x hh*wp,
                    // exactly `wide`, borrowed mutably here alone.
                    unsafe {
                        gemm::gemm(
                            cout,
                            hh * wp,
                            cin,
                            wide.as_mut_ptr(),
                            1,
                            (hh * wp) as isize,
                            i + j > 0,
                            w.as_ptr().add(i * k + j),
                            (k * k) as isize,
                            (cin * k * k) as isize,
                            padded.as_ptr().add(i * wp + j),
                            1,
                            plane as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm_parallelism(),
                        );
                    }
                }
            }
            ob.par_chunks_mut(hh * ww)
                .zip(wide.par_chunks(hh * wp))
                .zip(bias.par_iter())
                .for_each(|((o, src), &bv)| {
                    for (y, row) in o.chunks_exact_mut(ww).enumerate() {
                        row.iter_mut()
                            .zip(&src[y * wp..y * wp + ww])
                            .for_each(|(o, &s)| *o = s + bv);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, cout, hh, ww))))
    }
}
