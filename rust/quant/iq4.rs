//! What IQ4_NL and IQ4_XS share: the non-linear 16-entry table, llama.cpp's encoder
//! (`quantize_row_iq4_nl_impl` without importance weights, for a 32-weight block or a
//! 256-weight super-block of eight), and the table lookups of the dot kernels.

use super::fp16::{ggml_fp32_to_fp16_bits, F16};
use super::q8_k::nearest_int;
use std::simd::prelude::*;

/// ggml's `kvalues_iq4nl`: the value of each 4-bit index.
pub(crate) const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// [`KVALUES`] as bytes (the `pshufb` table), and biased by 128 to unsigned bytes (1..=241,
/// the table of the `vpdpbusd` kernels).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) const KVALUES_U8: [u8; 16] = table_bytes(0);
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) const KVALUES_BIASED: [u8; 16] = table_bytes(0x80);

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
const fn table_bytes(xor: u8) -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (KVALUES[i] as u8) ^ xor;
        i += 1;
    }
    t
}

/// The weights of one 32-weight block (16 bytes of indices, Q4_0's nibble layout) as
/// table values, in order, in plain std::simd.
#[inline(always)]
pub(crate) fn lookup_portable(qs: &[u8; 16]) -> i8x32 {
    let table = u8x16::from_array(KVALUES.map(|v| v as u8));
    let qs = u8x16::from_array(*qs);
    let lo = table.swizzle_dyn(qs & u8x16::splat(0x0f));
    let hi = table.swizzle_dyn(qs >> 4);
    let w: u8x32 = simd_swizzle!(
        lo,
        hi,
        [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
            24, 25, 26, 27, 28, 29, 30, 31
        ]
    );
    w.cast::<i8>()
}

/// ggml's `GROUP_MAX_EPS`: blocks whose largest magnitude is below it get scale 0.
const GROUP_MAX_EPS: f32 = 1e-15;
/// The `ntry` both IQ4 types pass: scales from 7 steps either side of the first guess.
const NTRY: i32 = 7;
/// Weights per block (the `block_size` both IQ4 types pass).
const BLOCK: usize = 32;

