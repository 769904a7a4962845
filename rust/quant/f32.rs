//! F32 rows: little-endian f32 bytes, and the F32 x f32 dot kernel.

use super::simd::{self, float_dot, FloatKernel, FLOAT_LANES};
use std::simd::prelude::*;

pub(crate) fn quantize_row(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * 4);
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(4)) {
        out.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 4);
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Reference: `acc[i % 32] += w[i] * x[i]`, then the fixed reduction.
pub(crate) fn vec_dot_scalar(w: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(w.len(), x.len() * 4);
    let mut acc = [0f32; FLOAT_LANES];
    for (i, (wb, &xv)) in w.chunks_exact(4).zip(x).enumerate() {
        acc[i % FLOAT_LANES] += f32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]]) * xv;
    }
    simd::reduce32(&acc)
}

/// Plain std::simd: the same code serves both builds, only the target features differ.
struct Kernel;
impl FloatKernel for Kernel {
    const ELEM_BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(b: &[u8]) -> f32x8 {
        simd::load_f32x8_le(simd::arr::<32>(b, 0))
    }
}

pub(crate) fn vec_dot_portable(w: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the kernel needs no CPU feature.
    unsafe { float_dot::<Kernel>(w, x) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot_avx2(w: &[u8], x: &[f32]) -> f32 {
    float_dot::<Kernel>(w, x)
}

pub(crate) fn vec_dot(w: &[u8], x: &[f32]) -> f32 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2() {
        // SAFETY: checked just above.
        return unsafe { vec_dot_avx2(w, x) };
    }
    vec_dot_portable(w, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::Rng;

    #[test]
    fn row_round_trip_is_exact() {
        let src = [
            0.0,
            -0.0,
            1.5,
            -3.25e-30,
            1e30,
            f32::INFINITY,
            f32::MIN_POSITIVE,
        ];
        let mut b = vec![0u8; src.len() * 4];
        quantize_row(&src, &mut b);
        assert_eq!(&b[8..12], &1.5f32.to_le_bytes());
        let mut back = vec![0f32; src.len()];
        dequantize_row(&b, &mut back);
        for (a, b) in src.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn dot_follows_the_documented_order() {
        // 33 elements: lane 0 gets elements 0 and 32, in that order.
        let mut w = vec![0f32; 33];
        let x = vec![1f32; 33];
        w[0] = 1e8;
        w[32] = 1.0;
        w[5] = -1e8;
        let mut wb = vec![0u8; 33 * 4];
        quantize_row(&w, &mut wb);
        // acc[0] = 1e8 + 1 = 1e8 (rounded), acc[5] = -1e8 -> total 0.
        assert_eq!(vec_dot_scalar(&wb, &x), 0.0);
        assert_eq!(vec_dot(&wb, &x), 0.0);
    }

    #[test]
    fn dot_paths_agree_exactly() {
        let mut rng = Rng::new(11);
        for n in (0..=100).chain([127, 128, 129, 1000, 4096, 4099]) {
            for _ in 0..4 {
                let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();
                let x: Vec<f32> = (0..n).map(|_| rng.normal() * 10.0).collect();
                // Odd offset: the row need not be 4-byte aligned.
                let mut buf = vec![0u8; n * 4 + 3];
                quantize_row(&wf, &mut buf[3..]);
                let w = &buf[3..];
                let r = vec_dot_scalar(w, &x);
                assert_eq!(vec_dot_portable(w, &x).to_bits(), r.to_bits(), "n={n}");
                assert_eq!(vec_dot(w, &x).to_bits(), r.to_bits(), "n={n}");
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                if simd::has_avx2() {
                    assert_eq!(
                        unsafe { vec_dot_avx2(w, &x) }.to_bits(),
                        r.to_bits(),
                        "n={n}"
                    );
                }
                // And it is a dot product: close to the f64 value.
                let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = wf
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                assert!((r as f64 - exact).abs() <= 1e-5 * mag + 1e-30, "n={n}");
            }
        }
    }
}
