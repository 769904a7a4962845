//! The kernel over Q6_K weights repacked 16 rows at a time (`x16::Q6_K`: the 16 rows' f16 `d`
//! open each super-block column, then its 52 dwords in reading order, the 16 rows' word side by
//! side in each 64-byte part), for AVX-512 CPUs without AMX.
//!
//! Per super-block column, for all 16 rows at once (one row per dword lane), half `h` (0, 1)
//! and 4-weight group `g` (0..8) of `q6_k`'s layout:
//! - parts `p = 4 + 24 h + 3 g` and `p + 1` are `ql` bytes `64 h + 4 g` and `64 h + 32 + 4 g`,
//!   part `p + 2` the `qh` bytes above them: one `and`/`or` per nibble rebuilds the
//!   6-bit quants of weights `128 h + 32 k + 4 g ..` (`k` 0..4), each four of them one
//!   `vpdpbusd` against 4 broadcast activation bytes, into sub-block `8 h + 2 k + g / 4`;
//! - each sub-block's sum starts at `-32 * bsum` (Q8_K's true sub-block sums), so it ends as
//!   `sum (q - 32) * y`, and meets its int8 scale (parts 0..4, sign-extended) in `vpmulld`.
//!
//! Bits: `isum = sum_s scale_s * sum_{i in s} (q_i - 32) y_i` is the row kernel's exact
//! integer (bounds in `q6_k`), then `kquant_qx::combine`'s float steps into lane `b % 8`,
//! zero-padded blocks adding `+0.0` as the row driver's padding does, and the lanes reduce in
//! `simd::reduce8`'s order: `dispatch::dot`'s bits, checked for every row and token in the
//! tests.

use super::q8_k::BlockQ8K;
use super::x16::{self, ROWS};

/// `out[r][n]` = row `r` of a repacked Q6_K chunk (`nb` super-blocks per row) against token
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
    const L: x16::Layout = x16::Q6_K;
    assert_eq!(chunk.len(), nb * L.column(), "x16_q6k: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "x16_q6k: activation length"
    );
    let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    // Byte k of each dword moved to its top byte (then `srai` sign-extends it).
    let top_byte: [__m512i; 4] = std::array::from_fn(|k| {
        let c = |i: i32| ((4 * i + k as i32) << 24) | 0x0080_8080;
        _mm512_broadcast_i32x4(_mm_setr_epi32(c(0), c(1), c(2), c(3)))
    });
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * L.column());
        // Prefetching spread over the column's reads: a burst of 53 hints at its start slowed
        // the stream from memory (14 against 21 GB/s, Zen 5, one thread).
        super::simd::prefetch_column(hints, col, 4 * 64);
        let part = |j: usize| _mm512_loadu_si512(col.add(L.part(j)).cast());
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
        let mut isum = [_mm512_setzero_si512(); N];
        // Half h, groups g in 4 gh .. 4 gh + 4: sub-blocks 8 h + 2 k + gh, k in 0..4.
        for h in 0..2 {
            for gh in 0..2 {
                let mut s: [[__m512i; 4]; N] = std::array::from_fn(|n| {
                    let y = &xs[n][b];
                    std::array::from_fn(|k| {
                        _mm512_set1_epi32(-32 * y.bsum(8 * h + 2 * k + gh) as i32)
                    })
                });
                for g in 4 * gh..4 * gh + 4 {
                    let p = 4 + 24 * h + 3 * g;
                    super::simd::prefetch_column(hints, col.add(L.part(p)), 3 * 64);
                    let (a, c, hb) = (part(p), part(p + 1), part(p + 2));
                    let q = [
                        _mm512_or_si512(
                            _mm512_and_si512(a, low),
                            _mm512_and_si512(_mm512_slli_epi16::<4>(hb), high),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(c, low),
                            _mm512_and_si512(_mm512_slli_epi16::<2>(hb), high),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(a), low),
                            _mm512_and_si512(hb, high),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(c), low),
                            _mm512_and_si512(_mm512_srli_epi16::<2>(hb), high),
                        ),
                    ];
                    for n in 0..N {
                        let y = xs[n][b].qs.as_ptr().add(128 * h + 4 * g).cast::<i32>();
                        for k in 0..4 {
                            let yk = _mm512_set1_epi32(y.add(8 * k).read_unaligned());
                            s[n][k] = _mm512_dpbusd_epi32(s[n][k], q[k], yk);
                        }
                    }
                }
                for k in 0..4 {
                    let sb = 8 * h + 2 * k + gh;
                    let words = part(sb / 4);
                    let sc = _mm512_srai_epi32::<24>(_mm512_shuffle_epi8(words, top_byte[sb % 4]));
                    for (i, sn) in isum.iter_mut().zip(&s) {
                        *i = _mm512_add_epi32(*i, _mm512_mullo_epi32(sn[k], sc));
                    }
                }
            }
        }
        for n in 0..N {
            let dx = super::block::Scale::get(xs[n][b].d);
            x16::add_scaled(&mut acc[n][b % BLOCK_LANES], d, dx, isum[n]);
        }
    }
    x16::pad_and_reduce_rows(acc, nb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::q6_k::BlockQ6K;
    use crate::quant::tests_util::Rng;
    use crate::quant::x16::test_support::random_blocks;

    crate::quant::x16::test_support::q8k_kernel_tests!(
        BlockQ6K,
        "Q6_K",
        x16::Q6_K,
        [208],
        rows_avx512,
        32,
        repacked_q6_k_equals_the_row_kernel,
        bench_repacked_q6_k
    );

    #[test]
    fn the_column_opens_with_the_rows_scales() {
        let mut rng = Rng::new(31);
        for nb in [1, 3, 8, 22] {
            let w: Vec<BlockQ6K> = random_blocks(ROWS * nb, &[208], &mut rng, false);
            let p = x16::test_support::repacked_checked(
                crate::quant::block::bytes_of(&w),
                nb,
                x16::Q6_K,
            );
            for r in 0..ROWS {
                assert_eq!(p[2 * r..2 * r + 2], w[r * nb].d.0, "nb={nb} row {r}'s d");
            }
        }
    }
}
