//! F32: a little-endian f32, as the element of F32 rows (against f32 activations) and as the
//! scale of the pre-GGUF blocks (`f32_scale.rs`).

use super::block::{Family, Pod, Scale};
use super::fp16::{f16_bits_to_f32, f32_to_f16_bits};
use super::simd::{self, FLOAT_LANES};
use std::simd::prelude::*;

/// A little-endian f32 at any alignment.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct F32(pub [u8; 4]);
const _: () = assert!(std::mem::size_of::<F32>() == 4);
// SAFETY: four bytes, alignment 1.
unsafe impl Pod for F32 {}

impl Scale for F32 {
    #[inline(always)]
    fn get(self) -> f32 {
        f32::from_le_bytes(self.0)
    }
    /// The scale rounded to f16 as today's quantizers store it, kept in f32: quantizing into
    /// f32-scale blocks (which nothing writes to a file) gives today's block, widened.
    #[inline(always)]
    fn store(v: f32) -> F32 {
        F32(f16_bits_to_f32(f32_to_f16_bits(v)).to_le_bytes())
    }
    #[inline(always)]
    fn lanes_portable(s: [F32; 8]) -> f32x8 {
        f32x8::from_array(s.map(F32::get))
    }
}

/// F32 rows against f32 activations: `acc[i % 32] += w[i] * x[i]`, then the fixed reduction.
/// Plain std::simd: the same code serves every instruction set.
impl Family for F32 {
    const QK: usize = 1;
    type Act = f32;
    type Aux = ();

    #[inline(always)]
    fn quantize(x: &[f32], out: &mut F32) {
        *out = F32(x[0].to_le_bytes());
    }
    #[inline(always)]
    fn dequantize(&self, y: &mut [f32]) {
        y[0] = self.get();
    }
    fn dot_scalar(w: &[F32], x: &[f32]) -> f32 {
        let mut acc = [0f32; FLOAT_LANES];
        for (i, (wv, &xv)) in w.iter().zip(x).enumerate() {
            acc[i % FLOAT_LANES] += wv.get() * xv;
        }
        simd::reduce32(&acc)
    }
    #[inline(always)]
    fn chunk_portable(acc: &mut [f32x8; 4], w: &[F32], x: &[f32]) {
        let (w, x): (&[F32; FLOAT_LANES], &[f32; FLOAT_LANES]) =
            (w.try_into().unwrap(), x.try_into().unwrap());
        for k in 0..4 {
            // SAFETY: 8 F32 are 32 bytes.
            let b: &[u8; 32] = unsafe { &*w[8 * k..].as_ptr().cast::<[u8; 32]>() };
            acc[k] += simd::load_f32x8_le(b) * f32x8::from_slice(&x[8 * k..8 * k + 8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::{byte_shims, Rng};

    byte_shims!(F32, [f32], crate::quant::tests_util::f32s);

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
