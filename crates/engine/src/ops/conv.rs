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

/// Below this many output pixels per image a 3x3 "same" convolution runs the implicit GEMM;
/// from it on, the banded im2col. Measured with `examples/conv_time.rs` (2 shared AVX-512
/// cores; see its doc comment for the figures): the implicit GEMM wins on the UNet's 8-32 px
/// latents, where the extra pass over its padded and wide copies is small and im2col's nine-fold
/// column matrix is not; on the VAE's 256-512 px images the banded im2col wins, its GEMM
/// accumulating once per band where the implicit GEMM's nine passes each stream the whole
/// output.
const IMPLICIT_GEMM_MAX_PIXELS: usize = 64 * 64;

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

    pub fn geometry(&self) -> ConvGeometry {
        self.geometry
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, self.kernel_for(x)?)
    }

    /// The implementation `forward` uses for `x`.
    pub fn kernel_for(&self, x: &Tensor) -> Result<ConvKernel> {
        if !self.on_cpu_f32(x) {
            return Ok(ConvKernel::Candle);
        }
        let (_, _, h, w) = x.dims4()?;
        let g = self.geometry;
        Ok(
            match g.is_same() && g.kernel > 1 && h * w < IMPLICIT_GEMM_MAX_PIXELS {
                true => ConvKernel::ImplicitGemm,
                false => ConvKernel::Im2colBands,
            },
        )
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

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
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
                for (what, got) in results {
                    let diff = max_abs_diff(&got.unwrap(), &expected);
                    assert!(diff < 1e-5, "{what}, {geometry:?} on {h}x{w}: {diff}");
                }
            }
        }
    }

    /// The choice of kernel: candle off the CPU-f32 path, never the implicit GEMM where it
    /// cannot run, and the figures of `IMPLICIT_GEMM_MAX_PIXELS` for 3x3 "same".
    #[test]
    fn kernel_choice() {
        let same = conv(ConvGeometry::same(3), 2, 2);
        let small = random(&[1, 2, 32, 32], DType::F32);
        let large = random(&[1, 2, 64, 64], DType::F32);
        assert_eq!(same.kernel_for(&small).unwrap(), ConvKernel::ImplicitGemm);
        assert_eq!(same.kernel_for(&large).unwrap(), ConvKernel::Im2colBands);
        let down = conv(ConvGeometry::symmetric(3, 2, 1), 2, 2);
        assert_eq!(down.kernel_for(&small).unwrap(), ConvKernel::Im2colBands);
        assert!(down.forward_with(&small, ConvKernel::ImplicitGemm).is_err());
        let half = small.to_dtype(DType::F16).unwrap();
        assert_eq!(same.kernel_for(&half).unwrap(), ConvKernel::Candle);
        assert!(same.forward_with(&half, ConvKernel::Im2colBands).is_err());
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
