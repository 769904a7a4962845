//! The kernel over IQ4_XS weights repacked 16 rows at a time (`x16::IQ4_XS`: each
//! super-block's 34 dwords in the file's order, the 16 rows' word `j` side by side in part `j`),
//! for AVX-512 CPUs (there is no AMX kernel for IQ4_XS, so prompts run here too).
//!
//! Per super-block column, for all 16 rows at once (one row per dword lane):
//! - part 0 is `d | scales_h << 16`, part 1 `scales_l`: sub-block `ib`'s scale is bits
//!   `4 ib .. 4 ib + 4` of part 1 with bits `16 + 2 ib ..` of part 0 above them, minus 32;
//! - part `2 + 4 ib + k` holds index bytes `4 k .. 4 k + 4` of sub-block `ib`, whose low
//!   nibbles are weights `4 k ..` and high nibbles weights `16 + 4 k ..`: `vpshufb` maps them
//!   to the table value plus 128 (`iq4::KVALUES_BIASED`, unsigned for `vpdpbusd`), and each
//!   sub-block's sum starts at `-128 * ysum` (Q8_K's sub-block sums) to take the bias back out;
//! - `isum = sum_ib scale_ib * dot_ib` (`vpmulld`), exact in i32.
//!
//! Bits: `isum` is the row kernel's exact integer (bounds in `iq4_xs`), then `(d * dx) * isum`
//! into lane `b % 8`, zero-padded blocks adding `+0.0` as the row driver's padding does, and the
//! lanes reduce in `simd::reduce8`'s order: `dispatch::dot`'s bits, checked for every row and
//! token in the tests.

use super::q8_k::BlockQ8K;
use super::x16::{self, ROWS};

/// `out[r][n]` = row `r` of a repacked IQ4_XS chunk (`nb` super-blocks per row) against token
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
    const L: x16::Layout = x16::IQ4_XS;
    assert_eq!(chunk.len(), nb * L.column(), "x16_iq4xs: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "x16_iq4xs: activation length"
    );
    let low = _mm512_set1_epi8(0x0f);
    let table = _mm512_broadcast_i32x4(_mm_loadu_si128(super::iq4::KVALUES_BIASED.as_ptr().cast()));
    let (m4, m2, bias) = (
        _mm512_set1_epi32(0x0f),
        _mm512_set1_epi32(0x03),
        _mm512_set1_epi32(32),
    );
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * L.column());
        // Prefetching spread over the column's reads, as in `x16_q6k`.
        super::simd::prefetch_column(hints, col, 2 * 64);
        let part = |j: usize| col.add(L.part(j)).cast::<__m512i>();
        let head = _mm512_loadu_si512(part(0));
        let scales_l = _mm512_loadu_si512(part(1));
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
        let mut isum = [_mm512_setzero_si512(); N];
        for ib in 0..8 {
            let lo4 = _mm512_and_si512(
                _mm512_srl_epi32(scales_l, _mm_cvtsi32_si128(4 * ib as i32)),
                m4,
            );
            let hi2 = _mm512_and_si512(
                _mm512_srl_epi32(head, _mm_cvtsi32_si128(16 + 2 * ib as i32)),
                m2,
            );
            let scale = _mm512_sub_epi32(_mm512_or_si512(lo4, _mm512_slli_epi32::<4>(hi2)), bias);
            // Two sums per sub-block (low and high nibbles) keep two dependency chains.
            let mut s0: [__m512i; N] = std::array::from_fn(|n| {
                let y = &xs[n][b];
                _mm512_set1_epi32(-128 * (y.bsum(2 * ib) as i32 + y.bsum(2 * ib + 1) as i32))
            });
            let mut s1 = [_mm512_setzero_si512(); N];
            for k in 0..4 {
                let q = part(2 + 4 * ib + k);
                super::simd::prefetch_column(hints, q.cast(), 64);
                let z = _mm512_loadu_si512(q);
                let wl = _mm512_shuffle_epi8(table, _mm512_and_si512(z, low));
                let wh =
                    _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(z), low));
                for n in 0..N {
                    let y = xs[n][b].qs.as_ptr().cast::<i32>();
                    let y0 = _mm512_set1_epi32(y.add(8 * ib + k).read_unaligned());
                    let y1 = _mm512_set1_epi32(y.add(8 * ib + 4 + k).read_unaligned());
                    s0[n] = _mm512_dpbusd_epi32(s0[n], wl, y0);
                    s1[n] = _mm512_dpbusd_epi32(s1[n], wh, y1);
                }
            }
            for n in 0..N {
                let dot = _mm512_add_epi32(s0[n], s1[n]);
                isum[n] = _mm512_add_epi32(isum[n], _mm512_mullo_epi32(dot, scale));
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

    crate::quant::x16::test_support::q8k_kernel_tests!(
        crate::quant::iq4_xs::BlockIq4Xs,
        "IQ4_XS",
        x16::IQ4_XS,
        [0],
        rows_avx512,
        24,
        repacked_iq4_xs_equals_the_row_kernel,
        bench_repacked_iq4_xs
    );
}
