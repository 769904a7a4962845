//! Q5_K: 256 weights per 176-byte super-block: f16 `d` and `dmin`, the 12 bytes of 6-bit
//! scales and minimums of Q4_K (`kquant_scales.rs`), 32 bytes of high bits, and Q4_K's 128
//! bytes of nibbles. Weight `i` takes bit `i / 32` of `qh[i % 32]` as its fifth bit (level
//! 0..=31). Value of weight `i` in sub-block `s`: `(d * sc_s) * q_i - dmin * m_s`.

use super::block::{Family, Pod};
use super::fp16::F16;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::kquant_dot::x86::*;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::kquant_dot::{chunk_avx2_k32, chunk_avx512_k32, row_xn_k8};
use super::kquant_dot::{
    chunk_portable_k32, dequantize_k32, dot_scalar_k32, k8_aux, k8_aux_fits, K8Aux, K32,
};
use super::kquant_scales::K_SCALE_SIZE;
use super::kquant_search::quantize_k4_superblock;
use super::q8_k::{BlockQ8K, QK_K};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::simd;
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    pub d: F16,
    pub dmin: F16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
// SAFETY: byte arrays and f16 scales (alignment 1), no padding.
unsafe impl Pod for BlockQ5K {}

impl K32 for BlockQ5K {
    const NMAX: i32 = 31;
    #[inline(always)]
    fn d(&self) -> F16 {
        self.d
    }
    #[inline(always)]
    fn dmin(&self) -> F16 {
        self.dmin
    }
    #[inline(always)]
    fn scales(&self) -> &[u8; K_SCALE_SIZE] {
        &self.scales
    }
    #[inline(always)]
    fn level(&self, i: usize) -> u8 {
        let b = self.qs[32 * (i / 64) + i % 32];
        let low = if i % 64 < 32 { b & 0x0f } else { b >> 4 };
        low | (((self.qh[i % 32] >> (i / 32)) & 1) << 4)
    }
    #[inline(always)]
    fn levels_portable(&self, c: usize) -> (u8x32, u8x32) {
        let q = u8x32::from_slice(&self.qs[32 * c..]);
        let h = u8x32::from_array(self.qh);
        let bit = |k: usize| ((h >> (k as u8)) & u8x32::splat(1)) << 4;
        (
            (q & u8x32::splat(0x0f)) | bit(2 * c),
            (q >> 4) | bit(2 * c + 1),
        )
    }
    /// The fifth bits: `qh` shifted right by the sub-block index within 16-bit lanes (a
    /// byte's bits 0..2 after a shift by `2c` come from its own bits `2c, 2c + 1`), masked to
    /// bit 0 of each byte, moved to bit 4.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn levels_avx2(&self, c: usize) -> (__m256i, __m256i) {
        let m4 = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        let q = load32(simd::arr(&self.qs, 32 * c));
        let h = _mm256_srl_epi16(load32(&self.qh), _mm_cvtsi32_si128(2 * c as i32));
        let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(h, one));
        let hh = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), one));
        (
            _mm256_or_si256(_mm256_and_si256(q, m4), hl),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), hh),
        )
    }
    /// Q4_K's 512-bit nibbles with the fifth bits of both sub-blocks or-ed in.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn levels_avx512(&self, c: usize) -> __m512i {
        let q = load32(simd::arr(&self.qs, 32 * c));
        let x = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), q);
        let nib = _mm512_and_si512(
            _mm512_mask_srli_epi16::<4>(x, 0xffff_0000, x),
            _mm512_set1_epi8(0x0f),
        );
        let h = _mm256_srl_epi16(load32(&self.qh), _mm_cvtsi32_si128(2 * c as i32));
        let h2 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<1>(h));
        let bits = _mm512_slli_epi16::<4>(_mm512_and_si512(h2, _mm512_set1_epi8(1)));
        _mm512_or_si512(nib, bits)
    }
}

impl super::amx_k::AmxK for BlockQ5K {
    const MINS: bool = true;
    #[inline(always)]
    fn multipliers(&self) -> [i16x32; 8] {
        super::kquant_dot::k32_multipliers(self)
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        super::block::Scale::get(self.d)
    }
    #[inline(always)]
    fn mins(&self) -> (f32, [u8; 8]) {
        super::kquant_dot::k32_mins(self)
    }
}

impl Family for BlockQ5K {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = K8Aux;
    #[cfg(target_arch = "x86_64")]
    const TILES_AMX: Option<super::block::TilesAmx<Self>> = Some(super::amx_k::tiles::<Self>);

    /// llama.cpp's `quantize_row_q5_K_ref` (what `llama-quantize` runs without an imatrix).
    fn quantize(x: &[f32], out: &mut Self) {
        let k = quantize_k4_superblock(x.try_into().unwrap(), 31, -0.5, 15);
        out.d = F16(k.d.to_le_bytes());
        out.dmin = F16(k.dmin.to_le_bytes());
        out.scales = k.scales;
        out.qh = [0; QK_K / 8];
        for c in 0..4 {
            for j in 0..32 {
                let (l1, l2) = (k.l[64 * c + j], k.l[64 * c + 32 + j]);
                out.qh[j] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
                out.qs[32 * c + j] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
            }
        }
    }

    /// gguf's `Q5_K.dequantize_blocks`.
    fn dequantize(&self, y: &mut [f32]) {
        dequantize_k32(self, y)
    }

