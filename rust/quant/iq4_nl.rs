//! IQ4_NL: 32 weights per 18-byte block: f16 scale `d`, then 16 bytes of 4-bit indices in
//! Q4_0's nibble layout. Value = `d * KVALUES[index]` (the non-linear table, `iq4.rs`).

use super::block::{bytes_of, i8_bytes, Family, Pod, Scale};
use super::fp16::F16;
use super::iq4::{self, Iq4Out, KVALUES};
use super::q4_0::{self, combine, GroupParts, NibbleGroup, Q4Aux, LANE_BLOCK};
use super::q8_0::BlockQ8_0;
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIq4Nl {
    pub d: F16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);
// SAFETY: byte arrays and a Pod scale (alignment 1), no padding.
unsafe impl Pod for BlockIq4Nl {}

impl Family for BlockIq4Nl {
    const QK: usize = QK;
    type Act = BlockQ8_0;
    type Aux = Q4Aux;

    /// llama.cpp's `quantize_iq4_nl` without importance weights: the impl function on one
    /// 32-weight block.
    fn quantize(x: &[f32], out: &mut Self) {
        iq4::quantize_impl(
            x,
            Iq4Out {
                d: &mut out.d,
                qs: &mut out.qs,
                scales_h: &mut [0; 2],
                scales_l: &mut [],
            },
        );
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        for j in 0..QK / 2 {
            y[j] = d * KVALUES[(self.qs[j] & 0x0f) as usize] as f32;
            y[j + QK / 2] = d * KVALUES[(self.qs[j] >> 4) as usize] as f32;
        }
    }

    /// Exact integer sum per block (|.| <= 32 * 127 * 128), `acc[b % 8] += (d_w * d_x) *
    /// isum`, fixed reduction.
    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                let lo = KVALUES[(wb.qs[j] & 0x0f) as usize] as i32;
                let hi = KVALUES[(wb.qs[j] >> 4) as usize] as i32;
                isum += lo * yb.qs[j] as i32 + hi * yb.qs[QK / 2 + j] as i32;
            }
            acc[b % BLOCK_LANES] += (wb.d.get() * yb.d.get()) * isum as f32;
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| {
            let wv = iq4::lookup_portable(&w[b].qs).cast::<i16>();
            // |products| <= 127 * 128: exact in i16, summed in i32.
            (wv * i8x32::from_array(y[b].qs).cast::<i16>())
                .cast::<i32>()
                .reduce_sum()
        }));
        let dw = F16::lanes_portable(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let ones = _mm256_set1_epi16(1);
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            let wv = iq4::x86::lookup_avx2(&w[b].qs);
            let yv = load32(i8_bytes(&y[b].qs));
            *vb = _mm256_madd_epi16(iq4::x86::mul_pairs_avx2(wv, yv), ones);
        }
        let isum = hsum8_epi32(v);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_avx2(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    /// Two blocks per 512-bit vector: the table biased to unsigned bytes, `vpdpbusd`, and the
    /// bias taken off again (`iq4::x86::dot_biased_avx512`).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        // A loop, not `array::from_fn`: a closure does not inherit the caller's target
        // features, and its intrinsics then stay calls (0.2 against 11 GB/s, measured).
        let mut z = [_mm512_setzero_si512(); BLOCK_LANES / 2];
        for (k, zk) in z.iter_mut().enumerate() {
            let (b0, b1) = (2 * k, 2 * k + 1);
            let wu = iq4::x86::lookup2_biased_avx512(&w[b0].qs, &w[b1].qs);
            let yv = load32x2(i8_bytes(&y[b0].qs), i8_bytes(&y[b1].qs));
            *zk = iq4::x86::dot_biased_avx512(wu, yv);
        }
        let isum = hsum_pairs_epi32(z);
        let dw = F16::lanes_strided_avx512(bytes_of(w), std::mem::size_of::<Self>());
        let dx = F16::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8_0>());
        *acc += combine(dw, dx, isum);
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8_0]) -> Option<Q4Aux> {
        Some(q4_0::x4_aux(y))
    }

    fn aux_fits(aux: &Q4Aux, y: &[BlockQ8_0]) -> bool {
        q4_0::x4_aux_fits(aux, y)
    }

    /// Q4_0's multi-row driver and activation layout (`NibbleGroup` below).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&Q4Aux; N]) -> [f32; N] {
        q4_0::row_xn::<Self, N, false>(w, aux)
    }

    /// [`Family::row_xn_avx2`] with `vpdpbusd`.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&Q4Aux; N]) -> [f32; N] {
        q4_0::row_xn::<Self, N, true>(w, aux)
    }
}

