//! Q6_K: 256 weights per 210-byte super-block (ggml-common.h's `block_q6_K`): the low 4 bits
//! of each 6-bit quant (`ql`), the high 2 bits (`qh`), 16 int8 scales (one per 16 weights)
//! and the f16 super-block scale `d`. Value = `d * scale[i / 16] * (q - 32)`.
//!
//! Layout, per half `n` of 128 weights (`ql[64n..]`, `qh[32n..]`), for `l` in 0..32:
//! weight `128n + l` is `ql[l] & 15 | (qh[l] & 3) << 4`, `+ 32` is `ql[l + 32] & 15 |
//! (qh[l] >> 2 & 3) << 4`, `+ 64` is `ql[l] >> 4 | (qh[l] >> 4 & 3) << 4`, `+ 96` is
//! `ql[l + 32] >> 4 | (qh[l] >> 6) << 4`.
//!
//! Dot products against Q8_K. Per super-block the exact integer `isum = sum_j scale_j *
//! sum_{i in j} (q_i - 32) * y_i`; `|q - 32| <= 32`, `|y| <= 128`, `|scale| <= 128`, so
//! `|isum| <= 256 * 32 * 128 * 128 = 2^27`. The SIMD kernels compute it as `sum scale * q * y`
//! (`q` in 0..=63 is `maddubs`'s unsigned operand; each i16 pair sum is at most
//! `2 * 63 * 128 = 16128`, no saturation; the whole sum at most `256 * 63 * 128 * 128 <
//! 2^28`) minus `32 * sum_j scale_j * bsums_j` (at most `32 * 16 * 128 * 2048 = 2^27`), as
//! llama.cpp's AVX2 kernel does with `q8sums`: every intermediate fits an i32, so the result is
//! the same integer. Then `kquant_qx::combine`.

use super::block::{Family, Pod, Scale};
use super::fp16::F16;
use super::fp32::F32;
use super::kquant_qx::{
    self, combine, combine_one, make_qx_quants_rmse1, requantize_group, Q8KRows, SubBlocks16,
};
use super::q8_k::{nearest_int, BlockQ8K, QK_K};
use super::simd::{self, BLOCK_LANES};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use kquant_qx::x86::{W256, W512};
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
// SAFETY: byte arrays and an F16 (alignment 1), no padding.
unsafe impl Pod for BlockQ6K {}

impl BlockQ6K {
    /// The 256 quants `q` (0..=63), in weight order.
    fn quants(&self) -> [u8; QK_K] {
        let mut q = [0u8; QK_K];
        for n in 0..2 {
            let (ql, qh) = (&self.ql[64 * n..], &self.qh[32 * n..]);
            let o = &mut q[128 * n..];
            for l in 0..32 {
                o[l] = ql[l] & 15 | (qh[l] & 3) << 4;
                o[l + 32] = ql[l + 32] & 15 | (qh[l] >> 2 & 3) << 4;
                o[l + 64] = ql[l] >> 4 | (qh[l] >> 4 & 3) << 4;
                o[l + 96] = ql[l + 32] >> 4 | (qh[l] >> 6) << 4;
            }
        }
        q
    }

    /// Packs quants `l` (0..=63, weight order) into `ql` and `qh` (the inverse of `quants`).
    fn pack(&mut self, l: &[u8; QK_K]) {
        for n in 0..2 {
            let l = &l[128 * n..];
            for i in 0..32 {
                let (q1, q2, q3, q4) = (l[i], l[i + 32], l[i + 64], l[i + 96]);
                self.ql[64 * n + i] = q1 & 15 | (q3 & 15) << 4;
                self.ql[64 * n + i + 32] = q2 & 15 | (q4 & 15) << 4;
                self.qh[32 * n + i] = q1 >> 4 | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6;
            }
        }
    }
}

impl super::amx_k::AmxK for BlockQ6K {
    const MINS: bool = false;
    /// `scale_j * (q_i - 32)`: the reference's per-weight integer (|.| <= 128 * 32).
    #[inline(always)]
    fn multipliers(&self) -> [i16x32; 8] {
        let q = quants_portable(self);
        std::array::from_fn(|v| {
            let (s0, s1) = (self.scales[2 * v] as i16, self.scales[2 * v + 1] as i16);
            let sc = i16x32::from_array(std::array::from_fn(|i| if i < 16 { s0 } else { s1 }));
            (q[v].cast::<i16>() - i16x32::splat(32)) * sc
        })
    }
    #[inline(always)]
    fn scale(&self) -> f32 {
        self.d.get()
    }
}

