//! BF16: the upper half of an f32 (sign, 8 exponent bits, 7 mantissa bits), little-endian.
//! Rows multiply f32 activations as F16 rows do: `acc[i % 32] += w[i] * x[i]`, then the fixed
//! reduction (`simd::reduce32`).
//!
//! No AVX-512 BF16 instructions: `vdpbf16ps` takes bf16 activations (ours are f32) and adds
//! two products per lane before rounding, flushing subnormals, so its bits are not the
//! reference's. Widening bf16 is a shift, so the AVX2 kernel (built for AVX-512 at that
//! level) is already all loads and multiply-adds.

use super::block::{Family, Pod};
use super::simd::{self, FLOAT_LANES};
use std::simd::prelude::*;

#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BF16(pub [u8; 2]);
const _: () = assert!(std::mem::size_of::<BF16>() == 2);
// SAFETY: two bytes, alignment 1.
unsafe impl Pod for BF16 {}

impl BF16 {
    /// ggml's `ggml_compute_fp32_to_bf16` (which gguf's `BF16.quantize_blocks` follows): round
    /// to nearest even on the dropped 16 bits; a NaN keeps its top bits with the quiet bit
    /// forced (so it stays NaN), without rounding.
    pub fn from_f32(x: f32) -> BF16 {
        let u = x.to_bits();
        let h = if u & 0x7fff_ffff > 0x7f80_0000 {
            (u >> 16) | 64
        } else {
            // Wrapping as the C code's u32 arithmetic (only NaN bit patterns could carry out,
            // and they took the branch above).
            u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16
        };
        BF16((h as u16).to_le_bytes())
    }

    /// The value (exact).
    #[inline(always)]
    pub fn get(self) -> f32 {
        f32::from_bits((u16::from_le_bytes(self.0) as u32) << 16)
    }
}

/// An activation row for the multi-row kernel: the row again, zero-padded to whole chunks of
/// `FLOAT_LANES` (zeros add `+0.0`, as the single-row driver's padding does).
pub struct BfRow(Vec<f32>);

impl Family for BF16 {
    const QK: usize = 1;
    type Act = f32;
    type Aux = BfRow;

    #[inline(always)]
    fn quantize(x: &[f32], out: &mut BF16) {
        *out = BF16::from_f32(x[0]);
    }
    #[inline(always)]
    fn dequantize(&self, y: &mut [f32]) {
        y[0] = self.get();
    }
    fn dot_scalar(w: &[BF16], x: &[f32]) -> f32 {
        let mut acc = [0f32; FLOAT_LANES];
        for (i, (wv, &xv)) in w.iter().zip(x).enumerate() {
            acc[i % FLOAT_LANES] += wv.get() * xv;
        }
        simd::reduce32(&acc)
    }
    #[inline(always)]
    fn chunk_portable(acc: &mut [f32x8; 4], w: &[BF16], x: &[f32]) {
        let (w, x): (&[BF16; FLOAT_LANES], &[f32; FLOAT_LANES]) =
            (w.try_into().unwrap(), x.try_into().unwrap());
        for k in 0..4 {
            let h = u16x8::from_array(std::array::from_fn(|i| u16::from_le_bytes(w[8 * k + i].0)));
            let wv = f32x8::from_bits(h.cast::<u32>() << 16);
            acc[k] += wv * f32x8::from_slice(&x[8 * k..8 * k + 8]);
        }
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut [f32x8; 4], w: &[BF16], x: &[f32]) {
        use simd::x86::*;
        let (w, x): (&[BF16; FLOAT_LANES], &[f32; FLOAT_LANES]) =
            (w.try_into().unwrap(), x.try_into().unwrap());
        for k in 0..4 {
            let h = _mm_loadu_si128(w[8 * k..].as_ptr().cast());
            let wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
            acc[k] += f32x8::from(wv) * f32x8::from_slice(&x[8 * k..8 * k + 8]);
        }
    }

    const MULTI_ROW: bool = true;

    fn row_aux(x: &[f32]) -> Option<BfRow> {
        let mut v = x.to_vec();
        v.resize(x.len().div_ceil(FLOAT_LANES) * FLOAT_LANES, 0.0);
        Some(BfRow(v))
    }

    fn aux_fits(aux: &BfRow, x: &[f32]) -> bool {
        aux.0.len() == x.len().div_ceil(FLOAT_LANES) * FLOAT_LANES
    }

