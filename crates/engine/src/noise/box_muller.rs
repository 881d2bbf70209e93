//! torch's float Box-Muller over blocks of 16 uniforms, bit for bit as x86-64 torch builds run
//! it (the AVX2 kernel, also used when torch reports AVX512).
//!
//! That kernel does not call libm: it evaluates Cephes-style polynomials for `log` and `sincos`
//! (Pommier's `sse_mathfun` ported to AVX), compiled with GCC's default floating-point
//! contraction, so every `a * b + c` in them is one fused multiply-add. Reproducing its bits
//! therefore means the same constants, the same operation order and the same fusions; libm's
//! `logf`/`sinf`/`cosf` would differ from torch by an ulp or so on about a tenth of the values.
//! The functions below are written lane by lane (only the arguments Box-Muller feeds them are
//! supported) and use `mul_add` wherever torch's kernel fused.

/// Every constant goes through f64 first, as the C initialisers (double literals stored into
/// float arrays) do; parsing the decimal straight to f32 could round differently.
mod consts {
    pub const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

    pub const SQRT_HALF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    pub const LOG_POLY: [f32; 9] = [
        7.0376836292E-2f64 as f32,
        -1.1514610310E-1f64 as f32,
        1.1676998740E-1f64 as f32,
        -1.2420140846E-1f64 as f32,
        1.4249322787E-1f64 as f32,
        -1.6668057665E-1f64 as f32,
        2.0000714765E-1f64 as f32,
        -2.4999993993E-1f64 as f32,
        3.3333331174E-1f64 as f32,
    ];
    /// ln 2 split in two (`LN2_HI + LN2_LO`), so `e * ln 2` keeps its precision.
    pub const LN2_LO: f32 = -2.12194440e-4f64 as f32;
    pub const LN2_HI: f32 = 0.693359375f64 as f32;

    pub const FOUR_OVER_PI: f32 = 1.27323954473516f64 as f32;
    /// -pi/4 split in three, for the extended-precision argument reduction.
    pub const MINUS_PI4: [f32; 3] = [
        -0.78515625f64 as f32,
        -2.418_756_484_985_351_6e-4_f64 as f32,
        -3.774894977445941e-8f64 as f32,
    ];
    pub const SIN_POLY: [f32; 3] = [
        -1.9515295891E-4f64 as f32,
        8.3321608736E-3f64 as f32,
        -1.6666654611E-1f64 as f32,
    ];
    pub const COS_POLY: [f32; 3] = [
        2.443315711809948E-5f64 as f32,
        -1.388731625493765E-3f64 as f32,
        4.166664568298827E-2f64 as f32,
    ];
}

/// Turns `data` (a whole number of 16-value blocks of uniforms in [0, 1)) into normals,
/// block by block: within a block, values `j` and `j + 8` form one Box-Muller pair
/// (radius from `1 - data[j]`, angle from `data[j + 8]`) and become cos and sin.
pub(super) fn transform_blocks(data: &mut [f32]) {
    debug_assert_eq!(data.len() % 16, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU was just checked to have the features this variant is compiled for.
        unsafe { transform_blocks_fma(data) };
        return;
    }
    transform_blocks_portable(data);
}

/// The same code compiled with hardware FMA (and 8-lane AVX2 vectors): `mul_add` becomes one
/// instruction instead of a libm call, which is what makes a 4x128x128 draw take well under a
/// millisecond. The results are identical either way (a fused multiply-add is exactly
/// specified).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn transform_blocks_fma(data: &mut [f32]) {
    transform_blocks_portable(data);
}

#[inline(always)]
fn transform_blocks_portable(data: &mut [f32]) {
    for block in data.chunks_exact_mut(16) {
        let (first, second) = block.split_at_mut(8);
        for (a, b) in first.iter_mut().zip(second.iter_mut()) {
            let (cos, sin) = normal_pair(*a, *b);
            *a = cos;
            *b = sin;
        }
    }
}