impl Family for BlockQ6K {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = Q8KRows;
    #[cfg(target_arch = "x86_64")]
    const TILES_AMX: Option<super::block::TilesAmx<Self>> = Some(super::amx_k::tiles::<Self>);

    /// llama.cpp's `quantize_row_q6_K_ref` for one super-block: `make_qx_quants(16, 32, ..,
    /// rmse_type 1)` per sub-block, the scales quantized to int8 against the one of largest
    /// magnitude (which maps to -128), then each sub-block requantized with its stored scale.
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK_K] = x.try_into().unwrap();
        let mut ls = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (ib, s) in scales.iter_mut().enumerate() {
            let r = 16 * ib..16 * ib + 16;
            *s = make_qx_quants_rmse1(32, &x[r.clone()], &mut ls[r]);
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        if max_abs_scale < kquant_qx::GROUP_MAX_EPS {
            *out = super::block::zeroed();
            return;
        }
        let iscale = -128.0f32 / max_scale;
        out.d = F16::store(1.0 / iscale);
        for (o, &s) in out.scales.iter_mut().zip(&scales) {
            // C: `int8_t = MIN(127, nearest_int(..))` (wrapping, as gcc converts).
            *o = nearest_int(iscale * s).min(127) as i8;
        }
        let d = out.d.get();
        for j in 0..QK_K / 16 {
            let r = 16 * j..16 * j + 16;
            requantize_group(32, d * out.scales[j] as f32, &x[r.clone()], &mut ls[r]);
        }
        out.pack(&ls.map(|v| v as u8));
    }

    /// gguf's `Q6_K.dequantize_blocks`: `(d * scale) * (q - 32)` in f32.
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        let q = self.quants();
        for (j, (yj, qj)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * self.scales[j] as f32;
            for (o, &v) in yj.iter_mut().zip(qj) {
                *o = dl * (v as i32 - 32) as f32;
            }
        }
    }

    fn dot_scalar(w: &[Self], y: &[BlockQ8K]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let q = wb.quants();
            let mut isum = 0i32;
            for j in 0..QK_K / 16 {
                let r = 16 * j..16 * j + 16;
                let s: i32 = (q[r.clone()].iter().zip(&yb.qs[r]))
                    .map(|(&q, &y)| (q as i32 - 32) * y as i32)
                    .sum();
                isum += wb.scales[j] as i32 * s;
            }
            acc[b % BLOCK_LANES] += combine_one(wb.d, yb.d.get(), isum);
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| isum_portable(&w[b], &y[b])));
        let dw = F16::lanes_portable(std::array::from_fn(|b| w[b].d));
        let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        kquant_qx::x86::chunk::<Self, W256>(acc, w, y)
    }

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

/// The 256 quants (0..=63) in weight order, 32 per vector, in plain std::simd.
#[inline(always)]
fn quants_portable(w: &BlockQ6K) -> [u8x32; 8] {
    let (m4, three) = (u8x32::splat(15), u8x32::splat(3));
    let mut q = [u8x32::splat(0); 8];
    for n in 0..2 {
        let ql0 = u8x32::from_slice(&w.ql[64 * n..]);
        let ql1 = u8x32::from_slice(&w.ql[64 * n + 32..]);
        let qh = u8x32::from_slice(&w.qh[32 * n..]);
        q[4 * n] = (ql0 & m4) | ((qh & three) << 4);
        q[4 * n + 1] = (ql1 & m4) | (((qh >> 2) & three) << 4);
        q[4 * n + 2] = (ql0 >> 4) | (((qh >> 4) & three) << 4);
        q[4 * n + 3] = (ql1 >> 4) | ((qh >> 6) << 4);
    }
    q
}

/// One super-block's `isum` in plain std::simd.
#[inline(always)]
fn isum_portable(w: &BlockQ6K, y: &BlockQ8K) -> i32 {
    kquant_qx::scaled_isum_portable(&quants_portable(w), 32, &w.scales, y)
}

