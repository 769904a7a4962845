//! The kernel over Q4_K weights repacked 16 rows at a time (`x16::Q4_K`: each super-block's
//! 36 dwords, the 16 rows' word `j` side by side in part `j`), for AVX-512 CPUs without AMX.
//!
//! Per super-block column, for all 16 rows at once (one row per dword lane):
//! - part 0 is `d | dmin << 16`, parts 1..4 the packed scales: their 8 six-bit scales and 8
//!   six-bit minimums come out with `kquant_scales`' word trick, 16 rows per instruction;
//! - parts 4..36 are the quants: part `4 + 8 c + k` holds bytes `4 k .. 4 k + 4` of each row's
//!   32-byte chunk `c`, whose low nibbles are sub-block `2 c` and high nibbles `2 c + 1`, so
//!   one `vpdpbusd` against 4 broadcast activation bytes advances 16 rows' sub-block sums;
//! - `isum = sum_s sc_s * dot_s` (`vpmulld`) and `msum = sum_s m_s * ysum_s` (`vpdpbusd` of the
//!   minimums against [`K8Aux`]'s split sub-block sums), both exact in i32.
//!
//! Bits: the integers are those of the row kernel (exact), then the same float steps as
//! `kquant_dot::combine` into lane `b % 8`, zero-padded blocks add `+0.0` as the row driver's
//! padding does, and the lanes reduce in `simd::reduce8`'s order: `dispatch::dot`'s bits,
//! checked for every row and token in the tests.

use super::kquant_dot::K8Aux;
use super::x16::{self, ROWS};

