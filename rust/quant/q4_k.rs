//! Q4_K: 256 weights per 144-byte super-block: f16 `d` and `dmin`, 8 sub-blocks of 32 with a
//! 6-bit scale and a 6-bit minimum each (packed in 12 bytes, `kquant_scales.rs`), and 128
//! bytes of nibbles: byte `32 c + l` holds weight `64 c + l` (low nibble) and `64 c + 32 + l`
//! (high nibble). Value of weight `i` in sub-block `s`: `(d * sc_s) * q_i - dmin * m_s`.

use super::block::{bytes_of, i8_bytes, Family, Pod, Scale};
use super::fp16::F16;
use super::fp32::F32;
use super::kquant_dot::{combine, combine1, min_sum_32};
use super::kquant_scales::{unpack_scales_mins, K_SCALE_SIZE};
use super::kquant_search::quantize_k4_superblock;
use super::q8_k::{BlockQ8K, QK_K};
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    pub d: F16,
    pub dmin: F16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
// SAFETY: byte arrays and f16 scales (alignment 1), no padding.
unsafe impl Pod for BlockQ4K {}

impl BlockQ4K {
    /// The 4-bit level of weight `i`.
    #[inline(always)]
    fn level(&self, i: usize) -> u8 {
        let b = self.qs[32 * (i / 64) + i % 32];
        if i % 64 < 32 {
            b & 0x0f
        } else {
            b >> 4
        }
    }
}

impl Family for BlockQ4K {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = ();

    /// llama.cpp's `quantize_row_q4_K_ref` (what `llama-quantize` runs without an imatrix).
    fn quantize(x: &[f32], out: &mut Self) {
        let k = quantize_k4_superblock(x.try_into().unwrap(), 15, -1.0, 20);
        out.d = F16(k.d.to_le_bytes());
        out.dmin = F16(k.dmin.to_le_bytes());
        out.scales = k.scales;
        for c in 0..4 {
            for l in 0..32 {
                out.qs[32 * c + l] = k.l[64 * c + l] | (k.l[64 * c + 32 + l] << 4);
            }
        }
    }

    /// gguf's `Q4_K.dequantize_blocks`: `(d * sc) * q - (dmin * m)` in f32.
    fn dequantize(&self, y: &mut [f32]) {
        let (sc, m) = unpack_scales_mins(&self.scales);
        let (d, dmin) = (self.d.get(), self.dmin.get());
        for (i, o) in y[..QK_K].iter_mut().enumerate() {
            let s = i / 32;
            *o = (d * sc[s] as f32) * self.level(i) as f32 - dmin * m[s] as f32;
        }
    }

