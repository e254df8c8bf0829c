//! Element-wise math for the CPU kernels: scalar loops compiled twice (for
//! AVX2+FMA, chosen at run time where the CPU has them, and for the baseline
//! target), and AVX2 register versions for the matrix kernels' epilogues.
//!
//! `exp` and `erf` are polynomial approximations so that they vectorise
//! (`exp`: relative error < 2e-7; `erf`: absolute error < 6e-7, the formula
//! of PyTorch's vectorised CPU `erf`).
use crate::config::Activation;

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two (Cody–Waite) so that x − n·ln 2 stays exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `eˣ`, relative error below 2e-7 on [−87, 88]; below that it returns
/// ~1e-38 instead of 0 (harmless where it is used: softmax numerators).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5·2²³ (exact for |v| < 2²²): the
    // integer then sits in the low bits of the sum. `round()` and `as i32`
    // would not vectorise.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * LOG2E + ROUND;
    let k = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial for e^r − 1 − r on |r| ≤ ln2/2.
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((k.wrapping_add(127) as u32) << 23)
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7 in exact
/// arithmetic, 5.3e-7 measured in f32): the formula of PyTorch's
/// vectorised CPU `erf`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `tanh(z) = 1 − 2 / (e^{2z} + 1)`.
#[inline(always)]
fn tanh(z: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * z) + 1.0)
}

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(0.797_884_6 * (x + 0.044_715 * x * x * x)))
}

/// The activation `act` of one value (identity for `None`).
#[inline(always)]
pub fn act(x: f32, act: Option<Activation>) -> f32 {
    match act {
        None => x,
        Some(Activation::Gelu) => gelu_erf(x),
        Some(Activation::GeluNew) => gelu_tanh(x),
        Some(Activation::Relu) => x.max(0.0),
        Some(Activation::Tanh) => tanh(x),
        Some(Activation::Silu) => x / (1.0 + exp(-x)),
    }
}

/// Whether the AVX-512 (F) paths can run here.
#[inline(always)]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 + FMA paths can run here.
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if has_avx2_fma() {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

dispatch! {
    /// Σ row, in 8 lanes (a single running sum would chain every add).
    fn sum(row: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (s, &v) in lanes.iter_mut().zip(c) {
                *s += v;
            }
        }
        lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
    }
}

dispatch! {
    /// Σ (v − mean)², in 8 lanes.
    fn sum_sq_dev(row: &[f32], mean: f32) -> f32 {
        let mut lanes = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (s, &v) in lanes.iter_mut().zip(c) {
                let d = v - mean;
                *s += d * d;
            }
        }
        lanes.iter().sum::<f32>()
            + chunks.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>()
    }
}

/// LayerNorm of one row in place: `(v − mean)/√(var + eps)·γ + β`, the
/// variance of the centred values (two passes, as candle and PyTorch).
pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let k = row.len() as f32;
    let mean = sum(row) / k;
    let rstd = 1.0 / (sum_sq_dev(row, mean) / k + eps).sqrt();
    normalize(row, mean, rstd, gamma, beta);
}

dispatch! {
    /// `row = (row − mean)·rstd·γ + β`.
    fn normalize(row: &mut [f32], mean: f32, rstd: f32, gamma: &[f32], beta: &[f32]) {
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * rstd * g + b;
        }
    }
}

dispatch! {
    /// `row += other`.
    fn add(row: &mut [f32], other: &[f32]) {
        row.iter_mut().zip(other).for_each(|(y, o)| *y += o);
    }
}

/// `row = exp(row − max(row))` in place; returns the sum: a softmax whose
/// division by the sum is left to the caller (the attention divides its
/// output rows, half as many values).
pub fn exp_shifted(row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::exp_shifted(row) };
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum
}

