//! What the dot kernels of the K-quants with sub-block minimums (Q2_K, Q4_K, Q5_K) share:
//! the one float combination per super-block, and the minimum term from Q8_K's `bsums`
//! (llama.cpp's `summs`).
//!
//! A super-block's value is `d * sc_s * q - dmin * m_s` per sub-block `s`, so its dot with a
//! Q8_K block (`d_x * y`) is `(d * d_x) * isum - (dmin * d_x) * msum` with the exact integers
//! `isum = sum_s sc_s * sum_{i in s} q_i y_i` and `msum = sum_s m_s * sum_{i in s} y_i`.

use super::q8_k::BlockQ8K;
use std::simd::prelude::*;

/// The float half of 8 super-blocks (lane = block), shared by every level and family.
#[inline(always)]
pub(crate) fn combine(d: f32x8, dmin: f32x8, dx: f32x8, isum: i32x8, msum: i32x8) -> f32x8 {
    (d * dx) * isum.cast::<f32>() - (dmin * dx) * msum.cast::<f32>()
}

/// [`combine`] for one block (the scalar references).
#[inline(always)]
pub(crate) fn combine1(d: f32, dmin: f32, dx: f32, isum: i32, msum: i32) -> f32 {
    (d * dx) * isum as f32 - (dmin * dx) * msum as f32
}

/// `msum` of a 32-value sub-block family (Q4_K, Q5_K): `sum_j m_j * (bsum_2j + bsum_2j+1)`.
/// |bsum| <= 16 * 128, m <= 63: |msum| <= 8 * 63 * 4096 < 2^21.
#[inline(always)]
pub(crate) fn min_sum_32(mins: &[u8; 8], y: &BlockQ8K) -> i32 {
    (0..8)
        .map(|j| mins[j] as i32 * (y.bsum(2 * j) as i32 + y.bsum(2 * j + 1) as i32))
        .sum()
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    //! AVX2 pieces, inlined into the families' `#[target_feature]` kernels.
    use super::super::q8_k::BlockQ8K;
    use super::super::simd::x86::*;

    /// [`super::min_sum_32`] as 4 i32 lanes in the low half of a vector (high half zero): the
    /// bsums paired by `hadd` (|pair| <= 4096, no i16 overflow), times the minimums by `madd`.
    #[inline(always)]
    pub(crate) unsafe fn min_sum_32(mins: &[u8; 8], y: &BlockQ8K) -> __m256i {
        let m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr().cast()));
        let bs = _mm256_loadu_si256(y.bsums.as_ptr().cast());
        let pairs = _mm_hadd_epi16(
            _mm256_castsi256_si128(bs),
            _mm256_extracti128_si256::<1>(bs),
        );
        _mm256_zextsi128_si256(_mm_madd_epi16(m16, pairs))
    }

    /// `pshufb` control that copies 16-bit lane `s` of each 128-bit half to all 8 lanes.
    #[inline(always)]
    pub(crate) unsafe fn word_broadcast(s: usize) -> __m256i {
        _mm256_set1_epi16((((2 * s + 1) << 8) | (2 * s)) as i16)
    }

    /// Lanes 0..16 of a 512-bit vector as 16-bit lane `lo` of each 128-bit quarter of the
    /// source, lanes 16..32 as lane `hi` (a `pshufb` control). AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn word_broadcast2(lo: usize, hi: usize) -> __m512i {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(word_broadcast(lo)),
            word_broadcast(hi),
        )
    }

    /// The 16 i32 lanes of `v` folded to 8 (exact). AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn fold512(v: __m512i) -> __m256i {
        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
    }
}
