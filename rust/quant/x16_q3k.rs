//! The kernel over Q3_K weights repacked 16 rows at a time (`x16::Q3_K`: the 16 rows' f16 `d`
//! open each super-block column, then its 27 dwords in reading order, the 16 rows' word side by
//! side in each 64-byte part), for AVX-512 CPUs (there is no AMX kernel for Q3_K, so prompts
//! run here too).
//!
//! Per super-block column, for all 16 rows at once (one row per dword lane), half `n` (0, 1)
//! and 4-weight group `g` (0..8) of `q3_k`'s layout:
//! - parts 0..3 are the packed scales: `q3_k::unpack_scales`' four words, 16 rows per
//!   instruction, then each sub-block's byte zero-extended and less 32;
//! - `x16::Q3_K`'s `qs_part(n, g)` holds `qs` bytes `32 n + 4 g ..`, whose bits `2 j ..` are the
//!   low bits of weights `128 n + 32 j + 4 g ..` (`j` 0..4), and `hm_part(g)` the `hmask` bytes
//!   `4 g ..` with their high bits at bits `4 n + j`: a shift, a mask and one ternary-logic or
//!   rebuild each 3-bit quant (0..8), four of them one `vpdpbusd` against 4 broadcast
//!   activation bytes, into sub-block `8 n + 2 j + g / 4`;
//! - each sub-block's sum starts at `-4 * bsum` (Q8_K's sub-block sums), so it ends as
//!   `sum (q - 4) * y`, and meets its scale in `vpmulld`.
//!
//! Bits: `isum = sum_s (scale_s - 32) * sum_{i in s} (q_i - 4) y_i` is the row kernel's exact
//! integer (bounds in `q3_k`), then `kquant_qx::combine`'s float steps into lane `b % 8`,
//! zero-padded blocks adding `+0.0` as the row driver's padding does, and the lanes reduce in
//! `simd::reduce8`'s order: `dispatch::dot`'s bits, checked for every row and token in the
//! tests.

use super::q8_k::BlockQ8K;
use super::x16::{self, ROWS};

/// The part holding `qs` bytes `32 n + 4 g .. + 4` (see `x16::Q3_K`'s order).
#[inline(always)]
const fn qs_part(n: usize, g: usize) -> usize {
    if n == 0 {
        4 + 2 * g
    } else {
        19 + g
    }
}

/// The part holding `hmask` bytes `4 g .. 4 g + 4`.
#[inline(always)]
const fn hm_part(g: usize) -> usize {
    3 + 2 * g
}

/// `out[r][n]` = row `r` of a repacked Q3_K chunk (`nb` super-blocks per row) against token
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
    const L: x16::Layout = x16::Q3_K;
    assert_eq!(chunk.len(), nb * L.column(), "x16_q3k: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "x16_q3k: activation length"
    );
    let (m1, m4) = (
        _mm512_set1_epi32(0x0303_0303),
        _mm512_set1_epi32(0x0f0f_0f0f),
    );
    let byte_of = x16::byte_of_each_dword();
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * L.column());
        // Prefetching spread over the column's reads, as in `x16_q6k`.
        super::simd::prefetch_column(hints, col, 4 * 64);
        let part = |j: usize| _mm512_loadu_si512(col.add(L.part(j)).cast());
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
        // q3_k::unpack_scales, 16 rows at once: byte k of `scales[w]` is scale `4 w + k`.
        let (a0, a1, a2) = (part(0), part(1), part(2));
        let top = |shift: u32| {
            let t = _mm512_srl_epi32(a2, _mm_cvtsi32_si128(shift as i32));
            _mm512_slli_epi32::<4>(_mm512_and_si512(t, m1))
        };
        let scales = [
            _mm512_or_si512(_mm512_and_si512(a0, m4), top(0)),
            _mm512_or_si512(_mm512_and_si512(a1, m4), top(2)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(a0), m4), top(4)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(a1), m4), top(6)),
        ];
        let mut isum = [_mm512_setzero_si512(); N];
        // One call per half and group quarter, so that every part offset and shift in them
        // is a constant: written as loops, LLVM kept the loops, with a branch per half, and
        // the kernel ran 1.9-2.5x slower (1, 4 and 8 tokens, in cache).
        let q = Quarter {
            col,
            xs: &xs,
            b,
            hints,
            scales: &scales,
            byte_of: &byte_of,
        };
        q.add::<0, 0>(&mut isum);
        q.add::<0, 1>(&mut isum);
        q.add::<1, 0>(&mut isum);
        q.add::<1, 1>(&mut isum);
        for t in 0..N {
            let dx = super::block::Scale::get(xs[t][b].d);
            x16::add_scaled(&mut acc[t][b % BLOCK_LANES], d, dx, isum[t]);
        }
    }
    x16::pad_and_reduce_rows(acc, nb)
}