    /// Exact integers per super-block, one float combination (`kquant_dot`).
    fn dot_scalar(w: &[Self], y: &[BlockQ8K]) -> f32 {
        dot_scalar_k32(w, y)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        chunk_portable_k32(acc, w, y)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        chunk_avx2_k32(acc, w, y)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        chunk_avx512_k32(acc, w, y)
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8K]) -> Option<K8Aux> {
        Some(k8_aux(y))
    }

    fn aux_fits(aux: &K8Aux, y: &[BlockQ8K]) -> bool {
        k8_aux_fits(aux, y)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&K8Aux; N]) -> [f32; N] {
        row_xn_k8::<Self, N, false>(w, aux)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&K8Aux; N]) -> [f32; N] {
        row_xn_k8::<Self, N, true>(w, aux)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::zeroed;
    use crate::quant::dispatch;
    use crate::quant::fp32::F32;
    use crate::quant::kquant_scales::pack_scales_mins;
    use crate::quant::tests_util::{check_block_dot_paths, check_extreme_blocks, finite_half, Rng};
    use crate::quant::{Activation, Scale};

    fn quantize(x: &[f32]) -> Vec<BlockQ5K> {
        let mut out = vec![zeroed::<BlockQ5K>(); x.len() / QK_K];
        dispatch::quantize(x, &mut out);
        out
    }

    fn dequantize(b: &[BlockQ5K]) -> Vec<f32> {
        let mut y = vec![0f32; b.len() * QK_K];
        dispatch::dequantize(b, &mut y);
        y
    }

    #[test]
    fn hand_computed_block() {
        // Sub-block s: scale s + 1, minimum 3 s; weight i: level (5 i) % 32, written by hand
        // into the nibbles and high bits.
        let ls: [u8; 8] = std::array::from_fn(|s| s as u8 + 1);
        let lm: [u8; 8] = std::array::from_fn(|s| 3 * s as u8);
        let level = |i: usize| (5 * i % 32) as u8;
        let mut b = BlockQ5K {
            d: F16::store(0.5),
            dmin: F16::store(0.125),
            scales: pack_scales_mins(&ls, &lm),
            qh: [0; 32],
            qs: [0; 128],
        };
        for i in 0..QK_K {
            let (c, l) = (i / 64, i % 32);
            let nib = level(i) & 0x0f;
            b.qs[32 * c + l] |= if i % 64 < 32 { nib } else { nib << 4 };
            b.qh[l] |= (level(i) >> 4) << (i / 32);
        }
        let y = dequantize(&[b]);
        for (i, &v) in y.iter().enumerate() {
            let s = i / 32;
            let want = (0.5 * (s + 1) as f32) * level(i) as f32 - 0.125 * (3 * s) as f32;
            assert_eq!(v, want, "{i}");
        }
        // Against an all-ones activation with d = 1: the dot is the sum of the values.
        let mut a = <BlockQ8K as Activation>::ZERO;
        a.qs = [1; 256];
        a.bsums = [16i16.to_le_bytes(); 16];
        a.d = F32(1f32.to_le_bytes());
        let r = BlockQ5K::dot_scalar(&[b], &[a]);
        assert_eq!(r, y.iter().sum::<f32>());
        assert_eq!(dispatch::dot(&[b], &[a]), r);
        // Quantizing the decoded values gives levels that decode to them again.
        let again = dequantize(&quantize(&y));
        for (a, r) in y.iter().zip(&again) {
            assert!((a - r).abs() <= 4.0, "{a} vs {r}");
        }
    }

    #[test]
    fn quantize_round_trip_is_close() {
        let mut rng = Rng::new(8);
        let x: Vec<f32> = (0..QK_K * 16).map(|_| rng.normal()).collect();
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let max = xb.iter().fold(0f32, |m, &v| m.max(v));
            let min = xb.iter().fold(0f32, |m, &v| m.min(v));
            // 31 steps over the sub-block's range, plus the 6-bit scale rounding.
            let step = (max - min) / 31.0;
            for (a, r) in xb.iter().zip(yb) {
                assert!((a - r).abs() <= 1.5 * step, "{a} vs {r}, step {step}");
            }
        }
    }

    #[test]
    fn edge_blocks() {
        assert_eq!(quantize(&[0.0; QK_K])[0], zeroed::<BlockQ5K>());
        let y = dequantize(&quantize(&[1.5; QK_K]));
        assert!(
            y.iter().all(|&v| v == y[0] && (v - 1.5).abs() < 0.05),
            "{}",
            y[0]
        );
        let y = dequantize(&quantize(&[-2.0; QK_K]));
        assert!(y.iter().all(|&v| (v + 2.0).abs() < 0.05), "{}", y[0]);
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
        check_block_dot_paths::<BlockQ5K>(|b, rng| {
            (b.d, b.dmin) = (finite_half(rng), finite_half(rng))
        });
        check_extreme_blocks::<BlockQ5K>(|b, h| {
            b.d = F16(h.to_le_bytes());
            b.dmin = F16(h.to_le_bytes());
        });
    }

    #[test]
    fn multi_row_equals_single_row_exactly() {
        crate::quant::kquant_dot::check_multi_row_q8k::<BlockQ5K>(
            crate::quant::GgmlType::Q5_K,
            |b, rng| (b.d, b.dmin) = (finite_half(rng), finite_half(rng)),
        );
    }
}