/// ggml's `best_index_int8` over [`KVALUES`]: the index of the nearest table value (the upper
/// one on a tie), by bisection, comparisons in f32 exactly as the C code makes them.
#[inline(always)]
pub(crate) fn best_index_int8(x: f32) -> u8 {
    let val = |i: usize| KVALUES[i] as f32;
    if x <= val(0) {
        return 0;
    }
    if x >= val(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - val(mu - 1) < val(mu) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// Where the encoder writes a (super-)block: the f16 scale, the packed indices, and for a
/// super-block the 6-bit block scales (`scales_h`: 2 high bits each, u16 LE; `scales_l`:
/// 4 low bits each, two per byte).
pub(crate) struct Iq4Out<'a> {
    pub d: &'a mut F16,
    pub qs: &'a mut [u8],
    pub scales_h: &'a mut [u8; 2],
    pub scales_l: &'a mut [u8],
}

/// llama.cpp's `quantize_row_iq4_nl_impl(super_block_size = x.len(), block_size = 32, x, ...,
/// kvalues_iq4nl, quant_weights = NULL, ntry = 7)`, step by step in f32 in the C code's order
/// of operations (no FMA: ggml-base is built without it). With NULL weights the weight of
/// each value is `x^2` (the C code's `sigma2` only feeds importance weights; it is not
/// computed here). `x.len()` is 32 (IQ4_NL) or 256 (IQ4_XS).
pub(crate) fn quantize_impl(x: &[f32], out: Iq4Out<'_>) {
    let sb = x.len();
    let nb = sb / BLOCK;
    assert!(nb * BLOCK == sb && nb <= 8 && out.qs.len() == sb / 2);
    let mut scales = [0f32; 8];
    let mut l = [0u8; 256];
    let v0 = KVALUES[0] as f32;
    *out.d = F16(ggml_fp32_to_fp16_bits(0.0).to_le_bytes());
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for ib in 0..nb {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        let weight: [f32; BLOCK] = std::array::from_fn(|j| xb[j] * xb[j]);
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            // `>`: the first of equal magnitudes wins; NaN never does.
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        // The fit of scale `1 / id`: sum w q x and sum w q^2 over the nearest table values.
        // (The C code also keeps the first guess's indices; both branches below redo them.)
        let sums = |id: f32| {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for j in 0..BLOCK {
                let q = KVALUES[best_index_int8(id * xb[j]) as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            (sumqx, sumq2)
        };
        // ntry > 0: the first guess maps the extreme to -127.
        let d = -max / v0;
        let (sumqx, sumq2) = sums(1.0 / d);
        let mut d = sumqx / sumq2;
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            let id = (itry + KVALUES[0] as i32) as f32 / max;
            let (sumqx, sumq2) = sums(id);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }

    if nb > 1 {
        *out.scales_h = [0; 2];
        let mut scales_h = 0u16;
        let d = -max_scale / 32.0;
        *out.d = F16(ggml_fp32_to_fp16_bits(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            // The block scale in f32 (not the stored f16) picks the indices, as in the C code.
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
            for (o, &v) in l[ib * BLOCK..(ib + 1) * BLOCK].iter_mut().zip(xb) {
                *o = best_index_int8(idl * v);
            }
            let ls = (ls + 32) as u8;
            if ib % 2 == 0 {
                out.scales_l[ib / 2] = ls & 0x0f;
            } else {
                out.scales_l[ib / 2] |= (ls & 0x0f) << 4;
            }
            scales_h |= ((ls >> 4) as u16) << (2 * (ib % 8));
        }
        *out.scales_h = scales_h.to_le_bytes();
    } else {
        *out.d = F16(ggml_fp32_to_fp16_bits(scales[0]).to_le_bytes());
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for (o, &v) in l.iter_mut().zip(x) {
            *o = best_index_int8(id * v);
        }
    }
    for i in 0..sb / BLOCK {
        for j in 0..16 {
            out.qs[16 * i + j] = l[BLOCK * i + j] | (l[BLOCK * i + 16 + j] << 4);
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    use super::{KVALUES_BIASED, KVALUES_U8};
    use crate::quant::simd::x86::*;

    /// 32 weights as table values (signed bytes), in order, with AVX2's `pshufb`.
    #[inline(always)]
    pub(crate) unsafe fn lookup_avx2(qs: &[u8; 16]) -> __m256i {
        let table = _mm256_broadcastsi128_si256(load16(&KVALUES_U8));
        let m4 = _mm_set1_epi8(0x0f);
        let q = load16(qs);
        let lo = _mm_and_si128(q, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        _mm256_shuffle_epi8(table, _mm256_set_m128i(hi, lo))
    }

    /// The 16 i16 pair sums of `w * y` over 32 bytes (llama.cpp's `mul_sum_i8_pairs` with the
    /// roles chosen so it is exact): `|y|` is the unsigned operand (-128 becomes 128, which
    /// u8 holds) and `w` takes the sign of `y` (the table has no -128, so negating is exact);
    /// each pair sum is at most 2 * 128 * 127 < 2^15.
    #[inline(always)]
    pub(crate) unsafe fn mul_pairs_avx2(w: __m256i, y: __m256i) -> __m256i {
        _mm256_maddubs_epi16(_mm256_sign_epi8(y, y), _mm256_sign_epi8(w, y))
    }

    /// Two blocks of indices (block 0 from `q0`, block 1 from `q1`) as table values plus 128
    /// (unsigned bytes 1..=241, for `vpdpbusd`): block 0 in the low 256 bits, block 1 in the
    /// high, each in order. AVX-512 F/BW.
    #[inline(always)]
    pub(crate) unsafe fn lookup2_biased_avx512(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
        let table = _mm512_broadcast_i32x4(load16(&KVALUES_BIASED));
        let q = _mm512_castsi256_si512(_mm256_set_m128i(load16(q1), load16(q0)));
        // 128-bit lanes [q0, q0, q1, q1]; lanes 1 and 3 take the high nibbles (Q4_0's trick).
        let x = _mm512_shuffle_i64x2::<0b01_01_00_00>(q, q);
        let nib = _mm512_and_si512(
            _mm512_mask_srli_epi16::<4>(x, 0xff00_ff00, x),
            _mm512_set1_epi8(0x0f),
        );
        _mm512_shuffle_epi8(table, nib)
    }

    /// Per i32 lane, the exact sum of 4 products `w * y` from [`lookup2_biased_avx512`]'s
    /// biased `wu = w + 128`: `wu * y - 128 * y` (at most 4 * 241 * 128 either way).
    #[inline(always)]
    pub(crate) unsafe fn dot_biased_avx512(wu: __m512i, y: __m512i) -> __m512i {
        let zero = _mm512_setzero_si512();
        _mm512_sub_epi32(
            _mm512_dpbusd_epi32(zero, wu, y),
            _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(-128), y),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_is_the_nearest_value() {
        // Every value between and beyond the table entries, ties included: the nearest entry,
        // the upper one on a tie (the C code's `<`).
        let mut x = -140.0f32;
        while x < 130.0 {
            let got = best_index_int8(x) as usize;
            let dist = |i: usize| (x - KVALUES[i] as f32).abs();
            let best = (0..16).map(dist).fold(f32::INFINITY, f32::min);
            assert_eq!(dist(got), best, "x = {x}");
            if got < 15 && dist(got + 1) == best {
                panic!("x = {x}: tie resolved downwards");
            }
            x += 0.25;
        }
        assert_eq!(best_index_int8(f32::NAN), 15);
        assert_eq!(best_index_int8(f32::NEG_INFINITY), 0);
        assert_eq!(best_index_int8(0.0), 8);
        assert_eq!(best_index_int8(-4.5), 8); // tie between -10 and 1: the upper
    }

    #[test]
    fn lookups_agree() {
        let mut rng = crate::quant::tests_util::Rng::new(8);
        for _ in 0..500 {
            let qs: [u8; 16] = std::array::from_fn(|_| rng.next_u64() as u8);
            let want: [i8; 32] = std::array::from_fn(|j| {
                KVALUES[(if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 }) as usize]
            });
            assert_eq!(lookup_portable(&qs).to_array(), want);
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            {
                if crate::quant::simd::has_avx2() {
                    assert_eq!(unsafe { avx2(&qs) }, want);
                }
                if crate::quant::simd::has_avx512() {
                    let q1 = qs.map(|b| b.rotate_left(4));
                    let got = unsafe { avx512(&qs, &q1) };
                    let want1: [i8; 32] = std::array::from_fn(|j| {
                        KVALUES[(if j < 16 { q1[j] & 15 } else { q1[j - 16] >> 4 }) as usize]
                    });
                    for j in 0..32 {
                        assert_eq!(got[j] ^ 0x80, want[j] as u8);
                        assert_eq!(got[32 + j] ^ 0x80, want1[j] as u8);
                    }
                }
            }
        }
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2(qs: &[u8; 16]) -> [i8; 32] {
        std::mem::transmute(x86::lookup_avx2(qs))
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn avx512(q0: &[u8; 16], q1: &[u8; 16]) -> [u8; 64] {
        std::mem::transmute(x86::lookup2_biased_avx512(q0, q1))
    }
}