/// `out[r][n]` = row `r` of a repacked Q4_K chunk (`nb` super-blocks per row) against token
/// `n` (its Q8_K blocks and sub-block sums in `aux[n]`), each part unpacked once for all `N`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI and F16C (`simd::has_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_avx512<const N: usize>(
    chunk: &[u8],
    nb: usize,
    aux: [&K8Aux; N],
) -> [[f32; N]; ROWS] {
    use super::simd::BLOCK_LANES;
    use std::arch::x86_64::*;
    const L: x16::Layout = x16::Q4_K;
    assert_eq!(chunk.len(), nb * L.column(), "x16_q4k: chunk length");
    let padded = nb.div_ceil(BLOCK_LANES) * BLOCK_LANES;
    assert!(
        aux.iter().all(|a| a.padded_len() == padded),
        "x16_q4k: activation length"
    );
    let (m6, m4, m2) = (
        _mm512_set1_epi32(0x3f3f_3f3f),
        _mm512_set1_epi32(0x0f0f_0f0f),
        _mm512_set1_epi32(0x0303_0303),
    );
    let low = _mm512_set1_epi8(0x0f);
    // Byte k of each dword, zero-extended: shuffle control `4 i + k` then three zeroing bytes.
    let byte_of: [__m512i; 4] = std::array::from_fn(|k| {
        let c = |i: i32| (0x8080_8000u32 as i32) | (4 * i + k as i32);
        _mm512_broadcast_i32x4(_mm_setr_epi32(c(0), c(1), c(2), c(3)))
    });
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * L.column());
        // Prefetching spread over the column's reads, as in `x16_q6k` (a burst of hints at the
        // column's start slows the stream from memory).
        super::simd::prefetch_column(hints, col, 4 * 64);
        let part = |j: usize| col.add(L.part(j)).cast::<__m512i>();
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
            let mut s0 = [_mm512_setzero_si512(); N];
            let mut s1 = [_mm512_setzero_si512(); N];
            for k in 0..8 {
                super::simd::prefetch_column(hints, part(4 + 8 * c + k).cast(), 64);
                let z = _mm512_loadu_si512(part(4 + 8 * c + k));
                let lo = _mm512_and_si512(z, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
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
            let dx = _mm512_set1_ps(super::block::Scale::get(aux[n].block(b).d));
            // kquant_dot::combine: (d * dx) * isum - (dmin * dx) * msum.
            let term = _mm512_sub_ps(
                _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(isum[n])),
                _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(msum)),
            );
            let lane = &mut acc[n][b % BLOCK_LANES];
            *lane = _mm512_add_ps(*lane, term);
        }
    }
    // The row driver pads the last group with zero blocks, which add +0.0 to their lanes.
    for b in nb..padded {
        for a in acc.iter_mut() {
            a[b % BLOCK_LANES] = _mm512_add_ps(a[b % BLOCK_LANES], _mm512_setzero_ps());
        }
    }
    x16::reduce_rows(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::{bytes_of, zeroed};
    use crate::quant::kquant_dot::k8_aux;
    use crate::quant::q4_k::BlockQ4K;
    use crate::quant::q8_k::BlockQ8K;
    use crate::quant::simd;
    use crate::quant::tests_util::{finite_half, Rng, EXTREME_BYTES, EXTREME_HALVES};

    /// 16 rows of `nb` random super-blocks (finite or extreme `d` and `dmin`; random or
    /// extreme scale and quant bytes).
    fn rows(nb: usize, rng: &mut Rng, extreme: bool) -> Vec<BlockQ4K> {
        (0..ROWS * nb)
            .map(|_| {
                let mut b = zeroed::<BlockQ4K>();
                let byte = |rng: &mut Rng| {
                    if extreme && rng.next_u64().is_multiple_of(2) {
                        EXTREME_BYTES[(rng.next_u64() % 10) as usize]
                    } else {
                        rng.next_u64() as u8
                    }
                };
                b.scales.iter_mut().for_each(|s| *s = byte(rng));
                b.qs.iter_mut().for_each(|q| *q = byte(rng));
                let half = |rng: &mut Rng| {
                    if extreme {
                        crate::quant::fp16::F16(
                            EXTREME_HALVES[(rng.next_u64() % 9) as usize].to_le_bytes(),
                        )
                    } else {
                        finite_half(rng)
                    }
                };
                b.d = half(rng);
                b.dmin = half(rng);
                b
            })
            .collect()
    }

    fn repacked(w: &[BlockQ4K], nb: usize) -> Vec<u8> {
        x16::test_support::repacked_checked(bytes_of(w), nb, x16::Q4_K)
    }

    #[test]
    fn repack_keeps_every_row() {
        let mut rng = Rng::new(21);
        for nb in [1, 3, 8, 22] {
            repacked(&rows(nb, &mut rng, false), nb);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn check<const N: usize>(w: &[BlockQ4K], p: &[u8], nb: usize, xs: &[Vec<BlockQ8K>], ctx: &str) {
        let aux: Vec<K8Aux> = xs.iter().map(|x| k8_aux(x)).collect();
        // SAFETY: the caller checks simd::has_avx512.
        let out = unsafe { rows_avx512::<N>(p, nb, std::array::from_fn(|n| &aux[n])) };
        x16::test_support::assert_row_kernel_bits(&out, w, nb, xs, ctx);
    }

    /// The repacked kernel gives `dispatch::dot`'s bits for every row and token, 1..8 tokens
    /// at once, whole and partial groups of 8 super-blocks.
    #[test]
    fn repacked_q4_k_equals_the_row_kernel() {
        if !simd::has_avx512() {
            return eprintln!("repacked Q4_K kernel: skipped (CPU lacks AVX-512)");
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut rng = Rng::new(22);
            for nb in [1, 2, 7, 8, 9, 22] {
                for extreme in [false, true] {
                    let w = rows(nb, &mut rng, extreme);
                    let p = repacked(&w, nb);
                    let xs = x16::test_support::q8k_tokens(8, nb, &mut rng, extreme);
                    let ctx = format!("nb={nb} extreme={extreme}");
                    check::<1>(&w, &p, nb, &xs, &ctx);
                    check::<2>(&w, &p, nb, &xs, &ctx);
                    check::<3>(&w, &p, nb, &xs, &ctx);
                    check::<4>(&w, &p, nb, &xs, &ctx);
                    check::<8>(&w, &p, nb, &xs, &ctx);
                }
            }
            eprintln!("repacked Q4_K kernel checked: avx512 ran");
        }
    }
}