/// AVX2 register versions of `exp`, `erf` and the activations, for tiles
/// still in registers. Same polynomials as the scalar ones above.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{LN2_HI, LN2_LO, LOG2E};
    use crate::config::Activation;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
            _mm256_set1_ps(88.0),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let y = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    /// The 8×8 transpose: `out[k]` holds lane `k` of every `rows[i]`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// `row = exp(row − max(row))` in place; returns the sum (a softmax
    /// without its last division, which the caller folds in later).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(row: &mut [f32]) -> f32 {
        let n = row.len();
        let p = row.as_mut_ptr();
        let full = n - n % 8;
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < full {
            m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let mut max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for &v in &row[full..] {
            max = max.max(v);
        }
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            s = _mm256_add_ps(s, e);
            i += 8;
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), s);
        let mut sum: f32 = lanes.iter().sum();
        for v in &mut row[full..] {
            *v = super::exp(*v - max);
            sum += *v;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn erf(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_andnot_ps(sign, x);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), a, one));
        let mut p = _mm256_set1_ps(1.061_405_4);
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453_152_1));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421_413_8));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284_496_74));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254_829_6));
        p = _mm256_mul_ps(p, t);
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
        let y = _mm256_fnmadd_ps(p, e, one);
        _mm256_or_ps(y, _mm256_and_ps(x, sign))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tanh(z: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp(_mm256_add_ps(z, z));
        _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn act(x: __m256, act: Activation) -> __m256 {
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        match act {
            Activation::Gelu => {
                let e = erf(_mm256_mul_ps(
                    x,
                    _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
                ));
                _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, e))
            }
            Activation::GeluNew => {
                let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                let inner = _mm256_mul_ps(
                    _mm256_set1_ps(0.797_884_6),
                    _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x),
                );
                _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh(inner)))
            }
            Activation::Relu => _mm256_max_ps(x, _mm256_setzero_ps()),
            Activation::Tanh => tanh(x),
            Activation::Silu => {
                let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
                _mm256_div_ps(x, _mm256_add_ps(one, e))
            }
        }
    }
}

