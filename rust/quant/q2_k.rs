//! Q2_K: 256 weights per 84-byte super-block: 16 sub-blocks of 16, each with a 4-bit scale
//! (low nibble of `scales[s]`) and a 4-bit minimum (high nibble); 64 bytes of 2-bit levels;
//! then f16 `d` and `dmin`. Weight `i` is bits `2 k .. 2 k + 2` of `qs[32 (i / 128) + i % 32]`
//! with `k = (i % 128) / 32`. Value of weight `i` in sub-block `s = i / 16`:
//! `(d * sc_s) * q_i - dmin * m_s`.

use super::block::{i8_bytes, Family, Pod, Scale};
use super::fp16::F16;
use super::fp32::F32;
use super::kquant_dot::{combine, combine1};
use super::kquant_qx::{self, Offset, Q8KRows, SubBlocks16};
use super::kquant_search::{make_qkx2_quants, Qkx2};
use super::q8_k::{nearest_int, BlockQ8K, QK_K};
use super::simd::{self, BLOCK_LANES};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use kquant_qx::x86::{W256, W512};
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: F16,
    pub dmin: F16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
// SAFETY: byte arrays and f16 scales (alignment 1), no padding.
unsafe impl Pod for BlockQ2K {}

impl BlockQ2K {
    /// The 2-bit level of weight `i`.
    #[inline(always)]
    fn level(&self, i: usize) -> u8 {
        (self.qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3
    }
}

/// `pshufb` control: 16-bit lanes of the low 128-bit half = byte `lo` of the source half,
/// zero-extended; of the high half, byte `hi` (bit 7 of a control byte writes a zero).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn byte_to_words(lo: usize, hi: usize) -> simd::x86::__m256i {
    use simd::x86::*;
    _mm256_set_m128i(
        _mm_set1_epi16((0x8000 | hi) as i16),
        _mm_set1_epi16((0x8000 | lo) as i16),
    )
}

impl Family for BlockQ2K {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = Q8KRows;

