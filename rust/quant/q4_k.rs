//! Q4_K: 256 weights per 144-byte super-block: f16 `d` and `dmin`, 8 sub-blocks of 32 with a
//! 6-bit scale and a 6-bit minimum each (packed in 12 bytes, `kquant_scales.rs`), and 128
//! bytes of nibbles: byte `32 c + l` holds weight `64 c + l` (low nibble) and `64 c + 32 + l`
//! (high nibble). Value of weight `i` in sub-block `s`: `(d * sc_s) * q_i - dmin * m_s`.

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
pub struct BlockQ4K {
    pub d: F16,
    pub dmin: F16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
// SAFETY: byte arrays and f16 scales (alignment 1), no padding.
unsafe impl Pod for BlockQ4K {}

impl K32 for BlockQ4K {
    const NMAX: i32 = 15;
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
        if i % 64 < 32 {
            b & 0x0f
        } else {
            b >> 4
        }
    }
    #[inline(always)]
    fn levels_portable(&self, c: usize) -> (u8x32, u8x32) {
        let q = u8x32::from_slice(&self.qs[32 * c..]);
        (q & u8x32::splat(0x0f), q >> 4)
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn levels_avx2(&self, c: usize) -> (__m256i, __m256i) {
        let m4 = _mm256_set1_epi8(0x0f);
        let q = load32(simd::arr(&self.qs, 32 * c));
        (
            _mm256_and_si256(q, m4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
        )
    }
    /// The 32 bytes in both halves, the high half shifted down by 4, masked.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn levels_avx512(&self, c: usize) -> __m512i {
        let q = load32(simd::arr(&self.qs, 32 * c));
        let x = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), q);
        _mm512_and_si512(
            _mm512_mask_srli_epi16::<4>(x, 0xffff_0000, x),
            _mm512_set1_epi8(0x0f),
        )
    }
}

impl super::amx_k::AmxK for BlockQ4K {
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

impl Family for BlockQ4K {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = K8Aux;
    #[cfg(target_arch = "x86_64")]
    const TILES_AMX: Option<super::block::TilesAmx<Self>> = Some(super::amx_k::tiles::<Self>);

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

    /// gguf's `Q4_K.dequantize_blocks`.
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
    use crate::quant::block::zeroed as zeroed_block;
    use crate::quant::dispatch;
    use crate::quant::fp32::F32;
    use crate::quant::kquant_scales::pack_scales_mins;
    use crate::quant::tests_util::{check_block_dot_paths, check_extreme_blocks, finite_half, Rng};
    use crate::quant::Scale;

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

    #[test]
    fn multi_row_equals_single_row_exactly() {
        crate::quant::kquant_dot::check_multi_row_q8k::<BlockQ4K>(
            crate::quant::GgmlType::Q4_K,
            |b, rng| (b.d, b.dmin) = (finite_half(rng), finite_half(rng)),
        );
    }
}
