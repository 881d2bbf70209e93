//! The one 2-D convolution of the UNet and the VAE (square kernel, dilation 1, groups 1, bias
//! folded in), with padding that may differ before and after.
//!
//! On the CPU in f32 it runs one of two hand-written kernels, whichever is faster for the
//! geometry (see [`Conv2d::kernel_for`]); elsewhere (CUDA, f16/bf16) candle's conv2d.

mod im2col;
mod implicit_gemm;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

use im2col::Im2colConv;
use implicit_gemm::ImplicitGemmConv;

/// Kernel size, stride and zero padding of a square convolution. `pad_before` rows/columns go
/// above/left of the input, `pad_after` below/right: the VAE encoder's downsampler pads only
/// after, which symmetric padding cannot express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: usize,
    pub stride: usize,
    pub pad_before: usize,
    pub pad_after: usize,
}

impl ConvGeometry {
    /// Stride 1, padded so the output keeps the input's size (odd kernels).
    pub const fn same(kernel: usize) -> Self {
        Self::symmetric(kernel, 1, kernel / 2)
    }

    /// PyTorch's `nn.Conv2d(padding=p)`: `p` on every side.
    pub const fn symmetric(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            pad_before: padding,
            pad_after: padding,
        }
    }

    /// Output rows (columns) for `input` rows (columns).
    pub fn output_len(&self, input: usize) -> Result<usize> {
        let padded = input + self.pad_before + self.pad_after;
        if padded < self.kernel || self.stride == 0 {
            candle_core::bail!(
                "conv2d: input of {input} does not fit the {} kernel with stride {}",
                self.kernel,
                self.stride
            )
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    /// Whether the implicit-GEMM kernel can run it: stride 1, odd kernel, "same" padding.
    fn is_same(&self) -> bool {
        self.kernel % 2 == 1 && *self == Self::same(self.kernel)
    }
}

/// The implementations of [`Conv2d`]. `forward` picks one; benchmarks and tests name one with
/// [`Conv2d::forward_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    /// CPU f32, "same" geometries only: one strided GEMM per kernel tap over the zero-padded
    /// input, no column matrix.
    ImplicitGemm,
    /// CPU f32, any geometry: im2col over bands of output rows, one GEMM per band (a single
    /// GEMM on the input itself for 1x1 kernels).
    Im2colBands,
    /// candle's conv2d plus a bias add: any device and dtype.
    Candle,
}

/// The implicit GEMM runs "same" convolutions with at most this many output channels...
const IMPLICIT_GEMM_MAX_COUT: usize = 8;
/// ...whose zero-padded input image is at most this large (bytes), so that its nine passes
/// over it are served from the cache. See [`Conv2d::kernel_for`] for the figures.
const IMPLICIT_GEMM_MAX_INPUT: usize = 32 << 20;

/// A square-kernel convolution as PyTorch's `nn.Conv2d` (dilation 1, groups 1) with weights
/// named `weight` (out, in, k, k) and `bias` (out).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    geometry: ConvGeometry,
}

