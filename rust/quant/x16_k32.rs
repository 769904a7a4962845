//! The kernel over Q4_K and Q5_K weights repacked 16 rows at a time (`x16::Q4_K`, `x16::Q5_K`:
//! each super-block's dwords, the 16 rows' word `j` side by side in part `j`), for AVX-512 CPUs
//! without AMX. The two families differ only in Q5_K's fifth bits.
//!
//! Per super-block column, for all 16 rows at once (one row per dword lane):
//! - part 0 is `d | dmin << 16`, parts 1..4 the packed scales: their 8 six-bit scales and 8
//!   six-bit minimums come out with `kquant_scales`' word trick, 16 rows per instruction;
//! - the quants: part `qs_part(c, k)` holds bytes `4 k .. 4 k + 4` of each row's 32-byte chunk
//!   `c`, whose low nibbles are sub-block `2 c` and high nibbles `2 c + 1`, so one `vpdpbusd`
//!   against 4 broadcast activation bytes advances 16 rows' sub-block sums;
//! - Q5_K only: part `qh_part(k)` holds `qh` bytes `4 k .. 4 k + 4`, whose bit `s` is the fifth
//!   bit of the same weight in sub-block `s`;
//! - `isum = sum_s sc_s * dot_s` (`vpmulld`) and `msum = sum_s m_s * ysum_s` (`vpdpbusd` of the
//!   minimums against [`K8Aux`]'s split sub-block sums), both exact in i32.
//!
//! Bits: the integers are those of the row kernel (exact), then the same float steps as
//! `kquant_dot::combine` into lane `b % 8`, zero-padded blocks add `+0.0` as the row driver's
//! padding does, and the lanes reduce in `simd::reduce8`'s order: `dispatch::dot`'s bits,
//! checked for every row and token in the tests.

use super::kquant_dot::K8Aux;
use super::x16::{self, Layout, ROWS};

/// A repacked family of this kernel: its layout, whether its levels have a fifth bit, and
/// where the layout puts each part (in the order the kernel reads them, so that each column
/// streams front to back).
pub(crate) trait X16K32 {
    const LAYOUT: Layout;
    const FIFTH_BIT: bool;
    /// The part of quant word `k` of chunk `c`.
    fn qs_part(c: usize, k: usize) -> usize;
    /// The part of `qh` word `k` (Q5_K).
    fn qh_part(k: usize) -> usize;
}

impl X16K32 for super::q4_k::BlockQ4K {
    const LAYOUT: Layout = x16::Q4_K;
    const FIFTH_BIT: bool = false;
    #[inline(always)]
    fn qs_part(c: usize, k: usize) -> usize {
        4 + 8 * c + k
    }
    fn qh_part(_: usize) -> usize {
        unreachable!("Q4_K has no fifth bits")
    }
}

/// `x16::Q5_K`: `qh` word `k` then chunk 0's word `k`, pair by pair, then chunks 1..4.
impl X16K32 for super::q5_k::BlockQ5K {
    const LAYOUT: Layout = x16::Q5_K;
    const FIFTH_BIT: bool = true;
    #[inline(always)]
    fn qs_part(c: usize, k: usize) -> usize {
        if c == 0 {
            5 + 2 * k
        } else {
            12 + 8 * c + k
        }
    }
    #[inline(always)]
    fn qh_part(k: usize) -> usize {
        4 + 2 * k
    }
}