/// The quants' offset is 32; `unpack_*` put the two high bits of each quant at bits 4..6 of
/// its byte (16-bit shifts, then a mask that keeps only bits that came from the same byte).
impl SubBlocks16 for BlockQ6K {
    const OFFSET: kquant_qx::Offset = kquant_qx::Offset::Pow2(5);

    #[inline(always)]
    fn d(&self) -> F16 {
        self.d
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn unpack_avx2(&self) -> ([simd::x86::__m256i; 8], simd::x86::__m128i) {
        let w = self;
        use simd::x86::*;
        let m4 = _mm256_set1_epi8(0x0f);
        let m30 = _mm256_set1_epi8(0x30);
        let mut q = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let ql0 = load32(simd::arr(&w.ql, 64 * n));
            let ql1 = load32(simd::arr(&w.ql, 64 * n + 32));
            let qh = load32(simd::arr(&w.qh, 32 * n));
            // The two high bits moved to bits 4..6 of each byte (16-bit shifts, then the mask
            // keeps only bits that came from the same byte).
            q[4 * n] = _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
            );
            q[4 * n + 1] = _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
            );
            q[4 * n + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(qh, m30),
            );
            q[4 * n + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
            );
        }
        (q, _mm_loadu_si128(w.scales.as_ptr().cast()))
    }

    /// The 64 `ql` bytes of a half at once, its `qh` and `qh >> 2` side by side.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn unpack_avx512(&self) -> ([simd::x86::__m512i; 4], simd::x86::__m128i) {
        let w = self;
        use simd::x86::*;
        let m4 = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        let mut q = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let ql = _mm512_loadu_si512(w.ql[64 * n..].as_ptr().cast());
            let qh = load32(simd::arr(&w.qh, 32 * n));
            let qhx =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<2>(qh));
            // Weights 128n + 0..64, then 128n + 64..128.
            q[2 * n] = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(_mm512_slli_epi16::<4>(qhx), m30),
            );
            q[2 * n + 1] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_and_si512(qhx, m30),
            );
        }
        (q, _mm_loadu_si128(w.scales.as_ptr().cast()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::{view, view_mut};
    use crate::quant::tests_util::{
        check_block_dot_paths, check_extreme_blocks, finite_half, known_input, Rng,
    };
    use crate::quant::{dequantize_row, quantize_row, GgmlType};

    fn quantize(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; GgmlType::Q6_K.row_bytes(x.len()).unwrap()];
        quantize_row(GgmlType::Q6_K, x, &mut out);
        out
    }

    fn dequantize(b: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; b.len() / 210 * QK_K];
        dequantize_row(GgmlType::Q6_K, b, &mut out);
        out
    }

    #[test]
    fn layout_round_trips() {
        let mut rng = Rng::new(6);
        let l: [u8; QK_K] = std::array::from_fn(|_| (rng.next_u64() % 64) as u8);
        let mut b: BlockQ6K = crate::quant::block::zeroed();
        b.pack(&l);
        assert_eq!(b.quants(), l);
        // Weight 200 = 128 + 64 + 8: low nibble in the high half of ql[64 + 8], bits 4..6 of
        // qh[32 + 8].
        let mut l = [0u8; QK_K];
        l[200] = 0b10_1101;
        b.pack(&l);
        assert_eq!(b.ql[72], 0xd0);
        assert_eq!(b.qh[40], 0b10 << 4);
        assert!(b.ql.iter().enumerate().all(|(i, &v)| v == 0 || i == 72));
    }

    #[test]
    fn hand_computed_block() {
        // Every sub-block a ramp of 16 values k - 8 times 2^-4 (sub-block 0) or 2^-3: the
        // largest |x| is 1 (the -8 end of the larger ramps). The search scale of a ramp is
        // exact, and the dequantized values come back to within half a step.
        let x: Vec<f32> = (0..QK_K)
            .map(|i| {
                let s = if i < 16 { 0.0625 } else { 0.125 };
                ((i % 16) as f32 - 8.0) * s
            })
            .collect();
        let b = quantize(&x);
        let blk = view::<BlockQ6K>(&b)[0];
        // The largest-magnitude scale maps to -128.
        assert!(blk.scales.contains(&-128));
        let y = dequantize(&b);
        let d = blk.d.get();
        for (j, (xj, yj)) in x.chunks(16).zip(y.chunks(16)).enumerate() {
            let step = (d * blk.scales[j] as f32).abs();
            for (a, r) in xj.iter().zip(yj) {
                assert!((a - r).abs() <= step * 0.5 + 1e-6, "{j}: {a} vs {r}");
            }
        }
        // Dequantize by hand: (d * scale) * (q - 32).
        let q = blk.quants();
        for i in 0..QK_K {
            assert_eq!(
                y[i],
                (d * blk.scales[i / 16] as f32) * (q[i] as i32 - 32) as f32
            );
        }
    }

    #[test]
    fn edge_blocks() {
        let b = quantize(&[0.0; QK_K]);
        assert!(b.iter().all(|&v| v == 0));
        // Below GROUP_MAX_EPS everywhere: the zero block.
        assert!(quantize(&[1e-16; QK_K]).iter().all(|&v| v == 0));
        // Constant: one exact level per sub-block.
        let y = dequantize(&quantize(&[-1.5; QK_K]));
        assert!(y.iter().all(|&v| (v + 1.5).abs() < 1e-2), "{:?}", &y[..4]);
        // Tiny, huge, NaN, infinities: no panic.
        for s in [1e-30f32, 1e-10, 1e30, 6e4] {
            let x: Vec<f32> = known_input(3, QK_K).iter().map(|v| v * s).collect();
            let _ = dequantize(&quantize(&x));
        }
        let mut x = known_input(4, QK_K);
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[4] = f32::INFINITY;
        x[5] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
        let _ = dequantize(&quantize(&[f32::NAN; QK_K]));
    }

    #[test]
    fn round_trip_error_is_bounded() {
        // Sub-blocks of like magnitudes (with scales of very different sizes, the small ones
        // round to zero against the largest: the format's 8-bit relative scales).
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..QK_K * 16).map(|_| rng.normal()).collect();
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(16).zip(y.chunks(16)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, r) in xb.iter().zip(yb) {
                // 6 bits per sub-block, an 8-bit scale: well within 1/20 of the group's range
                // (the search may trade the largest value for the rest).
                assert!(
                    (a - r).abs() <= amax / 20.0 + 1e-30,
                    "{a} vs {r}, amax {amax}"
                );
            }
        }
    }

    #[test]
    fn hand_computed_dot() {
        // Every quant 34 (value 2), scales j + 1 (j = 0..16), d = 0.5; activations 3 with
        // d = 0.25: isum = sum_j (j + 1) * 16 * 2 * 3 = 96 * 136 = 13056, times 0.5 * 0.25.
        let mut b: BlockQ6K = crate::quant::block::zeroed();
        b.pack(&[34; QK_K]);
        b.scales = std::array::from_fn(|j| j as i8 + 1);
        b.d = F16::store(0.5);
        let mut u = <BlockQ8K as crate::quant::Activation>::ZERO;
        u.qs = [3; QK_K];
        u.bsums = [48i16.to_le_bytes(); 16];
        u.d = F32(0.25f32.to_le_bytes());
        let r = crate::quant::tests_util::check_dot_levels(&[b], &[u], "hand");
        assert_eq!(r, 13056.0 * 0.125);
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ6K>(|b, rng| b.d = finite_half(rng));
        check_extreme_blocks::<BlockQ6K>(|b, h| b.d = F16(h.to_le_bytes()));
        // All quants 63 and scales -128 against all -128: the largest block sums.
        let mut w = vec![0xffu8; 9 * 210];
        for b in view_mut::<BlockQ6K>(&mut w) {
            b.scales = [-128; 16];
            b.d = F16(0x3c00u16.to_le_bytes());
        }
        let y: Vec<u8> = (0..9)
            .flat_map(|_| {
                let mut u = <BlockQ8K as crate::quant::Activation>::ZERO;
                u.qs = [-128; QK_K];
                u.bsums = [(-2048i16).to_le_bytes(); 16];
                u.d = F32(1f32.to_le_bytes());
                crate::quant::tests_util::bytes_of_units(&[u])
            })
            .collect();
        let r = crate::quant::tests_util::check_dot_levels(
            view::<BlockQ6K>(&w),
            view::<BlockQ8K>(&y),
            "q = 63, scale -128, y = -128",
        );
        // Each block: (-128) * 31 * (-128) * 256.
        assert_eq!(r, 9.0 * (128.0 * 31.0 * 128.0 * 256.0));
    }
}