impl Conv2d {
    /// `kernel` x `kernel` with `stride` and `padding` on every side.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::with_geometry(
            vb,
            cin,
            cout,
            ConvGeometry::symmetric(kernel, stride, padding),
        )
    }

    pub fn with_geometry(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        geometry: ConvGeometry,
    ) -> Result<Self> {
        let k = geometry.kernel;
        Ok(Self {
            weight: vb.get((cout, cin, k, k), "weight")?,
            bias: vb.get(cout, "bias")?,
            geometry,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, self.kernel_for(x)?)
    }

    /// The implementation `forward` uses for `x`: candle's conv2d off the CPU or in half
    /// precision; on the CPU in f32 the banded im2col, except for the implicit GEMM on "same"
    /// convolutions with a handful of output channels and a cache-sized input.
    ///
    /// Why, in CPU ms per call at one thread (`examples/conv_time.rs` on an EPYC Zen 5 core,
    /// implicit GEMM vs banded im2col): the im2col copy costs about as much as a few output
    /// channels' GEMM work, so it only shows with few output channels, and there the implicit
    /// GEMM wins while its input stays in cache — UNet conv_out 320->4 at 64 px, batch 3: 4.0 vs 11.4;
    /// SDXL conv_out 320->4 at 128 px, batch 2 (21 MiB padded input): 16.9 vs 22.5; VAE
    /// encoder conv_out 512->8 at 64 px: 4.9 vs 8.1 — but not once it streams from memory:
    /// VAE conv_out 128->3 at 512 px (135 MiB): 138 vs 71. With many output channels the
    /// im2col's one large GEMM per band beats nine GEMMs that each pass over the whole output:
    /// UNet 1280 channels at 8 px, batch 3: 165 vs 69; at 16 px: 386 vs 281; 640 at 32 px:
    /// 312 vs 284; 320 at 64 px: 300 vs 293; VAE 512 at 128 px: 1026 vs 997; VAE 1x1 convs:
    /// 128 vs 81 (the im2col kernel runs those as one GEMM on the input itself).
    pub fn kernel_for(&self, x: &Tensor) -> Result<ConvKernel> {
        if !self.on_cpu_f32(x) {
            return Ok(ConvKernel::Candle);
        }
        let (_, cin, h, w) = x.dims4()?;
        let (g, cout) = (self.geometry, self.weight.dim(0)?);
        let padded_input = cin * (h + g.kernel - 1) * (w + g.kernel - 1) * 4;
        let implicit = g.is_same()
            && g.kernel > 1
            && cout <= IMPLICIT_GEMM_MAX_COUT
            && padded_input <= IMPLICIT_GEMM_MAX_INPUT;
        Ok(match implicit {
            true => ConvKernel::ImplicitGemm,
            false => ConvKernel::Im2colBands,
        })
    }

    /// The convolution by a given implementation; an error if it cannot run this geometry,
    /// device or dtype.
    pub fn forward_with(&self, x: &Tensor, kernel: ConvKernel) -> Result<Tensor> {
        if kernel != ConvKernel::Candle && !self.on_cpu_f32(x) {
            candle_core::bail!(
                "conv2d: the {kernel:?} kernel needs f32 tensors on the CPU, got {:?} on {:?}",
                x.dtype(),
                x.device()
            )
        }
        match kernel {
            ConvKernel::ImplicitGemm => self.implicit_gemm(x),
            ConvKernel::Im2colBands => self.im2col(x, im2col::COLUMN_ELEMENTS),
            ConvKernel::Candle => self.candle(x),
        }
    }

    fn on_cpu_f32(&self, x: &Tensor) -> bool {
        matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
    }

    fn implicit_gemm(&self, x: &Tensor) -> Result<Tensor> {
        if !self.geometry.is_same() {
            candle_core::bail!(
                "conv2d: the implicit-GEMM kernel runs stride-1 'same' convolutions only, not {:?}",
                self.geometry
            )
        }
        let op = ImplicitGemmConv {
            kernel: self.geometry.kernel,
        };
        x.contiguous()?
            .apply_op3_no_bwd(&self.weight, &self.bias, &op)
    }

    /// The banded im2col kernel with at most `column_elements` in a band's column matrix.
    fn im2col(&self, x: &Tensor, column_elements: usize) -> Result<Tensor> {
        let op = Im2colConv {
            geometry: self.geometry,
            column_elements,
        };
        x.contiguous()?
            .apply_op3_no_bwd(&self.weight, &self.bias, &op)
    }

    /// candle's conv2d, which pads symmetrically only: asymmetric padding is added explicitly.
    fn candle(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geometry;
        let (x, padding) = match g.pad_before == g.pad_after {
            true => (x.clone(), g.pad_before),
            false => {
                let x = x.pad_with_zeros(D::Minus1, g.pad_before, g.pad_after)?;
                (x.pad_with_zeros(D::Minus2, g.pad_before, g.pad_after)?, 0)
            }
        };
        let y = x.conv2d(&self.weight, padding, g.stride, 1, 1)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// The kernels' GEMMs use candle's thread count (and skip rayon altogether when it is one).
fn gemm_parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

impl candle_core::Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_testkit::max_abs_diff;

    fn random(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn conv(geometry: ConvGeometry, cin: usize, cout: usize) -> Conv2d {
        let k = geometry.kernel;
        Conv2d {
            weight: random(&[cout, cin, k, k], DType::F32),
            bias: random(&[cout], DType::F32),
            geometry,
        }
    }

    /// candle's conv2d in f64: the reference the f32 kernels are held to.
    fn reference(conv: &Conv2d, x: &Tensor) -> Tensor {
        let wide = Conv2d {
            weight: conv.weight.to_dtype(DType::F64).unwrap(),
            bias: conv.bias.to_dtype(DType::F64).unwrap(),
            geometry: conv.geometry,
        };
        let y = wide.candle(&x.to_dtype(DType::F64).unwrap()).unwrap();
        y.to_dtype(DType::F32).unwrap()
    }

    /// Every CPU kernel on every geometry it runs (the UNet's and the VAE's: same 3x3 and 1x1,
    /// stride 2 with symmetric and with bottom/right-only padding, and a 5x5), on odd and even
    /// sizes, inputs barely larger than the kernel, and a batch of two; the banded im2col
    /// both with one band per image and with one output row per band.
    #[test]
    fn cpu_kernels_match_candle_conv() {
        let geometries = [
            (ConvGeometry::same(3), 5, 7),
            (ConvGeometry::same(1), 6, 3),
            (ConvGeometry::same(5), 3, 4),
            (ConvGeometry::symmetric(3, 2, 1), 4, 5),
            (
                ConvGeometry {
                    kernel: 3,
                    stride: 2,
                    pad_before: 0,
                    pad_after: 1,
                },
                4,
                4,
            ),
        ];
        for (geometry, cin, cout) in geometries {
            let conv = conv(geometry, cin, cout);
            for (h, w) in [(9, 7), (8, 8), (2, 3)] {
                let x = random(&[2, cin, h, w], DType::F32);
                let expected = reference(&conv, &x);
                let mut results = vec![
                    ("im2col, one band", conv.im2col(&x, im2col::COLUMN_ELEMENTS)),
                    ("im2col, one row per band", conv.im2col(&x, 1)),
                    ("forward", conv.forward(&x)),
                ];
                if geometry.is_same() {
                    results.push(("implicit GEMM", conv.implicit_gemm(&x)));
                }
                // Outputs are sums of up to 75 products of unit normals (|y| up to ~30): the
                // kernels add in another order than candle, a few f32 ulps of that apart
                // (1.1e-5 was seen). A wrong tap or offset is off by O(1).
                for (what, got) in results {
                    let diff = max_abs_diff(&got.unwrap(), &expected);
                    assert!(diff < 1e-4, "{what}, {geometry:?} on {h}x{w}: {diff}");
                }
            }
        }
    }

    /// The choice of kernel: candle off the CPU-f32 path, the implicit GEMM only for "same"
    /// convolutions with few output channels and a cache-sized input.
    #[test]
    fn kernel_choice() {
        let x = random(&[1, 2, 32, 32], DType::F32);
        let choice = |geometry, cout| conv(geometry, 2, cout).kernel_for(&x).unwrap();
        assert_eq!(choice(ConvGeometry::same(3), 4), ConvKernel::ImplicitGemm);
        assert_eq!(choice(ConvGeometry::same(3), 64), ConvKernel::Im2colBands);
        assert_eq!(choice(ConvGeometry::same(1), 4), ConvKernel::Im2colBands);
        let down = ConvGeometry::symmetric(3, 2, 1);
        assert_eq!(choice(down, 4), ConvKernel::Im2colBands);
        assert!(conv(down, 2, 4)
            .forward_with(&x, ConvKernel::ImplicitGemm)
            .is_err());
        // Padded to 2042 (2102) pixels square, 2 input channels take 31.8 (33.7) MiB.
        let small_out = conv(ConvGeometry::same(3), 2, 4);
        for (size, kernel) in [
            (2040, ConvKernel::ImplicitGemm),
            (2100, ConvKernel::Im2colBands),
        ] {
            let image = Tensor::zeros((1, 2, size, size), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(small_out.kernel_for(&image).unwrap(), kernel, "{size} px");
        }
        let half = x.to_dtype(DType::F16).unwrap();
        assert_eq!(small_out.kernel_for(&half).unwrap(), ConvKernel::Candle);
        assert!(small_out
            .forward_with(&half, ConvKernel::Im2colBands)
            .is_err());
    }

    /// The candle path (what CUDA and half precision run), asymmetric padding included,
    /// against the f32 kernels.
    #[test]
    fn candle_path_matches_in_half_precision() {
        let down = ConvGeometry {
            kernel: 3,
            stride: 2,
            pad_before: 0,
            pad_after: 1,
        };
        for geometry in [ConvGeometry::same(3), down] {
            let conv32 = conv(geometry, 4, 6);
            let conv16 = Conv2d {
                weight: conv32.weight.to_dtype(DType::F16).unwrap(),
                bias: conv32.bias.to_dtype(DType::F16).unwrap(),
                geometry,
            };
            let x = random(&[1, 4, 7, 6], DType::F32);
            let expected = conv32.forward(&x).unwrap();
            let got = conv16
                .forward(&x.to_dtype(DType::F16).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            // f16 keeps 11 bits of mantissa: sums of 36 products of unit normals.
            let diff = max_abs_diff(&got, &expected);
            assert!(diff < 0.05, "{geometry:?}: {diff}");
        }
    }
}