/// AVX-512 versions of [`avx2`]'s `exp`, `erf` and GELU, op for op (the
/// same values), for the 512-bit tiles' epilogue, and the attention's
/// softmax.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{LN2_HI, LN2_LO, LOG2E};
    use crate::config::Activation;

    /// f32 lanes of a 512-bit register.
    const LANES: usize = 16;

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
            _mm512_set1_ps(88.0),
        );
        // Round to nearest, no exceptions (scale 0).
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let y = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        _mm512_mul_ps(y, _mm512_castsi512_ps(e))
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub unsafe fn erf(x: __m512) -> __m512 {
        let sign = _mm512_set1_epi32(i32::MIN);
        let xi = _mm512_castps_si512(x);
        let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
        let one = _mm512_set1_ps(1.0);
        let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), a, one));
        let mut p = _mm512_set1_ps(1.061_405_4);
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453_152_1));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421_413_8));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284_496_74));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254_829_6));
        p = _mm512_mul_ps(p, t);
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
        let y = _mm512_castps_si512(_mm512_fnmadd_ps(p, e, one));
        _mm512_castsi512_ps(_mm512_or_si512(y, _mm512_and_si512(xi, sign)))
    }

    /// `row = exp(row − max(row))` over `n` values at `p`; returns their sum
    /// (the attention's softmax). Inlined whole into its caller, which
    /// enables AVX-512 F.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `p` is valid for `n` values.
    #[inline(always)]
    pub unsafe fn exp_shifted(p: *mut f32, n: usize) -> f32 {
        let full = n - n % LANES;
        let tail: __mmask16 = (1 << (n % LANES)) - 1;
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(LANES) {
            m = _mm512_max_ps(m, _mm512_loadu_ps(p.add(i)));
        }
        if tail != 0 {
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, tail, p.add(full)));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        for i in (0..full).step_by(LANES) {
            let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
            _mm512_storeu_ps(p.add(i), e);
            sum = _mm512_add_ps(sum, e);
        }
        if tail != 0 {
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p.add(full)), max));
            _mm512_mask_storeu_ps(p.add(full), tail, e);
            sum = _mm512_mask_add_ps(sum, tail, sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// The activation: GELU (the audio tower's and RoBERTa's) in 512-bit
    /// registers, the others as two AVX2 halves.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub unsafe fn act(x: __m512, act: Activation) -> __m512 {
        match act {
            Activation::Gelu => {
                let e = erf(_mm512_mul_ps(
                    x,
                    _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
                ));
                _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_set1_ps(0.5), x),
                    _mm512_add_ps(_mm512_set1_ps(1.0), e),
                )
            }
            other => {
                let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x));
                let lo = super::avx2::act(_mm512_castps512_ps256(x), other);
                let hi = super::avx2::act(_mm256_castpd_ps(hi), other);
                let wide = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(wide, _mm256_castps_pd(hi)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_2e_7_relative() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert!(exp(-1e30) < 1e-37 && exp(-1e30) >= 0.0);
    }

    #[test]
    fn erf_matches_the_series_to_1e_6_absolute() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = libm_erf(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - want).abs());
            x += 0.001;
        }
        assert!(worst < 1e-6, "worst absolute error {worst:e}");
        assert!(erf(0.0).abs() < 1e-7 && erf(-3.0) < -0.9999);
    }

    /// The AVX-512 versions give the AVX2 ones' values, to the bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_math_matches_avx2() {
        if !has_avx512() {
            println!("no AVX-512 on this CPU: skipped");
            return;
        }
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) * 0.004).collect();
        for act in [
            Activation::Gelu,
            Activation::GeluNew,
            Activation::Relu,
            Activation::Tanh,
            Activation::Silu,
        ] {
            for chunk in xs.chunks_exact(16) {
                let (mut wide, mut halves) = ([0f32; 16], [0f32; 16]);
                // SAFETY: AVX-512 (and so AVX2 and FMA) checked above.
                unsafe {
                    let v = avx512::act(_mm512_loadu_ps(chunk.as_ptr()), act);
                    _mm512_storeu_ps(wide.as_mut_ptr(), v);
                    for h in 0..2 {
                        let v = avx2::act(_mm256_loadu_ps(chunk[8 * h..].as_ptr()), act);
                        _mm256_storeu_ps(halves[8 * h..].as_mut_ptr(), v);
                    }
                }
                assert_eq!(wide, halves, "{act:?} at {}", chunk[0]);
            }
        }
    }

    /// The register versions (AVX2) give the scalar ones' values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_math_matches_scalar() {
        if !has_avx2_fma() {
            return;
        }
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) * 0.004).collect();
        for act in [
            Activation::Gelu,
            Activation::GeluNew,
            Activation::Relu,
            Activation::Tanh,
            Activation::Silu,
        ] {
            for chunk in xs.chunks_exact(8) {
                let mut got = [0f32; 8];
                // SAFETY: AVX2 and FMA checked above.
                unsafe {
                    let v = avx2::act(_mm256_loadu_ps(chunk.as_ptr()), act);
                    _mm256_storeu_ps(got.as_mut_ptr(), v);
                }
                for (&g, &x) in got.iter().zip(chunk) {
                    let want = super::act(x, Some(act));
                    assert!(
                        (g - want).abs() <= 2e-6 * want.abs().max(1.0),
                        "{act:?}({x}): {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_shifted_is_an_unnormalised_softmax() {
        for len in [6, 8, 13, 64] {
            let mut row: Vec<f32> = (0..len).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
            row[1] = 3.0;
            row[len - 1] = 3.0;
            row[2] = f32::MIN;
            let want: Vec<f64> = row.iter().map(|&v| (f64::from(v) - 3.0).exp()).collect();
            let sum = exp_shifted(&mut row);
            assert!(
                (f64::from(sum) - want.iter().sum::<f64>()).abs() < 1e-5,
                "{sum}"
            );
            assert_eq!(row[1], 1.0);
            assert_eq!(row[1], row[len - 1]);
            assert!(row[2] < 1e-30);
            for (a, b) in row.iter().zip(&want) {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-6 * b.max(1e-30) + 1e-37,
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let gamma = vec![2.0f32; 37];
        let beta = vec![1.0f32; 37];
        layer_norm(&mut row, &gamma, &beta, 1e-5);
        let mean: f32 = row.iter().sum::<f32>() / 37.0;
        let var: f32 = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 37.0;
        assert!(
            (mean - 1.0).abs() < 1e-5 && (var - 4.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }

    /// erf by its Taylor series / continued fraction in f64 (no libm erf in std).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            // Σ (−1)ⁿ x^(2n+1) / (n! (2n+1)), converges fast for |x| < 3.
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), accurate for x ≥ 3.
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
        };
        v.copysign(x)
    }
}
