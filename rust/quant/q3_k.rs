//! Q3_K: 256 weights per 110-byte super-block (ggml-common.h's `block_q3_K`): the high bit of
//! each 3-bit quant (`hmask`), the low 2 bits (`qs`), 16 6-bit scales packed in 12 bytes, and
//! the f16 super-block scale `d`. Value = `d * (scale[i / 16] - 32) * (q - 4)`, `q` in 0..=7.
//!
//! Layout: weight `128n + 32j + l` (`n` in 0..2, `j` in 0..4, `l` in 0..32) has its low bits
//! at bits `2j..2j + 2` of `qs[32n + l]` and its high bit at bit `4n + j` of `hmask[l]`. Scale
//! `s` (stored `+ 32`, 0..=63) has its low 4 bits in `scales[s % 8]` (low nibble for `s < 8`,
//! high nibble after) and its top 2 bits at bits `2 (s / 4)..` of `scales[8 + s % 4]`.
//!
//! Dot products against Q8_K. Per super-block the exact integer `isum = sum_j (scale_j - 32)
//! * sum_{i in j} (q_i - 4) * y_i`; `|q - 4| <= 4`, `|y| <= 128`, `|scale - 32| <= 32`, so
//! `|isum| <= 256 * 4 * 128 * 32 = 2^22`. The SIMD kernels compute `sum scale * q * y` (`q`
//! 0..=7 as `maddubs`'s unsigned operand; at most `256 * 32 * 7 * 128 < 2^23`) minus
//! `4 * sum_j scale_j * bsums_j` (at most `4 * 16 * 32 * 2048 = 2^22`): every intermediate fits
//! an i32, so the result is the same integer. Then `kquant_qx::combine`. (llama.cpp's AVX2
//! kernel subtracts `maddubs(4 * !high bit, y)` instead; the integers agree.)

use super::block::{Family, Pod, Scale};
use super::fp16::F16;
use super::fp32::F32;
use super::kquant_qx::{
    self, combine, combine_one, make_q3_quants_rmse, requantize_group, Q8KRows, SubBlocks16,
};
use super::q8_k::{nearest_int, BlockQ8K, QK_K};
use super::simd::{self, BLOCK_LANES};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use kquant_qx::x86::{W256, W512};
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: F16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
// SAFETY: byte arrays and an F16 (alignment 1), no padding.
unsafe impl Pod for BlockQ3K {}