/// `out[r][n]` = row `r` of a repacked Q4_K or Q5_K chunk (`nb` super-blocks per row) against
/// token `n` (its Q8_K blocks and sub-block sums in `aux[n]`), each part unpacked once for all
/// `N`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI and F16C (`simd::has_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_avx512<B: X16K32, const N: usize>(
    chunk: &[u8],
    nb: usize,
    aux: [&K8Aux; N],
) -> [[f32; N]; ROWS] {
    use super::simd::BLOCK_LANES;
    use std::arch::x86_64::*;
    let l = B::LAYOUT;
    assert_eq!(chunk.len(), nb * l.column(), "x16_k32: chunk length");
    let padded = nb.div_ceil(BLOCK_LANES) * BLOCK_LANES;
    assert!(
        aux.iter().all(|a| a.padded_len() == padded),
        "x16_k32: activation length"
    );
    let (m6, m4, m2) = (
        _mm512_set1_epi32(0x3f3f_3f3f),
        _mm512_set1_epi32(0x0f0f_0f0f),
        _mm512_set1_epi32(0x0303_0303),
    );
    let low = _mm512_set1_epi8(0x0f);
    let bit4 = _mm512_set1_epi8(0x10);
    // `nib | (bits & 0x10)`: a ternary-logic truth table (a | (b & c)).
    let or_bit4 = |nib: __m512i, bits: __m512i| _mm512_ternarylogic_epi32::<0xf8>(nib, bits, bit4);
    let byte_of = x16::byte_of_each_dword();
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * l.column());
        // Prefetching spread over the column's reads, as in `x16_q6k` (a burst of hints at the
        // column's start slows the stream from memory).
        super::simd::prefetch_column(hints, col, 4 * 64);
        let part = |j: usize| col.add(l.part(j)).cast::<__m512i>();
        let dd = _mm512_loadu_si512(part(0));
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
        let (wa, wb, wc) = (
            _mm512_loadu_si512(part(1)),
            _mm512_loadu_si512(part(2)),
            _mm512_loadu_si512(part(3)),
        );
        // kquant_scales::unpack_scales_mins, 16 rows at once: bytes 0..4 of `sc[0]` are
        // scales 0..4, of `sc[1]` scales 4..8; the same for the minimums.
        let hi_bits =
            |w: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w), m2));
        let sc = [
            _mm512_and_si512(wa, m6),
            _mm512_or_si512(_mm512_and_si512(wc, m4), hi_bits(wa)),
        ];
        let mins = [
            _mm512_and_si512(wb, m6),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(wc), m4),
                hi_bits(wb),
            ),
        ];
        let mut isum = [_mm512_setzero_si512(); N];
        for c in 0..4 {
            // `qh >> 2c` in 16-bit lanes leaves each byte's bits 2c, 2c + 1 at its bits 0, 1.
            let qh_shift = _mm_cvtsi32_si128(2 * c as i32);
            let mut s0 = [_mm512_setzero_si512(); N];
            let mut s1 = [_mm512_setzero_si512(); N];
            for k in 0..8 {
                let q = part(B::qs_part(c, k));
                if B::FIFTH_BIT && c == 0 {
                    super::simd::prefetch_column(hints, part(B::qh_part(k)).cast(), 64);
                }
                super::simd::prefetch_column(hints, q.cast(), 64);
                let z = _mm512_loadu_si512(q);
                let mut lo = _mm512_and_si512(z, low);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
                if B::FIFTH_BIT {
                    let h = _mm512_loadu_si512(part(B::qh_part(k)));
                    let h = _mm512_srl_epi16(h, qh_shift);
                    lo = or_bit4(lo, _mm512_slli_epi16::<4>(h));
                    hi = or_bit4(hi, _mm512_slli_epi16::<3>(h));
                }
                for n in 0..N {
                    let y = aux[n].block(b).qs.as_ptr().cast::<i32>();
                    let y0 = _mm512_set1_epi32(y.add(16 * c + k).read_unaligned());
                    let y1 = _mm512_set1_epi32(y.add(16 * c + 8 + k).read_unaligned());
                    s0[n] = _mm512_dpbusd_epi32(s0[n], lo, y0);
                    s1[n] = _mm512_dpbusd_epi32(s1[n], hi, y1);
                }
            }
            // Sub-blocks 2c and 2c + 1: bytes 2 (c % 2) and 2 (c % 2) + 1 of sc[c / 2].
            let src = sc[c / 2];
            let sc0 = _mm512_shuffle_epi8(src, byte_of[2 * (c % 2)]);
            let sc1 = _mm512_shuffle_epi8(src, byte_of[2 * (c % 2) + 1]);
            for n in 0..N {
                let t = _mm512_add_epi32(
                    _mm512_mullo_epi32(s0[n], sc0),
                    _mm512_mullo_epi32(s1[n], sc1),
                );
                isum[n] = _mm512_add_epi32(isum[n], t);
            }
        }
        for n in 0..N {
            let ss = aux[n].sub_sums(b);
            let z = _mm512_setzero_si512();
            let part_sum = |lo: i32, hi: i32| {
                let v = _mm512_dpbusd_epi32(z, mins[0], _mm512_set1_epi32(lo));
                _mm512_dpbusd_epi32(v, mins[1], _mm512_set1_epi32(hi))
            };
            let msum = _mm512_add_epi32(
                part_sum(ss[0], ss[1]),
                _mm512_slli_epi32::<7>(part_sum(ss[2], ss[3])),
            );
            let dx = super::block::Scale::get(aux[n].block(b).d);
            x16::add_scaled_min(&mut acc[n][b % BLOCK_LANES], (d, dmin), dx, isum[n], msum);
        }
    }
    x16::pad_and_reduce_rows(acc, nb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::Family;
    use crate::quant::q8_k::BlockQ8K;
    use crate::quant::x16::test_support::{check_kernel, KernelUnderTest};
    use std::marker::PhantomData;

    /// The kernel for family `B`, whose f16 `d` and `dmin` are bytes 0..4.
    struct Kernel<B>(PhantomData<B>);
    impl<B> KernelUnderTest for Kernel<B>
    where
        B: X16K32 + Family<Act = BlockQ8K, Aux = K8Aux> + crate::quant::block::Pod,
    {
        type Block = B;
        type Acts = Vec<K8Aux>;
        const NAME: &'static str = if B::FIFTH_BIT { "Q5_K" } else { "Q4_K" };
        const LAYOUT: Layout = B::LAYOUT;
        const HALVES: &'static [usize] = &[0, 2];
        fn prepare(xs: &[Vec<BlockQ8K>]) -> Vec<K8Aux> {
            xs.iter()
                .map(|x| crate::quant::kquant_dot::k8_aux(x))
                .collect()
        }
        #[cfg(target_arch = "x86_64")]
        unsafe fn run<const N: usize>(p: &[u8], nb: usize, aux: &Vec<K8Aux>) -> [[f32; N]; ROWS] {
            rows_avx512::<B, N>(p, nb, std::array::from_fn(|n| &aux[n]))
        }
    }

    #[test]
    fn repacked_q4_k_equals_the_row_kernel() {
        check_kernel::<Kernel<crate::quant::q4_k::BlockQ4K>>(22);
    }

    #[test]
    fn repacked_q5_k_equals_the_row_kernel() {
        check_kernel::<Kernel<crate::quant::q5_k::BlockQ5K>>(23);
    }

    #[test]
    #[ignore]
    #[cfg(target_arch = "x86_64")]
    fn bench_repacked_k32() {
        x16::test_support::bench_kernel::<Kernel<crate::quant::q4_k::BlockQ4K>>();
        x16::test_support::bench_kernel::<Kernel<crate::quant::q5_k::BlockQ5K>>();
    }
}
