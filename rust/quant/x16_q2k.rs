//! The kernel over Q2_K weights repacked 16 rows at a time (`x16::Q2_K`: each super-block's
//! 21 dwords in reading order, the 16 rows' word side by side in each 64-byte part), for AVX-512
//! CPUs (there is no AMX kernel for Q2_K, so prompts run here too).
//!
//! Per super-block column, for all 16 rows at once (one row per dword lane), half `n` (0, 1)
//! and 4-weight group `g` (0..8) of `q2_k`'s layout:
//! - part 0 is `d | dmin << 16`, parts 1..5 the 16 scale bytes (scale in the low nibble,
//!   minimum in the high one), byte `s % 4` of part `1 + s / 4` for sub-block `s`;
//! - part `5 + 8 n + g` holds `qs` bytes `32 n + 4 g ..`, whose bits `2 j ..` are the levels of
//!   weights `128 n + 32 j + 4 g ..` (`j` 0..4): one shift and one mask each, four of them one
//!   `vpdpbusd` against 4 broadcast activation bytes, into sub-block `8 n + 2 j + g / 4`;
//! - `isum = sum_s sc_s * dot_s` (`vpmulld`) and `msum = sum_s m_s * bsum_s` (`vpdpwssd` of the
//!   minimums, two per dword as i16, against Q8_K's sub-block sums), both exact in i32.
//!
//! Bits: the integers are those of the row kernel (exact), then `kquant_dot::combine`'s float
//! steps into lane `b % 8`, zero-padded blocks adding `+0.0` as the row driver's padding does,
//! and the lanes reduce in `simd::reduce8`'s order: `dispatch::dot`'s bits, checked for every
//! row and token in the tests.

use super::q8_k::BlockQ8K;
use super::x16::{self, ROWS};

/// `out[r][n]` = row `r` of a repacked Q2_K chunk (`nb` super-blocks per row) against token
/// `n` (its Q8_K blocks `xs[n]`), each part unpacked once for all `N`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI and F16C (`simd::has_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_avx512<const N: usize>(
    chunk: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; N],
) -> [[f32; N]; ROWS] {
    use super::simd::BLOCK_LANES;
    use std::arch::x86_64::*;
    const L: x16::Layout = x16::Q2_K;
    assert_eq!(chunk.len(), nb * L.column(), "x16_q2k: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "x16_q2k: activation length"
    );
    let two_bits = _mm512_set1_epi8(0x03);
    let low4 = _mm512_set1_epi32(0x0f);
    let byte_of = x16::byte_of_each_dword();
    // Bytes 2h and 2h + 1 of each dword as its two i16 halves, zero-extended.
    let pair_of: [__m512i; 2] = std::array::from_fn(|h| {
        let c = |i: i32| {
            let (lo, hi) = (4 * i + 2 * h as i32, 4 * i + 2 * h as i32 + 1);
            (0x8000_8000u32 as i32) | lo | (hi << 16)
        };
        _mm512_broadcast_i32x4(_mm_setr_epi32(c(0), c(1), c(2), c(3)))
    });
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * L.column());
        // Prefetching spread over the column's reads, as in `x16_q6k`.
        super::simd::prefetch_column(hints, col, 5 * 64);
        let part = |j: usize| _mm512_loadu_si512(col.add(L.part(j)).cast());
        let dd = part(0);
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
        let scales: [__m512i; 4] = std::array::from_fn(|w| part(1 + w));
        let mut isum = [_mm512_setzero_si512(); N];
        for n in 0..2 {
            for gh in 0..2 {
                let mut s = [[_mm512_setzero_si512(); 4]; N];
                for g in 4 * gh..4 * gh + 4 {
                    let p = 5 + 8 * n + g;
                    super::simd::prefetch_column(hints, col.add(L.part(p)), 64);
                    let z = part(p);
                    let q = [
                        _mm512_and_si512(z, two_bits),
                        _mm512_and_si512(_mm512_srli_epi16::<2>(z), two_bits),
                        _mm512_and_si512(_mm512_srli_epi16::<4>(z), two_bits),
                        _mm512_and_si512(_mm512_srli_epi16::<6>(z), two_bits),
                    ];
                    for t in 0..N {
                        let y = xs[t][b].qs.as_ptr().add(128 * n + 4 * g).cast::<i32>();
                        for j in 0..4 {
                            let yj = _mm512_set1_epi32(y.add(8 * j).read_unaligned());
                            s[t][j] = _mm512_dpbusd_epi32(s[t][j], q[j], yj);
                        }
                    }
                }
                for j in 0..4 {
                    let sb = 8 * n + 2 * j + gh;
                    let sc = _mm512_and_si512(
                        _mm512_shuffle_epi8(scales[sb / 4], byte_of[sb % 4]),
                        low4,
                    );
                    for (i, st) in isum.iter_mut().zip(&s) {
                        *i = _mm512_add_epi32(*i, _mm512_mullo_epi32(st[j], sc));
                    }
                }
            }
        }
        // The minimums of sub-blocks 4 w + 2 h and 4 w + 2 h + 1 as the i16 halves of a dword.
        let mins: [[__m512i; 2]; 4] = std::array::from_fn(|w| {
            std::array::from_fn(|h| {
                _mm512_srli_epi16::<4>(_mm512_shuffle_epi8(scales[w], pair_of[h]))
            })
        });
        for t in 0..N {
            let y = &xs[t][b];
            let mut msum = _mm512_setzero_si512();
            for (w, mw) in mins.iter().enumerate() {
                for (h, m) in mw.iter().enumerate() {
                    let s0 = 4 * w + 2 * h;
                    let sums = (y.bsum(s0) as u16 as u32) | ((y.bsum(s0 + 1) as u16 as u32) << 16);
                    msum = _mm512_dpwssd_epi32(msum, *m, _mm512_set1_epi32(sums as i32));
                }
            }
            let dx = super::block::Scale::get(y.d);
            x16::add_scaled_min(&mut acc[t][b % BLOCK_LANES], (d, dmin), dx, isum[t], msum);
        }
    }
    x16::pad_and_reduce_rows(acc, nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::quant::x16::test_support::q8k_kernel_tests!(
        crate::quant::q2_k::BlockQ2K,
        "Q2_K",
        x16::Q2_K,
        [80, 82],
        rows_avx512,
        26,
        repacked_q2_k_equals_the_row_kernel,
        bench_repacked_q2_k
    );
}