/// One group of 8 blocks against `N` activation rows in Q4_0's layout (`q4_0::x4_aux`): the
/// indices transposed as Q4_0's nibbles and looked up per vector. AVX2: the exact sign trick
/// (`iq4::x86::mul_pairs_avx2`), widened per vector; VNNI: the biased table with `vpdpbusd`,
/// minus `128 * sum(y)` (= `16 * s8`). The single-row kernel's integer and `combine`.
impl NibbleGroup for BlockIq4Nl {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        (yt, dx, s8): GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    ) {
        use simd::x86::*;
        let m4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let t = q4_0::transpose_qs(std::array::from_fn(|b| &w[b].qs));
        let table = load16(if VNNI {
            &iq4::KVALUES_BIASED
        } else {
            &iq4::KVALUES_U8
        });
        let table = _mm256_broadcastsi128_si256(table);
        let mut s32 = [_mm256_setzero_si256(); N];
        for v in 0..8 {
            let tk = t[v / 2];
            let nib = if v % 2 == 0 {
                _mm256_and_si256(tk, m4)
            } else {
                _mm256_and_si256(_mm256_srli_epi16(tk, 4), m4)
            };
            let wv = _mm256_shuffle_epi8(table, nib);
            for n in 0..N {
                let y = load32(simd::arr::<32>(yt[n], 32 * v));
                s32[n] = if VNNI {
                    _mm256_dpbusd_epi32(s32[n], wv, y)
                } else {
                    let p = _mm256_madd_epi16(iq4::x86::mul_pairs_avx2(wv, y), ones);
                    _mm256_add_epi32(s32[n], p)
                };
            }
        }
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[LANE_BLOCK[b]].d));
        let bias = if VNNI { 16 } else { 0 };
        for n in 0..N {
            let isum = i32x8::from(s32[n]) - i32x8::splat(bias) * i32x8::from_array(*s8[n]);
            acc[n] += combine(dw, f32x8::from_array(*dx[n]), isum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp16::read_f16;
    use crate::quant::tests_util::{
        byte_shims, check_block_dot_paths, check_extreme_blocks, check_multi_row_paths,
        finite_half, known_input,
    };

    byte_shims!(BlockIq4Nl, [u8], crate::quant::tests_util::q8s);

    fn quantize(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK * BLOCK_BYTES];
        quantize_row(x, &mut out);
        out
    }

    fn dequantize(b: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; b.len() / BLOCK_BYTES * QK];
        dequantize_row(b, &mut out);
        out
    }

    #[test]
    fn table_values_come_back_exactly() {
        // A block made of table values (times 1/64, exact in f16): the fit finds the scale
        // 1/64 (every value lands on its entry, sum w q x / sum w q^2 = 1/64 exactly) and
        // every value comes back.
        let x: Vec<f32> = (0..32)
            .map(|j| KVALUES[(j * 7) % 16] as f32 / 64.0)
            .collect();
        let b = quantize(&x);
        assert_eq!(read_f16(&b), 1.0 / 64.0);
        for j in 0..16 {
            assert_eq!(b[2 + j] & 15, ((j * 7) % 16) as u8);
            assert_eq!(b[2 + j] >> 4, (((j + 16) * 7) % 16) as u8);
        }
        assert_eq!(dequantize(&b), x);
        // Against an all-ones q8_0 block with d = 1: the sum of the table values used.
        let mut yb = vec![0u8; 34];
        yb[..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        yb[2..].fill(1);
        let isum: i32 = (0..32).map(|j| KVALUES[(j * 7) % 16] as i32).sum();
        let want = (1.0f32 / 64.0) * isum as f32;
        assert_eq!(vec_dot_scalar(&b, &yb), want);
        assert_eq!(vec_dot(&b, &yb), want);
    }

    #[test]
    fn edge_blocks() {
        // Zeros (and anything below GROUP_MAX_EPS): scale 0, index 8 (the entry nearest 0).
        for v in [0.0f32, 1e-16, -3e-16] {
            let b = quantize(&[v; 32]);
            assert_eq!(&b[..2], &[0, 0]);
            assert!(b[2..].iter().all(|&q| q == 0x88), "{b:?}");
        }
        // All equal: one table entry times the fitted scale gives the value back (to f16).
        let y = dequantize(&quantize(&[-1.5; 32]));
        assert!(y.iter().all(|&v| (v + 1.5).abs() < 1e-3), "{y:?}");
        for scale in [1e-30f32, 1e-40, 1e30, 3e38, 4000.0] {
            let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * scale).collect();
            let _ = dequantize(&quantize(&x));
        }
        let mut x = [1.0f32; 32];
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[3] = f32::INFINITY;
        x[4] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
        let x = known_input(1001, 32 * 64);
        let y = dequantize(&quantize(&x));
        assert!(y.iter().all(|v| !v.is_nan()));
    }

    #[test]
    fn round_trip_error_is_small() {
        let x = known_input(5, 32 * 64);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, r) in xb.iter().zip(yb) {
                // Half the widest gap of the table (24 of 113) with room for the fitted
                // scale, plus the f16 rounding of a subnormal scale (2^-25) times |q| <= 127.
                assert!((a - r).abs() <= amax * 0.15 + 127.0 * 3e-8, "{a} vs {r}");
            }
        }
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockIq4Nl>(|b, rng| b.d = finite_half(rng));
        check_extreme_blocks::<BlockIq4Nl>(|b, h| b.d = F16(h.to_le_bytes()));
    }

    #[test]
    fn multi_row_equals_single_row_exactly() {
        check_multi_row_paths::<BlockIq4Nl>(|b, rng| b.d = finite_half(rng));
    }
}