    /// llama.cpp's `quantize_row_q2_K_ref` (what `llama-quantize` runs without an imatrix):
    /// `make_qkx2_quants` per 16 values with weights `|x|` and the absolute-error measure,
    /// scales and minimums to 4 bits against their largest, then every value re-quantized.
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK_K] = x.try_into().unwrap();
        let p = Qkx2 {
            nmax: 3,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) =
                make_qkx2_quants(p, xs, &weights, &mut l[16 * j..16 * j + 16], &mut laux);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        // C: `y[i].scales[j] = l` and `scales[j] |= (l << 4)` store ints into bytes (mod 256).
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for (o, &s) in out.scales.iter_mut().zip(&scales) {
                *o = nearest_int(iscale * s) as u8;
            }
            out.d = F16::store(max_scale / 15.0);
        } else {
            out.scales = [0; 16];
            out.d = F16::store(0.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for (o, &m) in out.scales.iter_mut().zip(&mins) {
                *o |= (nearest_int(iscale * m) << 4) as u8;
            }
            out.dmin = F16::store(max_min / 15.0);
        } else {
            out.dmin = F16::store(0.0);
        }
        let (d, dmin) = (out.d.get(), out.dmin.get());
        for j in 0..16 {
            let dj = d * (out.scales[j] & 0x0f) as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin * (out.scales[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
            }
        }
        for n in 0..2 {
            for k in 0..32 {
                let e = 128 * n + k;
                out.qs[32 * n + k] = l[e] | (l[e + 32] << 2) | (l[e + 64] << 4) | (l[e + 96] << 6);
            }
        }
    }

    /// gguf's `Q2_K.dequantize_blocks`: `(d * sc) * q - (dmin * m)` in f32.
    fn dequantize(&self, y: &mut [f32]) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        for (i, o) in y[..QK_K].iter_mut().enumerate() {
            let sc = self.scales[i / 16];
            *o = (d * (sc & 0x0f) as f32) * self.level(i) as f32 - dmin * (sc >> 4) as f32;
        }
    }

    /// Per super-block the exact `isum = sum_s sc_s * sum_{i in s} q_i y_i` and `msum =
    /// sum_s m_s * bsum_s`, then `kquant_dot::combine1`, fixed reduction. Bounds: |isum| <=
    /// 16 * 15 * 16 * 3 * 128 < 2^21, |msum| <= 16 * 15 * 2048 < 2^19.
    fn dot_scalar(w: &[Self], y: &[BlockQ8K]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let (mut isum, mut msum) = (0i32, 0i32);
            for s in 0..16 {
                let mut si = 0i32;
                for i in 16 * s..16 * s + 16 {
                    si += wb.level(i) as i32 * yb.qs[i] as i32;
                }
                isum += (wb.scales[s] & 0x0f) as i32 * si;
                msum += (wb.scales[s] >> 4) as i32 * yb.bsum(s) as i32;
            }
            acc[b % BLOCK_LANES] += combine1(wb.d.get(), wb.dmin.get(), yb.d.get(), isum, msum);
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let mut isum = [0i32; BLOCK_LANES];
        let mut msum = [0i32; BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let sc = u8x16::from_array(w[b].scales);
            let scl = (sc & u8x16::splat(0x0f)).to_array();
            for n in 0..2 {
                let q = u8x32::from_slice(&w[b].qs[32 * n..]);
                for k in 0..4 {
                    let lv = ((q >> (2 * k as u8)) & u8x32::splat(3)).cast::<i16>();
                    let yv = i8x32::from_slice(&y[b].qs[128 * n + 32 * k..]).cast::<i16>();
                    let s0 = 8 * n + 2 * k;
                    let scv = i16x32::from_array(std::array::from_fn(|i| scl[s0 + i / 16] as i16));
                    // |q * y * sc| <= 3 * 128 * 15 fits i16.
                    isum[b] += (lv * yv * scv).cast::<i32>().reduce_sum();
                }
            }
            // |m * bsum| <= 15 * 2048 fits i16.
            let m = (sc >> 4).cast::<i16>();
            msum[b] = (m * y[b].bsums_i16x16()).cast::<i32>().reduce_sum();
        }
        let d = F16::lanes_portable(std::array::from_fn(|b| w[b].d));
        let dmin = F16::lanes_portable(std::array::from_fn(|b| w[b].dmin));
        let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(
            d,
            dmin,
            dx,
            i32x8::from_array(isum),
            i32x8::from_array(msum),
        );
    }

    /// llama.cpp's AVX2 scheme: 32 levels at a time by shift and mask, `maddubs` with the
    /// activations (pair sums <= 2 * 3 * 128), `madd` with the two sub-blocks' scales
    /// zero-extended to words by one `pshufb`; the minimums by one `madd` with `bsums`.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0x0f);
        let mut vi = [_mm256_setzero_si256(); BLOCK_LANES];
        let mut vm = [_mm256_setzero_si256(); BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let sc = load16(&w[b].scales);
            let scl = _mm256_broadcastsi128_si256(_mm_and_si128(sc, m4));
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
            vm[b] = _mm256_madd_epi16(mins, _mm256_loadu_si256(y[b].bsums.as_ptr().cast()));
            let qy = i8_bytes(&y[b].qs);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let mut q = load32(simd::arr(&w[b].qs, 32 * n));
                for k in 0..4 {
                    let lv = _mm256_and_si256(q, m3);
                    q = _mm256_srli_epi16::<2>(q);
                    let p = _mm256_maddubs_epi16(lv, load32(simd::arr(qy, 128 * n + 32 * k)));
                    let s0 = 8 * n + 2 * k;
                    let scv = _mm256_shuffle_epi8(scl, byte_to_words(s0, s0 + 1));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
                }
            }
            vi[b] = sumi;
        }
        let d = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dmin = F16::lanes_avx2(std::array::from_fn(|b| w[b].dmin));
        let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(d, dmin, dx, hsum8_epi32(vi), hsum8_epi32(vm));
    }

    /// The shared 16-sub-block kernel at 512 bits with the levels premultiplied by their
    /// scales (`SubBlocks16::SCALED_FIT_U8`): one `vpdpbusd` per 64 weights. (A `vpdpwssd`
    /// version of llama.cpp's scheme did not beat the AVX2 kernel on the Xeon.)
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        kquant_qx::x86::chunk::<Self, W512>(acc, w, y)
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8K]) -> Option<Q8KRows> {
        Some(Q8KRows(y.to_vec()))
    }

    fn aux_fits(aux: &Q8KRows, y: &[BlockQ8K]) -> bool {
        aux.0.len() == y.len()
    }

    /// The shared 16-sub-block kernel (`kquant_qx::x86::row_xn`, [`Offset::Mins`]): each
    /// super-block's levels and scales unpacked once for all `N` rows.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&Q8KRows; N]) -> [f32; N] {
        kquant_qx::x86::row_xn::<Self, W256, N>(w, aux)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&Q8KRows; N]) -> [f32; N] {
        kquant_qx::x86::row_xn::<Self, W512, N>(w, aux)
    }
}

