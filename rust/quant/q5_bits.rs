//! The fifth bit plane of Q5_0 and Q5_1 (ggml's `qh`): a block of 32 weights keeps the low
//! four bits of each in nibbles laid out as Q4_0's (byte `j` holds weight `j` low and weight
//! `j + 16` high) and bit 4 of weight `j` in bit `j` of the little-endian u32 `qh`. Packing
//! and unpacking, once for both families and every kernel level.

use std::simd::prelude::*;
use std::simd::Select;

/// Weight `j` (0..=31) of a block.
#[inline(always)]
pub(crate) fn q5_scalar(qs: &[u8; 16], qh: &[u8; 4], j: usize) -> u8 {
    let nib = if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    };
    let hi = (u32::from_le_bytes(*qh) >> j) & 1;
    nib | (hi as u8) << 4
}

/// The block's 32 weights (0..=31), in order, as the quantizer produced them: nibbles and bit
/// plane (`q` lanes are weights `8k .. 8k + 8`; each value must be at most 31).
#[inline(always)]
pub(crate) fn pack(q: [u8x8; 4]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    for k in 0..2 {
        let packed = (q[k] & u8x8::splat(0x0f)) | (q[k + 2] << 4);
        qs[8 * k..8 * k + 8].copy_from_slice(packed.as_array());
    }
    let mut qh = 0u32;
    for (k, qk) in q.iter().enumerate() {
        // One bit per lane: lane i of group k is weight 8k + i.
        let bits = (qk >> 4).simd_ne(u8x8::splat(0)).to_bitmask() as u32;
        qh |= bits << (8 * k);
    }
    (qs, qh.to_le_bytes())
}

/// The block's 32 weights (0..=31), in order, in plain std::simd.
#[inline(always)]
pub(crate) fn unpack_portable(qs: &[u8; 16], qh: &[u8; 4]) -> u8x32 {
    let qs = u8x16::from_array(*qs);
    let lo = qs & u8x16::splat(0x0f);
    let hi = qs >> 4;
    let nib: u8x32 = simd_swizzle!(
        lo,
        hi,
        [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
            24, 25, 26, 27, 28, 29, 30, 31
        ]
    );
    let bit = mask8x32::from_bitmask(u32::from_le_bytes(*qh) as u64);
    nib | bit.select(u8x32::splat(0x10), u8x32::splat(0))
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    use crate::quant::simd::x86::*;

    /// The block's 32 weights (0..=31), in order, with AVX2 (llama.cpp's
    /// `bytes_from_nibbles_32` and `bytes_from_bits_32`).
    #[inline(always)]
    pub(crate) unsafe fn unpack_avx2(qs: &[u8; 16], qh: &[u8; 4]) -> __m256i {
        let m4 = _mm_set1_epi8(0x0f);
        let q = load16(qs);
        let lo = _mm_and_si128(q, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        let nib = _mm256_set_m128i(hi, lo);
        // Byte j of `bytes` is byte j / 8 of qh; bit j % 8 of it is weight j's fifth bit.
        let h = _mm256_set1_epi32(i32::from_le_bytes(*qh));
        let idx = _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        );
        let bytes = _mm256_shuffle_epi8(h, idx);
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let bit = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, sel), sel);
        _mm256_or_si256(nib, _mm256_and_si256(bit, _mm256_set1_epi8(0x10)))
    }

    /// Two blocks' weights (0..=31): block 0 in the low 256 bits, block 1 in the high 256
    /// bits, each in order. AVX-512 F/BW.
    #[inline(always)]
    pub(crate) unsafe fn unpack2_avx512(
        qs0: &[u8; 16],
        qh0: &[u8; 4],
        qs1: &[u8; 16],
        qh1: &[u8; 4],
    ) -> __m512i {
        let q = _mm512_castsi256_si512(_mm256_set_m128i(load16(qs1), load16(qs0)));
        // 128-bit lanes [q0, q0, q1, q1]; lanes 1 and 3 take the high nibbles (weights
        // 16..32 of each block), as in Q4_0's kernel.
        let x = _mm512_shuffle_i64x2::<0b01_01_00_00>(q, q);
        let nib = _mm512_and_si512(
            _mm512_mask_srli_epi16::<4>(x, 0xff00_ff00, x),
            _mm512_set1_epi8(0x0f),
        );
        // Byte i of the vector is weight i % 32 of block i / 32: its fifth bit is bit i of
        // the two qh words side by side.
        let k = u32::from_le_bytes(*qh0) as u64 | (u32::from_le_bytes(*qh1) as u64) << 32;
        _mm512_mask_add_epi8(nib, k, nib, _mm512_set1_epi8(0x10))
    }
}