/// What the sub-block sums of one super-block column need: the column, the tokens' blocks
/// `b`, whether to send hints, the unpacked scales and `byte_of_each_dword`.
#[cfg(target_arch = "x86_64")]
struct Quarter<'a, const N: usize> {
    col: *const u8,
    xs: &'a [&'a [BlockQ8K]; N],
    b: usize,
    hints: bool,
    scales: &'a [std::arch::x86_64::__m512i; 4],
    byte_of: &'a [std::arch::x86_64::__m512i; 4],
}

#[cfg(target_arch = "x86_64")]
impl<const N: usize> Quarter<'_, N> {
    /// Half `HALF`, groups `g` in `4 GH .. 4 GH + 4`: sub-blocks `8 HALF + 2 j + GH` (`j`
    /// 0..4), each sum times its scale into `isum`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn add<const HALF: usize, const GH: usize>(
        &self,
        isum: &mut [std::arch::x86_64::__m512i; N],
    ) {
        use std::arch::x86_64::*;
        const L: x16::Layout = x16::Q3_K;
        let (col, b, hints) = (self.col, self.b, self.hints);
        let part = |j: usize| _mm512_loadu_si512(col.add(L.part(j)).cast());
        let (two_bits, bit2) = (_mm512_set1_epi8(0x03), _mm512_set1_epi8(0x04));
        // `low | (high & 0x04)`: a ternary-logic truth table (a | (b & c)).
        let or_bit2 =
            |low: __m512i, high: __m512i| _mm512_ternarylogic_epi32::<0xf8>(low, high, bit2);
        let mut s: [[__m512i; 4]; N] = std::array::from_fn(|t| {
            let y = &self.xs[t][b];
            std::array::from_fn(|j| _mm512_set1_epi32(-4 * y.bsum(8 * HALF + 2 * j + GH) as i32))
        });
        for g in 4 * GH..4 * GH + 4 {
            let qp = qs_part(HALF, g);
            if HALF == 0 {
                super::simd::prefetch_column(hints, col.add(L.part(hm_part(g))), 2 * 64);
            } else {
                super::simd::prefetch_column(hints, col.add(L.part(qp)), 64);
            }
            let z = part(qp);
            // High bits 4 HALF + j moved to bits j.
            let hm = part(hm_part(g));
            let h = if HALF == 0 {
                hm
            } else {
                _mm512_srli_epi16::<4>(hm)
            };
            let q = [
                or_bit2(_mm512_and_si512(z, two_bits), _mm512_slli_epi16::<2>(h)),
                or_bit2(
                    _mm512_and_si512(_mm512_srli_epi16::<2>(z), two_bits),
                    _mm512_slli_epi16::<1>(h),
                ),
                or_bit2(_mm512_and_si512(_mm512_srli_epi16::<4>(z), two_bits), h),
                or_bit2(
                    _mm512_and_si512(_mm512_srli_epi16::<6>(z), two_bits),
                    _mm512_srli_epi16::<1>(h),
                ),
            ];
            // Indexed, not zipped: with `s.iter_mut().zip(self.xs)` LLVM kept the loops again
            // (1 token 19 against 28 GB/s in cache).
            #[allow(clippy::needless_range_loop)]
            for t in 0..N {
                let y = self.xs[t][b]
                    .qs
                    .as_ptr()
                    .add(128 * HALF + 4 * g)
                    .cast::<i32>();
                for j in 0..4 {
                    let yj = _mm512_set1_epi32(y.add(8 * j).read_unaligned());
                    s[t][j] = _mm512_dpbusd_epi32(s[t][j], q[j], yj);
                }
            }
        }
        let bias = _mm512_set1_epi32(32);
        for j in 0..4 {
            let sb = 8 * HALF + 2 * j + GH;
            let sc = _mm512_sub_epi32(
                _mm512_shuffle_epi8(self.scales[sb / 4], self.byte_of[sb % 4]),
                bias,
            );
            for (i, st) in isum.iter_mut().zip(&s) {
                *i = _mm512_add_epi32(*i, _mm512_mullo_epi32(st[j], sc));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::quant::x16::test_support::q8k_kernel_tests!(
        crate::quant::q3_k::BlockQ3K,
        "Q3_K",
        x16::Q3_K,
        [108],
        rows_avx512,
        25,
        repacked_q3_k_equals_the_row_kernel,
        bench_repacked_q3_k
    );
}