/// Q2_K as a 16-sub-block family for the shared kernels: levels 0..=3 with no offset, the
/// 4-bit scales (as i8) and 4-bit minimums. Bounds: `maddubs` pairs at most 2 * 3 * 128,
/// times a scale at most 15; `isum`, `msum` as in [`Family::dot_scalar`].
impl SubBlocks16 for BlockQ2K {
    const OFFSET: Offset = Offset::Mins;
    const SCALED_FIT_U8: bool = true;

    #[inline(always)]
    fn d(&self) -> F16 {
        self.d
    }

    #[inline(always)]
    fn dmin(&self) -> F16 {
        self.dmin
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn mins_avx2(&self) -> simd::x86::__m256i {
        use simd::x86::*;
        let sc = load16(&self.scales);
        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), _mm_set1_epi8(0x0f)))
    }

    /// Shift 2 k and mask of each 32 bytes of `qs`: 32 weights per vector, in order.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn unpack_avx2(&self) -> ([simd::x86::__m256i; 8], simd::x86::__m128i) {
        use simd::x86::*;
        let m3 = _mm256_set1_epi8(3);
        let mut q = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            // 16-bit shifts by 2 keep each byte's bits 0..2 its own (at most 6 bits down).
            let mut qs = load32(simd::arr(&self.qs, 32 * n));
            for k in 0..4 {
                q[4 * n + k] = _mm256_and_si256(qs, m3);
                qs = _mm256_srli_epi16::<2>(qs);
            }
        }
        (q, scales_x86(self))
    }

    /// `qs` and `qs >> 2` side by side, then shifts by 4: 64 weights per vector, in order.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn unpack_avx512(&self) -> ([simd::x86::__m512i; 4], simd::x86::__m128i) {
        use simd::x86::*;
        let m3 = _mm512_set1_epi8(3);
        let mut q = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let qs = load32(simd::arr(&self.qs, 32 * n));
            let qx =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qs), _mm256_srli_epi16::<2>(qs));
            q[2 * n] = _mm512_and_si512(qx, m3);
            q[2 * n + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(qx), m3);
        }
        (q, scales_x86(self))
    }
}