/// The multi-row kernels' integer part for Q5_0 and Q5_1: `sum(q * y)` (q = 0..=31) of each of
/// 8 blocks against `N` activation rows in Q4_0's layout (`q4_0::x4_aux`; lanes in
/// `LANE_BLOCK` order). The nibbles are transposed as Q4_0's and each byte's fifth bit (bit
/// `j` of its block's `qh`) or'ed in as 0x10. AVX2 sums four `maddubs` in i16
/// (4 * 2 * 31 * 128 < 2^15) before widening; VNNI sums in i32. Exact either way.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn group_sums_x86<const N: usize, const VNNI: bool>(
    qs: [&[u8; 16]; 8],
    qh: [&[u8; 4]; 8],
    yt: [&[u8; crate::quant::q4_0::YT_GROUP]; N],
) -> [i32x8; N] {
    use crate::quant::q4_0::{transpose_qs, LANE_BLOCK};
    use crate::quant::simd::{arr, x86::*};
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let t = transpose_qs(qs);
    let l = LANE_BLOCK;
    let h = |b: usize| i32::from_le_bytes(*qh[l[b]]);
    let qh = _mm256_setr_epi32(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7));
    // Byte i of each dword <- byte 0 of it; bit i of that picks byte i's weight.
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12,
        12, 12, 12,
    );
    let sel = _mm256_set1_epi32(0x0804_0201);
    let sixteen = _mm256_set1_epi8(0x10);
    let mut s16 = [_mm256_setzero_si256(); N];
    let mut s32 = [_mm256_setzero_si256(); N];
    for v in 0..8 {
        let tk = t[v / 2];
        let nib = if v % 2 == 0 {
            _mm256_and_si256(tk, m4)
        } else {
            _mm256_and_si256(_mm256_srli_epi16(tk, 4), m4)
        };
        // Vector v holds weights j0 .. j0 + 4 of each lane's block.
        let j0 = (16 * (v % 2) + 4 * (v / 2)) as i32;
        let bits = _mm256_shuffle_epi8(_mm256_srl_epi32(qh, _mm_cvtsi32_si128(j0)), spread);
        let hb = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bits, sel), sel), sixteen);
        let q = _mm256_or_si256(nib, hb);
        for n in 0..N {
            let y = load32(arr::<32>(yt[n], 32 * v));
            if VNNI {
                s32[n] = _mm256_dpbusd_epi32(s32[n], q, y);
            } else {
                s16[n] = _mm256_add_epi16(s16[n], _mm256_maddubs_epi16(q, y));
                if v % 4 == 3 {
                    s32[n] = _mm256_add_epi32(s32[n], _mm256_madd_epi16(s16[n], ones));
                    s16[n] = _mm256_setzero_si256();
                }
            }
        }
    }
    s32.map(i32x8::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::Rng;

    #[test]
    fn pack_and_every_unpack_agree() {
        let mut rng = Rng::new(55);
        for _ in 0..2000 {
            let w: [u8; 32] = std::array::from_fn(|_| (rng.next_u64() % 32) as u8);
            let (qs, qh) = pack(std::array::from_fn(|k| u8x8::from_slice(&w[8 * k..])));
            for (j, &v) in w.iter().enumerate() {
                assert_eq!(q5_scalar(&qs, &qh, j), v);
            }
            assert_eq!(unpack_portable(&qs, &qh).to_array(), w);
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            {
                use crate::quant::simd::{has_avx2, has_avx512};
                if has_avx2() {
                    let v = unsafe { avx2(&qs, &qh) };
                    assert_eq!(v, w);
                }
                if has_avx512() {
                    let (qs1, qh1) = (qs.map(|b| b.rotate_left(4)), [qh[3], qh[0], qh[1], qh[2]]);
                    let v = unsafe { avx512(&qs, &qh, &qs1, &qh1) };
                    assert_eq!(v[..32], w);
                    let w1: [u8; 32] = std::array::from_fn(|j| q5_scalar(&qs1, &qh1, j));
                    assert_eq!(v[32..], w1);
                }
            }
        }
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2(qs: &[u8; 16], qh: &[u8; 4]) -> [u8; 32] {
        std::mem::transmute(x86::unpack_avx2(qs, qh))
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512(qs: &[u8; 16], qh: &[u8; 4], qs1: &[u8; 16], qh1: &[u8; 4]) -> [u8; 64] {
        std::mem::transmute(x86::unpack2_avx512(qs, qh, qs1, qh1))
    }
}