/// One Box-Muller pair from two uniforms in [0, 1).
#[inline(always)]
fn normal_pair(u_radius: f32, u_angle: f32) -> (f32, f32) {
    let radius = (-2.0 * log(1.0 - u_radius)).sqrt();
    let (sin, cos) = sincos(consts::TWO_PI * u_angle);
    // torch finishes with `x * std + mean` (std 1, mean 0): the value is unchanged except that
    // a -0 becomes +0, which the `+ 0.0` reproduces.
    (radius * cos + 0.0, radius * sin + 0.0)
}

/// Natural log for `x` in [2^-24, 1] (1 minus a 24-bit uniform): always a positive normal
/// float, so the kernel's clamping of denormals and NaN for `x <= 0` never apply.
#[inline(always)]
fn log(x: f32) -> f32 {
    use consts::*;
    let bits = x.to_bits();
    // Split x = m * 2^e with m in [0.5, 1), then move m to [sqrt(1/2), sqrt(2)) around 1.
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let below = m < SQRT_HALF;
    let mut x = m - 1.0;
    if below {
        e -= 1.0;
        x += m;
    }
    let z = x * x;
    let mut y = LOG_POLY[0];
    for &p in &LOG_POLY[1..] {
        y = y.mul_add(x, p);
    }
    y = (y * x).mul_add(z, e * LN2_LO);
    y = z.mul_add(-0.5, y);
    e.mul_add(LN2_HI, x + y)
}

/// `(sin x, cos x)` for `x` in [0, 2 pi): the angle is reduced to an octant by the
/// three-part -pi/4, then one polynomial gives the sine and the other the cosine of the
/// remainder, swapped and signed by the octant.
#[inline(always)]
fn sincos(x: f32) -> (f32, f32) {
    use consts::*;
    // Octant index rounded up to even (truncation is floor here, x being non-negative).
    let j = ((x * FOUR_OVER_PI) as i32 + 1) & !1;
    let jf = j as f32;
    let r = jf.mul_add(
        MINUS_PI4[2],
        jf.mul_add(MINUS_PI4[1], jf.mul_add(MINUS_PI4[0], x)),
    );
    let z = r * r;

    let c = COS_POLY[0].mul_add(z, COS_POLY[1]).mul_add(z, COS_POLY[2]) * z;
    let cos_r = c.mul_add(z, -(z * 0.5)) + 1.0;
    let s = SIN_POLY[0].mul_add(z, SIN_POLY[1]).mul_add(z, SIN_POLY[2]) * z;
    let sin_r = s.mul_add(r, r);

    // The kernel selects with masks and adds zeros, which can only change the sign of a zero;
    // `normal_pair` erases that sign anyway.
    let (sin, cos) = if j & 2 == 0 {
        (sin_r, cos_r)
    } else {
        (cos_r, sin_r)
    };
    let sin = if j & 4 != 0 { -sin } else { sin };
    let cos = if !(j - 2) & 4 != 0 { -cos } else { cos };
    (sin, cos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomials are approximations of the real functions: a wrong constant or a
    /// swapped octant shows up as an error far beyond the few-ulp accuracy they have.
    #[test]
    fn noise_kernel_math_approximates_log_and_sincos() {
        for i in 0..=4096u32 {
            let u = i as f32 / 4096.0;
            let x = 1.0 - u * (1.0 - 2f32.powi(-24));
            let ln = (x as f64).ln();
            assert!(
                (log(x) as f64 - ln).abs() < 1e-6 * (1.0 + ln.abs()),
                "log({x})"
            );
            let t = consts::TWO_PI * u * (1.0 - 2f32.powi(-24));
            let (s, c) = sincos(t);
            assert!((s as f64 - (t as f64).sin()).abs() < 1e-6, "sin({t})");
            assert!((c as f64 - (t as f64).cos()).abs() < 1e-6, "cos({t})");
        }
    }

    #[test]
    fn noise_portable_and_dispatched_transforms_agree() {
        let uniforms: Vec<f32> = (0..1024u32)
            .map(|i| (i * 16_381 % 16_384) as f32 / 16_384.0)
            .collect();
        let mut a = uniforms.clone();
        let mut b = uniforms;
        transform_blocks(&mut a);
        transform_blocks_portable(&mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