    /// Each chunk of 32 weights widened once for all `N` rows; per row the single-row
    /// kernel's lanes (`acc[i % 32] += w * x`, multiply then add) and reduction.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[BF16], aux: [&BfRow; N]) -> [f32; N] {
        use simd::x86::*;
        let chunks = w.len().div_ceil(FLOAT_LANES);
        assert!(
            aux.iter().all(|a| a.0.len() == chunks * FLOAT_LANES),
            "row_xn: activation length"
        );
        if N == 1 {
            // One row (generation): the single-row kernel, which streams faster alone.
            return std::array::from_fn(|n| {
                super::dispatch::dot_avx2::<BF16>(w, &aux[n].0[..w.len()])
            });
        }
        let mut acc = [<f32 as super::block::Activation>::acc_zero(); N];
        for c in 0..chunks {
            // Whole chunks in place; the last one zero-padded as the single-row driver pads it.
            let mut pad = [BF16::default(); FLOAT_LANES];
            let h: &[BF16] = if (c + 1) * FLOAT_LANES <= w.len() {
                &w[c * FLOAT_LANES..(c + 1) * FLOAT_LANES]
            } else {
                let part = &w[c * FLOAT_LANES..];
                pad[..part.len()].copy_from_slice(part);
                &pad
            };
            let wv: [f32x8; 4] = std::array::from_fn(|k| {
                let v = _mm_loadu_si128(h[8 * k..].as_ptr().cast());
                f32x8::from(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                    _mm256_cvtepu16_epi32(v),
                )))
            });
            for (a, x) in acc.iter_mut().zip(aux) {
                let x = &x.0[c * FLOAT_LANES..(c + 1) * FLOAT_LANES];
                for k in 0..4 {
                    a[k] += wv[k] * f32x8::from_slice(&x[8 * k..8 * k + 8]);
                }
            }
        }
        acc.map(<f32 as super::block::Activation>::finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::{byte_shims, Rng};

    byte_shims!(BF16, [f32], crate::quant::tests_util::f32s);

    fn bits(x: f32) -> u16 {
        u16::from_le_bytes(BF16::from_f32(x).0)
    }

    #[test]
    fn known_conversions() {
        assert_eq!(bits(1.0), 0x3f80);
        assert_eq!(bits(-2.0), 0xc000);
        assert_eq!(bits(0.0), 0x0000);
        assert_eq!(bits(-0.0), 0x8000);
        // Ties to even on the 16 dropped bits, both ways; a carry into the exponent.
        assert_eq!(bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bits(f32::from_bits(0x3fff_ffff)), 0x4000);
        // Overflow to infinity, infinities, subnormals kept (no flush).
        assert_eq!(bits(f32::MAX), 0x7f80);
        assert_eq!(bits(f32::INFINITY), 0x7f80);
        assert_eq!(bits(f32::NEG_INFINITY), 0xff80);
        assert_eq!(bits(f32::from_bits(0x0000_8000)), 0x0000);
        assert_eq!(bits(f32::from_bits(0x0001_8000)), 0x0002);
        // NaN: top bits kept, quiet bit forced, never rounded into infinity.
        assert_eq!(bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bits(f32::from_bits(0x7fff_ffff)), 0x7fff);
        assert_eq!(bits(f32::from_bits(0xff81_0000)), 0xffc1);
        for h in 0..=u16::MAX {
            let v = BF16(h.to_le_bytes()).get();
            if v.is_nan() {
                assert_eq!(bits(v), h | 0x40);
            } else {
                assert_eq!(bits(v), h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn dot_paths_agree_exactly() {
        let mut rng = Rng::new(17);
        for n in (0..=100).chain([127, 128, 129, 255, 256, 1000, 4096, 4097]) {
            for round in 0..4 {
                let mut w = vec![0u8; n * 2];
                if round % 2 == 0 {
                    let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
                    quantize_row(&wf, &mut w);
                } else {
                    // Raw bits with a finite exponent (every sign, subnormals, zeros).
                    for c in w.chunks_exact_mut(2) {
                        let h = (rng.next_u64() as u16) & 0xbfff;
                        c.copy_from_slice(&h.to_le_bytes());
                    }
                }
                let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let r = vec_dot_scalar(&w, &x);
                let ctx = format!("n={n} round={round}");
                assert_eq!(vec_dot_portable(&w, &x).to_bits(), r.to_bits(), "{ctx}");
                assert_eq!(vec_dot(&w, &x).to_bits(), r.to_bits(), "{ctx}");
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                {
                    if simd::has_avx2() {
                        let v = unsafe { vec_dot_avx2(&w, &x) };
                        assert_eq!(v.to_bits(), r.to_bits(), "avx2 {ctx}");
                    }
                    if simd::has_avx512() {
                        let v = unsafe {
                            crate::quant::dispatch::dot_avx512::<BF16>(crate::quant::view(&w), &x)
                        };
                        assert_eq!(v.to_bits(), r.to_bits(), "avx512 {ctx}");
                    }
                }
                // Every level again, and the multi-row kernels with 1 and 3 rows.
                let all = crate::quant::tests_util::check_dot_levels::<BF16>(
                    crate::quant::view(&w),
                    &x,
                    &ctx,
                );
                assert_eq!(all.to_bits(), r.to_bits(), "{ctx}");
                let mut shifted = vec![0u8; w.len() + 1];
                shifted[1..].copy_from_slice(&w);
                assert_eq!(vec_dot(&shifted[1..], &x).to_bits(), r.to_bits(), "{ctx}");
                // The reference is the dot product of the values (up to f32 rounding).
                let mut wd = vec![0f32; n];
                dequantize_row(&w, &mut wd);
                let exact: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = wd
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                if r.is_finite() {
                    assert!((r as f64 - exact).abs() <= 1e-5 * mag + 1e-30, "{ctx}");
                }
            }
        }
        crate::quant::tests_util::note_skipped_levels();
    }

    #[test]
    fn dot_small_known() {
        let mut w = vec![0u8; 6];
        quantize_row(&[1.0, 2.0, -3.0], &mut w);
        assert_eq!(vec_dot(&w, &[1.0, 0.5, 2.0]), -4.0);
        assert_eq!(vec_dot_scalar(&w, &[1.0, 0.5, 2.0]), -4.0);
    }
}