    /// Per super-block the exact `isum = sum_s sc_s * sum_{i in s} q_i y_i` and `msum =
    /// sum_s m_s * bsum_s` (`kquant_dot`), then `acc[b % 8] += (d * d_x) * isum - (dmin *
    /// d_x) * msum`, fixed reduction. Bound: |q y| <= 15 * 128, 32 per sub-block, sc <= 63,
    /// 8 sub-blocks: |isum| <= 31M < 2^31.
    fn dot_scalar(w: &[Self], y: &[BlockQ8K]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let (sc, m) = unpack_scales_mins(&wb.scales);
            let mut isum = 0i32;
            for s in 0..8 {
                let mut si = 0i32;
                for i in 32 * s..32 * s + 32 {
                    si += wb.level(i) as i32 * yb.qs[i] as i32;
                }
                isum += sc[s] as i32 * si;
            }
            let msum = min_sum_32(&m, yb);
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
            let (sc, m) = unpack_scales_mins(&w[b].scales);
            for c in 0..4 {
                let q = u8x32::from_slice(&w[b].qs[32 * c..]);
                let y0 = i8x32::from_slice(&y[b].qs[64 * c..]).cast::<i16>();
                let y1 = i8x32::from_slice(&y[b].qs[64 * c + 32..]).cast::<i16>();
                // |q * y| <= 15 * 128 fits i16.
                let lo = ((q & u8x32::splat(0x0f)).cast::<i16>() * y0).cast::<i32>();
                let hi = ((q >> 4).cast::<i16>() * y1).cast::<i32>();
                isum[b] +=
                    sc[2 * c] as i32 * lo.reduce_sum() + sc[2 * c + 1] as i32 * hi.reduce_sum();
            }
            msum[b] = min_sum_32(&m, &y[b]);
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

    /// llama.cpp's AVX2 kernel per super-block (`maddubs` nibbles x activations, `madd` with
    /// the broadcast sub-block scale: i16 pair sums <= 2 * 15 * 128, exact), the 8 blocks'
    /// integers summed across lanes at once.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        use super::kquant_dot::x86::{min_sum_32, word_broadcast};
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let m4 = _mm256_set1_epi8(0x0f);
        let mut vi = [_mm256_setzero_si256(); BLOCK_LANES];
        let mut vm = [_mm256_setzero_si256(); BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let (sc, m) = unpack_scales_mins(&w[b].scales);
            let scales =
                _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast())));
            let qy = i8_bytes(&y[b].qs);
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let sl = _mm256_shuffle_epi8(scales, word_broadcast(2 * c));
                let sh = _mm256_shuffle_epi8(scales, word_broadcast(2 * c + 1));
                let q4 = load32(simd::arr(&w[b].qs, 32 * c));
                let q4l = _mm256_and_si256(q4, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
                let pl = _mm256_maddubs_epi16(q4l, load32(simd::arr(qy, 64 * c)));
                let ph = _mm256_maddubs_epi16(q4h, load32(simd::arr(qy, 64 * c + 32)));
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_add_epi32(_mm256_madd_epi16(sl, pl), _mm256_madd_epi16(sh, ph)),
                );
            }
            vi[b] = sumi;
            vm[b] = min_sum_32(&m, &y[b]);
        }
        let d = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dmin = F16::lanes_avx2(std::array::from_fn(|b| w[b].dmin));
        let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(d, dmin, dx, hsum8_epi32(vi), hsum8_epi32(vm));
    }

    /// 64 weights per 512-bit step: both nibble halves of 32 bytes side by side against 64
    /// contiguous activations, `maddubs` then `vpdpwssd` with the two sub-block scales
    /// (exact: pair sums <= 2 * 15 * 128, times <= 63, summed in i32 within the bound above).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        use super::kquant_dot::x86::{fold512, min_sum_32, word_broadcast2};
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let m4 = _mm512_set1_epi8(0x0f);
        let mut vi = [_mm256_setzero_si256(); BLOCK_LANES];
        let mut vm = [_mm256_setzero_si256(); BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let (sc, m) = unpack_scales_mins(&w[b].scales);
            let scales =
                _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast())));
            let qy = i8_bytes(&y[b].qs);
            let mut sumi = _mm512_setzero_si512();
            for c in 0..4 {
                let q4 = _mm512_castsi256_si512(load32(simd::arr(&w[b].qs, 32 * c)));
                let x = _mm512_inserti64x4::<1>(q4, _mm512_castsi512_si256(q4));
                let nib = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(x, 0xffff_0000, x), m4);
                let yv = _mm512_loadu_si512(qy[64 * c..].as_ptr().cast());
                let p = _mm512_maddubs_epi16(nib, yv);
                let s = _mm512_shuffle_epi8(scales, word_broadcast2(2 * c, 2 * c + 1));
                sumi = _mm512_dpwssd_epi32(sumi, p, s);
            }
            vi[b] = fold512(sumi);
            vm[b] = min_sum_32(&m, &y[b]);
        }
        let stride = std::mem::size_of::<Self>();
        let wb = bytes_of(w);
        let d = F16::lanes_strided_avx512(wb, stride);
        let dmin = F16::lanes_strided_avx512(&wb[2..], stride);
        let dx = F32::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8K>());
        *acc += combine(d, dmin, dx, hsum8_epi32(vi), hsum8_epi32(vm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::zeroed as zeroed_block;
    use crate::quant::dispatch;
    use crate::quant::kquant_scales::pack_scales_mins;
    use crate::quant::tests_util::{check_block_dot_paths, check_extreme_blocks, finite_half, Rng};

    fn quantize(x: &[f32]) -> Vec<BlockQ4K> {
        let mut out = vec![zeroed_block::<BlockQ4K>(); x.len() / QK_K];
        dispatch::quantize(x, &mut out);
        out
    }

    fn dequantize(b: &[BlockQ4K]) -> Vec<f32> {
        let mut y = vec![0f32; b.len() * QK_K];
        dispatch::dequantize(b, &mut y);
        y
    }

    #[test]
    fn hand_computed_block() {
        // Sub-block s has scale s + 1 and minimum 2 s; weight i has level i % 16.
        let ls: [u8; 8] = std::array::from_fn(|s| s as u8 + 1);
        let lm: [u8; 8] = std::array::from_fn(|s| 2 * s as u8);
        let mut b = BlockQ4K {
            d: F16::store(0.5),
            dmin: F16::store(0.25),
            scales: pack_scales_mins(&ls, &lm),
            qs: [0; 128],
        };
        for c in 0..4 {
            for l in 0..32 {
                b.qs[32 * c + l] = (l % 16) as u8 | (((l + 3) % 16) as u8) << 4;
            }
        }
        let y = dequantize(&[b]);
        for (i, &v) in y.iter().enumerate() {
            let s = i / 32;
            let q = if i % 64 < 32 {
                i % 16
            } else {
                (i % 32 + 3) % 16
            };
            assert_eq!(
                v,
                0.5 * (s + 1) as f32 * q as f32 - 0.25 * (2 * s) as f32,
                "{i}"
            );
        }
        // Against an all-ones activation with d = 1: the dot is the sum of the values.
        let mut a = <BlockQ8K as crate::quant::Activation>::ZERO;
        a.qs = [1; 256];
        for j in 0..16 {
            a.bsums[j] = 16i16.to_le_bytes();
        }
        a.d = F32(1f32.to_le_bytes());
        let r = BlockQ4K::dot_scalar(&[b], &[a]);
        assert_eq!(r, y.iter().sum::<f32>());
        assert_eq!(dispatch::dot(&[b], &[a]), r);
    }

    #[test]
    fn quantize_round_trip_is_close() {
        let mut rng = Rng::new(8);
        let x: Vec<f32> = (0..QK_K * 16).map(|_| rng.normal()).collect();
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let max = xb.iter().fold(0f32, |m, &v| m.max(v));
            let min = xb.iter().fold(0f32, |m, &v| m.min(v));
            // 15 steps over the sub-block's range, plus the 6-bit scale rounding.
            let step = (max - min) / 15.0;
            for (a, r) in xb.iter().zip(yb) {
                assert!((a - r).abs() <= 1.2 * step, "{a} vs {r}, step {step}");
            }
        }
    }

    #[test]
    fn edge_blocks() {
        // Zeros: an all-zero block.
        let b = quantize(&[0.0; QK_K]);
        assert_eq!(b[0], zeroed_block::<BlockQ4K>());
        // Constant positive: min clamps to 0, every value comes back the same.
        let y = dequantize(&quantize(&[1.5; QK_K]));
        assert!(
            y.iter().all(|&v| v == y[0] && (v - 1.5).abs() < 0.05),
            "{}",
            y[0]
        );
        // Constant negative: all in the minimum.
        let y = dequantize(&quantize(&[-2.0; QK_K]));
        assert!(y.iter().all(|&v| (v + 2.0).abs() < 0.05), "{}", y[0]);
        // Tiny, huge, NaN, infinities: no panic, finite where the input is.
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
        check_block_dot_paths::<BlockQ4K>(|b, rng| {
            (b.d, b.dmin) = (finite_half(rng), finite_half(rng))
        });
        check_extreme_blocks::<BlockQ4K>(|b, h| {
            b.d = F16(h.to_le_bytes());
            b.dmin = F16(h.to_le_bytes());
        });
    }
}