/// The 16 scales (low nibbles of `scales`) as i8.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn scales_x86(w: &BlockQ2K) -> simd::x86::__m128i {
    use simd::x86::*;
    _mm_and_si128(load16(&w.scales), _mm_set1_epi8(0x0f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::zeroed;
    use crate::quant::dispatch;
    use crate::quant::tests_util::{check_block_dot_paths, check_extreme_blocks, finite_half, Rng};
    use crate::quant::Activation;

    fn quantize(x: &[f32]) -> Vec<BlockQ2K> {
        let mut out = vec![zeroed::<BlockQ2K>(); x.len() / QK_K];
        dispatch::quantize(x, &mut out);
        out
    }

    fn dequantize(b: &[BlockQ2K]) -> Vec<f32> {
        let mut y = vec![0f32; b.len() * QK_K];
        dispatch::dequantize(b, &mut y);
        y
    }

    #[test]
    fn hand_computed_block() {
        // Sub-block s: scale s % 16, minimum 15 - s; weight i: level (i / 3) % 4, written by
        // hand into its byte and bit pair.
        let level = |i: usize| ((i / 3) % 4) as u8;
        let mut b = BlockQ2K {
            scales: std::array::from_fn(|s| (s as u8 % 16) | ((15 - s as u8) << 4)),
            qs: [0; 64],
            d: F16::store(0.25),
            dmin: F16::store(0.5),
        };
        for i in 0..QK_K {
            b.qs[32 * (i / 128) + i % 32] |= level(i) << (2 * ((i % 128) / 32));
        }
        let y = dequantize(&[b]);
        for (i, &v) in y.iter().enumerate() {
            let s = i / 16;
            let want = (0.25 * s as f32) * level(i) as f32 - 0.5 * (15 - s) as f32;
            assert_eq!(v, want, "{i}");
        }
        let mut a = <BlockQ8K as Activation>::ZERO;
        a.qs = [1; 256];
        a.bsums = [16i16.to_le_bytes(); 16];
        a.d = F32(1f32.to_le_bytes());
        let r = BlockQ2K::dot_scalar(&[b], &[a]);
        assert_eq!(r, y.iter().sum::<f32>());
        assert_eq!(dispatch::dot(&[b], &[a]), r);
    }

    #[test]
    fn quantize_round_trip_is_close() {
        let mut rng = Rng::new(8);
        let x: Vec<f32> = (0..QK_K * 16).map(|_| rng.normal()).collect();
        let y = dequantize(&quantize(&x));
        let (mut err2, mut sig2) = (0f64, 0f64);
        for (a, r) in x.iter().zip(&y) {
            err2 += ((a - r) as f64).powi(2);
            sig2 += (*a as f64).powi(2);
        }
        // Two bits: a relative RMS error well under 1 (about 0.3 for normal data).
        assert!(err2 / sig2 < 0.2, "relative squared error {}", err2 / sig2);
    }

    #[test]
    fn edge_blocks() {
        assert_eq!(quantize(&[0.0; QK_K])[0], zeroed::<BlockQ2K>());
        let y = dequantize(&quantize(&[1.5; QK_K]));
        assert!(
            y.iter().all(|&v| v == y[0] && (v - 1.5).abs() < 0.1),
            "{}",
            y[0]
        );
        let y = dequantize(&quantize(&[-2.0; QK_K]));
        assert!(y.iter().all(|&v| (v + 2.0).abs() < 0.1), "{}", y[0]);
        let x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 127.5) * 1e-30).collect();
        assert!(dequantize(&quantize(&x)).iter().all(|v| v.is_finite()));
        let x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 127.5) * 1e30).collect();
        let _ = dequantize(&quantize(&x));
        let mut x = vec![1.0f32; QK_K];
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[3] = f32::INFINITY;
        x[40] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ2K>(|b, rng| {
            (b.d, b.dmin) = (finite_half(rng), finite_half(rng))
        });
        check_extreme_blocks::<BlockQ2K>(|b, h| {
            b.d = F16(h.to_le_bytes());
            b.dmin = F16(h.to_le_bytes());
        });
    }

    #[test]
    fn multi_row_equals_single_row_exactly() {
        crate::quant::kquant_dot::check_multi_row_q8k::<BlockQ2K>(
            crate::quant::GgmlType::Q2_K,
            |b, rng| (b.d, b.dmin) = (finite_half(rng), finite_half(rng)),
        );
    }
}