/// The 16 stored scales (0..=63, the value plus 32) from their 12 packed bytes, as
/// `dequantize_row_q3_K` unpacks them: four little-endian u32 and the `kmask` juggling.
pub(crate) fn unpack_scales(packed: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a: [u32; 3] = std::array::from_fn(|i| u32::from_le_bytes(*simd::arr::<4>(packed, 4 * i)));
    let tmp = a[2];
    let aux = [
        (a[0] & KMASK2) | ((tmp & KMASK1) << 4),
        (a[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The 12 packed bytes of 16 stored scales (0..=63), as `quantize_row_q3_K_ref` packs them.
fn pack_scales(s: &[u8; 16]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for (j, &l) in s.iter().enumerate() {
        if j < 8 {
            p[j] = l & 0xf;
        } else {
            p[j - 8] |= (l & 0xf) << 4;
        }
        p[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    p
}

impl BlockQ3K {
    /// The 256 quants `q` (0..=7), in weight order.
    fn quants(&self) -> [u8; QK_K] {
        let mut q = [0u8; QK_K];
        for (i, o) in q.iter_mut().enumerate() {
            let (n, j, l) = (i / 128, i % 128 / 32, i % 32);
            let lo = (self.qs[32 * n + l] >> (2 * j)) & 3;
            let hi = (self.hmask[l] >> (4 * n + j)) & 1;
            *o = lo | hi << 2;
        }
        q
    }

    /// Packs quants (0..=7, weight order) into `hmask` and `qs` (the inverse of `quants`, in
    /// the C encoder's order).
    fn pack(&mut self, l: &[u8; QK_K]) {
        let mut l = *l;
        self.hmask = [0; QK_K / 8];
        for (j, v) in l.iter_mut().enumerate() {
            if *v > 3 {
                self.hmask[j % 32] |= 1 << (j / 32);
                *v -= 4;
            }
        }
        for n in 0..2 {
            let l = &l[128 * n..];
            for i in 0..32 {
                self.qs[32 * n + i] = l[i] | l[i + 32] << 2 | l[i + 64] << 4 | l[i + 96] << 6;
            }
        }
    }

    /// The 16 scales minus 32 (-32..=31).
    fn signed_scales(&self) -> [i8; 16] {
        unpack_scales(&self.scales).map(|s| s as i8 - 32)
    }
}

impl Family for BlockQ3K {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = Q8KRows;

    /// llama.cpp's `quantize_row_q3_K_ref` for one super-block: `make_q3_quants(16, 4, ..,
    /// true)` per sub-block, the scales quantized to 6 bits against the one of largest
    /// magnitude (which maps to -32), then each sub-block requantized with its stored scale.
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK_K] = x.try_into().unwrap();
        let mut ls = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for (j, s) in scales.iter_mut().enumerate() {
            let r = 16 * j..16 * j + 16;
            *s = make_q3_quants_rmse(4, &x[r.clone()], &mut ls[r]);
            if s.abs() > amax {
                amax = s.abs();
                max_scale = *s;
            }
        }
        out.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0f32 / max_scale;
            let stored = scales.map(|s| {
                // C: `int8_t l = nearest_int(..)` (wrapping), then clamped to -32..=31.
                let l = nearest_int(iscale * s) as i8 as i32;
                (l.clamp(-32, 31) + 32) as u8
            });
            out.scales = pack_scales(&stored);
            out.d = F16::store(1.0 / iscale);
        } else {
            out.d = F16::store(0.0);
        }
        let d = out.d.get();
        let sc = out.signed_scales();
        for (j, &s) in sc.iter().enumerate() {
            let r = 16 * j..16 * j + 16;
            requantize_group(4, d * s as f32, &x[r.clone()], &mut ls[r]);
        }
        out.pack(&ls.map(|v| v as u8));
    }

    /// gguf's `Q3_K.dequantize_blocks`: `(d * (scale - 32)) * (q - 4)` in f32.
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        let q = self.quants();
        let sc = self.signed_scales();
        for (j, (yj, qj)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * sc[j] as f32;
            for (o, &v) in yj.iter_mut().zip(qj) {
                *o = dl * (v as i32 - 4) as f32;
            }
        }
    }

    fn dot_scalar(w: &[Self], y: &[BlockQ8K]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let q = wb.quants();
            let sc = wb.signed_scales();
            let mut isum = 0i32;
            for (j, &s) in sc.iter().enumerate() {
                let r = 16 * j..16 * j + 16;
                let t: i32 = (q[r.clone()].iter().zip(&yb.qs[r]))
                    .map(|(&q, &y)| (q as i32 - 4) * y as i32)
                    .sum();
                isum += s as i32 * t;
            }
            acc[b % BLOCK_LANES] += combine_one(wb.d, yb.d.get(), isum);
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| {
            let q = quants_portable(&w[b]);
            kquant_qx::scaled_isum_portable(&q, 4, &w[b].signed_scales(), &y[b])
        }));
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

/// The 256 quants (0..=7) in weight order, 32 per vector, in plain std::simd.
#[inline(always)]
fn quants_portable(w: &BlockQ3K) -> [u8x32; 8] {
    let h = u8x32::from_array(w.hmask);
    let (three, one) = (u8x32::splat(3), u8x32::splat(1));
    std::array::from_fn(|m| {
        let (n, j) = (m / 4, m % 4);
        let lo = (u8x32::from_slice(&w.qs[32 * n..]) >> (2 * j as u8)) & three;
        let hi = ((h >> (4 * n + j) as u8) & one) << 2;
        lo | hi
    })
}

/// The 16 scales minus 32 as one vector of i8 (the `kmask` unpacking, then `- 32`).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn scales_x86(w: &BlockQ3K) -> simd::x86::__m128i {
    use simd::x86::*;
    let s = unpack_scales(&w.scales);
    _mm_sub_epi8(_mm_loadu_si128(s.as_ptr().cast()), _mm_set1_epi8(32))
}

/// The quants' offset is 4: `q = low bits | 4 * high bit`, 0..=7.
impl SubBlocks16 for BlockQ3K {
    const OFFSET: kquant_qx::Offset = kquant_qx::Offset::Pow2(2);

    #[inline(always)]
    fn d(&self) -> F16 {
        self.d
    }

    /// The low 2 bits of 32 weights per shift of `qs`, the high bit as 4 where the `hmask`
    /// bit is set (`cmpeq`).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn unpack_avx2(&self) -> ([simd::x86::__m256i; 8], simd::x86::__m128i) {
        let w = self;
        use simd::x86::*;
        let m3 = _mm256_set1_epi8(3);
        let four = _mm256_set1_epi8(4);
        let hbits = load32(&w.hmask);
        let mut bit = _mm256_set1_epi8(1);
        let mut q = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            // 16-bit shifts by 2 keep each byte's bits 0..2 its own (at most 6 bits down).
            let mut qs = load32(simd::arr(&w.qs, 32 * n));
            for j in 0..4 {
                let hi =
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit), bit), four);
                q[4 * n + j] = _mm256_or_si256(_mm256_and_si256(qs, m3), hi);
                qs = _mm256_srli_epi16::<2>(qs);
                bit = _mm256_add_epi8(bit, bit);
            }
        }
        (q, scales_x86(w))
    }

    /// `qs` and `qs >> 2` side by side (two shifts of 32 weights per vector), the high bits
    /// by a byte test mask and a masked add of 4.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn unpack_avx512(&self) -> ([simd::x86::__m512i; 4], simd::x86::__m128i) {
        let w = self;
        use simd::x86::*;
        let m3 = _mm512_set1_epi8(3);
        let four = _mm512_set1_epi8(4);
        let hbits = _mm512_broadcast_i64x4(load32(&w.hmask));
        // Bit 4n + 2p of hmask in the low half, bit 4n + 2p + 1 in the high half.
        let mut bit = _mm512_inserti64x4::<1>(_mm512_set1_epi8(1), _mm256_set1_epi8(2));
        let mut q = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let qs = load32(simd::arr(&w.qs, 32 * n));
            let mut qx =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qs), _mm256_srli_epi16::<2>(qs));
            for p in 0..2 {
                let set = _mm512_test_epi8_mask(hbits, bit);
                let lo = _mm512_and_si512(qx, m3);
                q[2 * n + p] = _mm512_mask_add_epi8(lo, set, lo, four);
                qx = _mm512_srli_epi16::<4>(qx);
                bit = _mm512_slli_epi16::<2>(bit);
            }
        }
        (q, scales_x86(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::{view, view_mut, zeroed};
    use crate::quant::tests_util::{
        bytes_of_units, check_block_dot_paths, check_dot_levels, check_extreme_blocks, finite_half,
        known_input, Rng,
    };
    use crate::quant::{dequantize_row, quantize_row, Activation, GgmlType};

    fn quantize(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; GgmlType::Q3_K.row_bytes(x.len()).unwrap()];
        quantize_row(GgmlType::Q3_K, x, &mut out);
        out
    }

    fn dequantize(b: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; b.len() / 110 * QK_K];
        dequantize_row(GgmlType::Q3_K, b, &mut out);
        out
    }

    #[test]
    fn scales_and_quants_round_trip() {
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let s: [u8; 16] = std::array::from_fn(|_| (rng.next_u64() % 64) as u8);
            assert_eq!(unpack_scales(&pack_scales(&s)), s);
            let l: [u8; QK_K] = std::array::from_fn(|_| (rng.next_u64() % 8) as u8);
            let mut b: BlockQ3K = zeroed();
            b.pack(&l);
            assert_eq!(b.quants(), l);
        }
        // By hand: scale 13 = 0b11_0001: low nibble in the high half of byte 5, top bits at
        // bits 6..8 of byte 8 + 1.
        let mut s = [0u8; 16];
        s[13] = 0b11_0001;
        let p = pack_scales(&s);
        assert_eq!(p, [0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0b1100_0000, 0, 0]);
        // Weight 128 + 96 + 5 (n 1, j 3): bits 6..8 of qs[37], bit 7 of hmask[5].
        let mut l = [0u8; QK_K];
        l[229] = 0b110;
        let mut b: BlockQ3K = zeroed();
        b.pack(&l);
        assert_eq!((b.qs[37], b.hmask[5]), (0b10 << 6, 0x80));
    }

    #[test]
    fn hand_computed_block() {
        // Sub-block j: the ramp (i - 8) * 2^-3, sub-block 0 half as large: the searches give
        // scales of like size, the largest maps to -32.
        let x: Vec<f32> = (0..QK_K)
            .map(|i| ((i % 16) as f32 - 8.0) * if i < 16 { 0.0625 } else { 0.125 })
            .collect();
        let b = quantize(&x);
        let blk = view::<BlockQ3K>(&b)[0];
        let sc = blk.signed_scales();
        assert!(sc.contains(&-32), "{sc:?}");
        let y = dequantize(&b);
        let d = blk.d.get();
        let q = blk.quants();
        for i in 0..QK_K {
            assert_eq!(y[i], (d * sc[i / 16] as f32) * (q[i] as i32 - 4) as f32);
        }
        for (j, (xj, yj)) in x.chunks(16).zip(y.chunks(16)).enumerate() {
            let step = (d * sc[j] as f32).abs();
            for (a, r) in xj.iter().zip(yj) {
                // 8 levels over 16 values: within a step (the top of a ramp is clipped).
                assert!((a - r).abs() <= step * 1.01 + 1e-6, "{j}: {a} vs {r}");
            }
        }
    }

    #[test]
    fn edge_blocks() {
        // All zero: no scale, every quant 0 (as the C's all-zero groups leave them).
        let b = quantize(&[0.0; QK_K]);
        let blk = view::<BlockQ3K>(&b)[0];
        assert_eq!((blk.d.bits(), blk.scales, blk.hmask), (0, [0; 12], [0; 32]));
        assert!(dequantize(&b).iter().all(|&v| v == 0.0));
        let y = dequantize(&quantize(&[-1.5; QK_K]));
        assert!(y.iter().all(|&v| (v + 1.5).abs() < 2e-2), "{:?}", &y[..4]);
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
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..QK_K * 16).map(|_| rng.normal()).collect();
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(16).zip(y.chunks(16)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, r) in xb.iter().zip(yb) {
                // 3 bits: within half the group's largest magnitude.
                assert!((a - r).abs() <= amax * 0.5, "{a} vs {r}, amax {amax}");
            }
        }
    }

    #[test]
    fn hand_computed_dot() {
        // Quants 6 (value 2) in the first half, 1 (value -3) in the second; stored scales
        // 32 + j - 8 (values j - 8), d = 0.5; activations 3 with d = 0.25:
        // isum = sum_{j < 8} (j - 8) * 16 * 6 + sum_{j >= 8} (j - 8) * 16 * -9
        //      = -36 * 96 + 28 * -144 = -7488, times 0.5 * 0.25.
        let mut b: BlockQ3K = zeroed();
        b.pack(&std::array::from_fn(|i| if i < 128 { 6 } else { 1 }));
        b.scales = pack_scales(&std::array::from_fn(|j| (24 + j) as u8));
        b.d = F16::store(0.5);
        let mut u = <BlockQ8K as Activation>::ZERO;
        u.qs = [3; QK_K];
        u.bsums = [48i16.to_le_bytes(); 16];
        u.d = F32(0.25f32.to_le_bytes());
        let r = check_dot_levels(&[b], &[u], "hand");
        assert_eq!(r, -7488.0 * 0.125);
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ3K>(|b, rng| b.d = finite_half(rng));
        check_extreme_blocks::<BlockQ3K>(|b, h| b.d = F16(h.to_le_bytes()));
        // q = 0 (value -4) with scale -32 against y = -128 in every block: the largest sums.
        let mut w = vec![0u8; 9 * 110];
        for b in view_mut::<BlockQ3K>(&mut w) {
            b.d = F16(0x3c00u16.to_le_bytes());
        }
        let mut u = <BlockQ8K as Activation>::ZERO;
        u.qs = [-128; QK_K];
        u.bsums = [(-2048i16).to_le_bytes(); 16];
        u.d = F32(1f32.to_le_bytes());
        let y = bytes_of_units(&[u; 9]);
        let r = check_dot_levels(view::<BlockQ3K>(&w), view::<BlockQ8K>(&y), "q 0, scale -32");
        assert_eq!(r, 9.0 * (-32.0 * -4.0 * -128.0 * 256.0));
    }
}
