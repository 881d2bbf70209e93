//! Hand-written CPU kernels for the operations where candle's generic CPU ops lose most of the
//! time in a UNet call: attention (materialised score matrices, batched skinny matmuls) and
//! normalisation/activation chains (one memory pass per elementary op, single-threaded libm).
//! The convolution kernels live in `ops::conv`. Each is a candle custom op on f32 CPU storage; the
//! callers in `ops` use the generic candle path for other devices and dtypes.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape};
use multiversion::multiversion;
use rayon::prelude::*;

use super::fast_math;

/// A raw output pointer shared by workers that write disjoint regions.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every use writes a region no other worker touches, and the buffer outlives the
// parallel loop that uses it.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the whole (Send + Sync) wrapper, not the field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("{what}: expected f32 storage"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

thread_local! {
    /// Per-thread scratch for attention score tiles, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Query rows per attention work item: a 64 x 4096 f32 score tile is 1 MiB, about an L2.
const ATTN_TILE: usize = 64;

/// Flash-style attention: for each (batch, head, 64-query tile), scores = q k^T * scale into a
/// per-thread tile, softmax in place, out = p v written straight into the output. The full
/// score matrix never exists. q `[B, Sq, H*D]`, k and v `[B, Sk, H*D]`.
pub struct Attention {
    pub heads: usize,
    pub scale: f32,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "tessera-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice(q, ql, "attention q")?,
            f32_slice(k, kl, "attention k")?,
            f32_slice(v, vl, "attention v")?,
        );
        let (b, sq, c) = ql.shape().dims3()?;
        let sk = kl.shape().dims3()?.1;
        let (h, d) = (self.heads, c / self.heads);
        let mut out = vec![0f32; b * sq * c];
        let dst = OutPtr(out.as_mut_ptr());
        let tiles = sq.div_ceil(ATTN_TILE);
        (0..b * h * tiles).into_par_iter().for_each(|item| {
            let (bh, tile) = (item / tiles, item % tiles);
            let (bi, hi) = (bh / h, bh % h);
            let q0 = tile * ATTN_TILE;
            let rows = ATTN_TILE.min(sq - q0);
            SCRATCH.with(|s| {
                let mut scores = s.borrow_mut();
                scores.resize(ATTN_TILE * sk, 0.0);
                let q_at = &q[bi * sq * c + q0 * c + hi * d..];
                let k_at = &k[bi * sk * c + hi * d..];
                let v_at = &v[bi * sk * c + hi * d..];
                // SAFETY: strides and extents stay inside q/k/v (rows < sq, columns < d,
                // keys < sk) and inside this tile's scratch; `dst` rows q0..q0+rows of head hi
                // belong to this work item only.
                unsafe {
                    let (c, sk_i) = (c as isize, sk as isize);
                    gemm::gemm(
                        rows,
                        sk,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        sk_i,
                        false,
                        q_at.as_ptr(),
                        1,
                        c,
                        k_at.as_ptr(),
                        c,
                        1,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    let sums = softmax_rows_unnormalised(&mut scores[..rows * sk], sk);
                    let out_at = dst.at(bi * sq * c as usize + q0 * c as usize + hi * d);
                    gemm::gemm(
                        rows,
                        d,
                        sk,
                        out_at,
                        1,
                        c,
                        false,
                        scores.as_ptr(),
                        1,
                        sk_i,
                        v_at.as_ptr(),
                        1,
                        c,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    for (r, sum) in sums.iter().enumerate() {
                        let row = std::slice::from_raw_parts_mut(out_at.add(r * c as usize), d);
                        let inv = 1.0 / sum;
                        row.iter_mut().for_each(|x| *x *= inv);
                    }
                }
            });
        });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// exp(x - rowmax) in place for each row; returns the row sums (normalisation is applied to
/// the much smaller output rows instead of the score rows).
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_rows_unnormalised(scores: &mut [f32], width: usize) -> Vec<f32> {
    scores
        .chunks_exact_mut(width)
        .map(|row| {
            let max = fast_math::max(row);
            row.iter_mut().for_each(|x| *x = fast_math::exp(*x - max));
            fast_math::sum_map(row, |x| x)
        })
        .collect()
}

/// GroupNorm (+ optional SiLU) in one pass per group, statistics in f64. Input `[B, C, ...]`,
/// weight and bias are passed packed as one `[2, C]` tensor.
pub struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

impl CustomOp2 for GroupNormOp {
    fn name(&self) -> &'static str {
        "tessera-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, p) = (
            f32_slice(x, xl, "group norm input")?,
            f32_slice(p, pl, "group norm params")?,
        );
        let dims = xl.shape().dims();
        let c = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let cpg = c / self.groups;
        let (weight, bias) = p.split_at(c);
        let mut out = vec![0f32; x.len()];
        let group_len = cpg * spatial;
        out.par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (o, src))| {
                let g = i % self.groups;
                let chans = g * cpg..(g + 1) * cpg;
                normalise_group(
                    src,
                    o,
                    &weight[chans.clone()],
                    &bias[chans],
                    self.eps,
                    self.silu,
                );
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// One group of a group norm: `src` holds its channels one after another.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn normalise_group(
    src: &[f32],
    out: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f64,
    silu: bool,
) {
    // Two passes (mean, then squared deviations): no cancellation when the mean is large
    // against the spread. Partial sums in f32 chunks, totals in f64.
    let n = src.len() as f64;
    let mean = src
        .chunks(1024)
        .map(|c| fast_math::sum_map(c, |v| v) as f64)
        .sum::<f64>()
        / n;
    let m = mean as f32;
    let var = src
        .chunks(1024)
        .map(|c| fast_math::sum_map(c, |v| (v - m) * (v - m)) as f64)
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + eps).sqrt();
    let spatial = src.len() / weight.len();
    for (ci, (&w, &b)) in weight.iter().zip(bias).enumerate() {
        let a = (w as f64 * inv) as f32;
        let shift = (b as f64 - mean * inv * w as f64) as f32;
        let (o, s) = (
            &mut out[ci * spatial..(ci + 1) * spatial],
            &src[ci * spatial..(ci + 1) * spatial],
        );
        if silu {
            o.iter_mut()
                .zip(s)
                .for_each(|(o, &v)| *o = fast_math::silu(v * a + shift));
        } else {
            o.iter_mut().zip(s).for_each(|(o, &v)| *o = v * a + shift);
        }
    }
}

/// `value * gelu(gate)` element-wise.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn gated_gelu(value: &[f32], gate: &[f32], out: &mut [f32]) {
    out.iter_mut()
        .zip(value.iter().zip(gate))
        .for_each(|(o, (&v, &g))| *o = v * fast_math::gelu(g));
}

/// GEGLU's gate: `[.., 2n]` -> `[.., n]`, first half times GELU(second half).
pub struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "tessera-geglu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(x, xl, "geglu input")?;
        let dims = xl.shape().dims();
        let width = dims[dims.len() - 1];
        let half = width / 2;
        let mut out = vec![0f32; x.len() / 2];
        out.par_chunks_mut(half)
            .zip(x.par_chunks(width))
            .for_each(|(o, src)| {
                let (value, gate) = src.split_at(half);
                gated_gelu(value, gate, o);
            });
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = half;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}
