//! Pieces shared by the families of 16 sub-blocks of 16 weights with one int8 scale each
//! (Q6_K and Q3_K: offset unsigned quants, no minimums; Q2_K: unsigned quants and a minimum
//! per sub-block): llama.cpp's scale searches of Q6_K and Q3_K, followed operation for
//! operation; the portable integer core; and, written once over [`SubBlocks16`] (a family
//! supplies only how it unpacks its quants, and its [`Offset`]), the AVX2 / AVX-512 chunk
//! kernels and the multi-row kernel.
//!
//! The searches are ggml-quants.c's as `llama-quantize` runs them without an importance
//! matrix. That file is built without `-march=native`, so there is no FMA contraction: every
//! step below is one IEEE f32 operation in the C source's order (`w*x[i]*l` is
//! `(w * x) * l as f32`), an `int` is converted to `float` where the C converts it, and
//! `nearest_int` is ggml's.

use super::block::Family;
use super::fp16::F16;
use super::q8_k::{nearest_int, BlockQ8K};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::simd;
use std::simd::prelude::*;

/// ggml-quants.c's `GROUP_MAX_EPS`: groups whose largest magnitude is below it are all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// The value of largest magnitude (sign kept; the first of equal magnitudes; NaN never wins)
/// and that magnitude: the opening loop of every ggml scale search.
#[inline(always)]
fn signed_abs_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `MAX(-nmax, MIN(nmax - 1, l))`.
#[inline(always)]
fn clamp_l(l: i32, nmax: i32) -> i32 {
    l.min(nmax - 1).max(-nmax)
}

/// llama.cpp's `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)` (the Q6_K search):
/// quantize `x` to `l - nmax` with `l` in `0..2 nmax` (written to `ls`), trying the scales
/// `-(nmax + 0.1 is) / max` for `is` in -9..=9 and keeping the one of least weighted error
/// (weights `x^2`); returns the scale. An all-zero group gives `ls = 0`, scale 0.
pub(crate) fn make_qx_quants_rmse1(nmax: i32, x: &[f32], ls: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), ls.len());
    let (max, amax) = signed_abs_max(x);
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    // (sum w x l, sum w l^2) for the quants of `iscale`, w = x^2.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = clamp_l(nearest_int(iscale * v), nmax) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let write = |iscale: f32, ls: &mut [i8]| {
        for (o, &v) in ls.iter_mut().zip(x) {
            *o = (nmax + clamp_l(nearest_int(iscale * v), nmax)) as i8;
        }
    };
    let iscale = -nmaxf / max;
    write(iscale, ls);
    let (sumlx, suml2) = sums(iscale);
    // C: `suml2 ? sumlx/suml2 : 0.0f` (a NaN sum is true there, as `!= 0.0` is here).
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            write(iscale, ls);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// llama.cpp's `make_q3_quants(n, nmax, x, L, do_rmse = true)` (the Q3_K search): quantize
/// with `-nmax / max`, then up to 5 rounds of moving single quants (`l` in `-nmax..nmax`)
/// while the weighted error (weights `x^2`) falls; `ls` gets `l + nmax`, the scale is
/// returned. An all-zero group gives `ls = 0` (not `nmax`: as the C), scale 0.
pub(crate) fn make_q3_quants_rmse(nmax: i32, x: &[f32], ls: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), ls.len());
    let (max, amax) = signed_abs_max(x);
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in ls.iter_mut().zip(x) {
        let l = clamp_l(nearest_int(iscale * v), nmax);
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (o, &v) in ls.iter_mut().zip(x) {
            let w = v * v;
            let li = *o as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp_l(nearest_int(v * sl2 / slx), nmax);
                if new_l != *o as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for o in ls.iter_mut() {
        *o += nmax as i8;
    }
    sumlx / suml2
}

/// The quants of one 16-weight sub-block for its final scale `d` (the last loop of
/// `quantize_row_q6_K_ref` / `quantize_row_q3_K_ref`): `l = clamp(nearest_int(x / d))`,
/// stored as `l + nmax`. A zero `d` leaves the search's quants in place, as the C does.
pub(crate) fn requantize_group(nmax: i32, d: f32, x: &[f32], ls: &mut [i8]) {
    if d == 0.0 {
        return;
    }
    for (o, &v) in ls.iter_mut().zip(x) {
        *o = (clamp_l(nearest_int(v / d), nmax) + nmax) as i8;
    }
}

/// The float half of a super-block, shared by every level of both families:
/// `acc[b % 8] += (d_w * d_x) * isum` (llama.cpp's `d = fp16(x.d) * y.d; sum += d * isum`).
#[inline(always)]
pub(crate) fn combine(dw: f32x8, dx: f32x8, isum: i32x8) -> f32x8 {
    (dw * dx) * isum.cast::<f32>()
}

/// [`combine`] for one super-block, in the scalar references.
#[inline(always)]
pub(crate) fn combine_one(dw: F16, dx: f32, isum: i32) -> f32 {
    use super::block::Scale;
    (dw.get() * dx) * isum as f32
}

/// `sum_j scales[j] * sum_{i in sub-block j} (q_i - off) * y_i` over one super-block, the
/// 256 quants `q` (unsigned, at most 63) in weight order as 8 vectors of 32, in plain
/// std::simd: `|q - off| <= 64` so each product (at most `64 * 128`) fits an i16; they are
/// widened and scaled per lane (the sums bounded by each family's comment).
#[inline(always)]
pub(crate) fn scaled_isum_portable(
    q: &[u8x32; 8],
    off: i16,
    scales: &[i8; 16],
    y: &BlockQ8K,
) -> i32 {
    let mut acc = i32x32::splat(0);
    for (m, qm) in q.iter().enumerate() {
        let yv = i8x32::from_slice(&y.qs[32 * m..]).cast::<i16>();
        let p = (qm.cast::<i16>() - i16x32::splat(off)) * yv;
        // Lanes 0..16: sub-block 2m; 16..32: sub-block 2m + 1.
        let sc = i32x32::from_array(std::array::from_fn(|i| scales[2 * m + i / 16] as i32));
        acc += p.cast::<i32>() * sc;
    }
    acc.reduce_sum()
}

/// What a [`SubBlocks16`] family subtracts from its unsigned quants `q` (every term against
/// Q8_K's true per-16 sums `bsums`, so the SIMD kernels multiply `q` itself).
#[derive(Clone, Copy)]
pub(crate) enum Offset {
    /// `q - 2^k` (Q6_K: k = 5, Q3_K: k = 2): `isum = sum_j scales_j * sum_i q_i y_i - 2^k *
    /// sum_j scales_j * bsums_j`, one integer, then [`combine`].
    Pow2(i32),
    /// A minimum per sub-block (Q2_K): value `d * scales_j * q - dmin * m_j`, so a second
    /// integer `msum = sum_j m_j * bsums_j` with its own float term, `kquant_dot::combine`.
    Mins,
}

/// A super-block family of 16 sub-blocks of 16 weights with one int8 scale each and
/// unsigned quants ([`Offset`]): what the shared SIMD kernels (`x86::chunk`, `x86::row_xn`)
/// need of it.
pub(crate) trait SubBlocks16: Family<Act = BlockQ8K> {
    /// What comes off the quants.
    const OFFSET: Offset;
    /// Whether every `scale * q` fits a byte (scales 0..=15, quants 0..=3: Q2_K), so the
    /// AVX-512 kernel multiplies them once per weight block and meets each activation row
    /// with one `vpdpbusd` per 64 weights.
    const SCALED_FIT_U8: bool = false;
    /// The super-block scale.
    fn d(&self) -> F16;
    /// The super-block scale of the minimums ([`Offset::Mins`] only).
    fn dmin(&self) -> F16 {
        F16([0; 2])
    }
    /// The 16 minimums as i16 lanes ([`Offset::Mins`] only), with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe fn mins_avx2(&self) -> simd::x86::__m256i {
        unreachable!("no minimums")
    }
    /// The quants (unsigned, at most 63; 8 vectors of 32, weight order) and the 16 scales as
    /// i8, with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe fn unpack_avx2(&self) -> ([simd::x86::__m256i; 8], simd::x86::__m128i);
    /// [`SubBlocks16::unpack_avx2`] as 4 vectors of 64, with AVX-512 BW.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW (and AVX2).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe fn unpack_avx512(&self) -> ([simd::x86::__m512i; 4], simd::x86::__m128i);
}

/// Side data of one activation row for the multi-row kernels (`x86::row_xn`): the row's
/// Q8_K blocks (the kernel reads nothing else of it).
pub struct Q8KRows(pub(crate) Vec<BlockQ8K>);

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    //! AVX2 / AVX-512 parts of the 16-scale super-block kernels (inlined into the callers'
    //! `#[target_feature]` entry points, as `simd::x86`).
    use super::{Offset, SubBlocks16};
    use crate::quant::block::Scale;
    use crate::quant::fp16::F16;
    use crate::quant::fp32::F32;
    use crate::quant::q8_k::BlockQ8K;
    use crate::quant::simd::{self, x86::*, BLOCK_LANES};
    use std::simd::prelude::*;

    /// `_mm_shuffle_epi8` pattern `m` repeats byte `2m` eight times, then byte `2m + 1`
    /// (llama.cpp's `get_scale_shuffle`).
    const PAIR: [[u8; 16]; 8] = {
        let mut t = [[0u8; 16]; 8];
        let mut i = 0;
        while i < 128 {
            t[i / 16][i % 16] = (2 * (i / 16) + (i % 16) / 8) as u8;
            i += 1;
        }
        t
    };

    /// Lane `i` of index vector `g` is `4g + i / 8`.
    const QUAD: [[i16; 32]; 4] = {
        let mut t = [[0i16; 32]; 4];
        let mut i = 0;
        while i < 128 {
            t[i / 32][i % 32] = (4 * (i / 32) + (i % 32) / 8) as i16;
            i += 1;
        }
        t
    };

    /// The i16 scales of the two 16-weight sub-blocks `2m`, `2m + 1` (of the 16 int8
    /// `scales`) that one 32-byte vector of quants covers, each over the 8 i16 lanes
    /// `maddubs` makes of its 16 products.
    #[inline(always)]
    unsafe fn scale_pair(scales: __m128i, m: usize) -> __m256i {
        let pattern = _mm_loadu_si128(PAIR[m].as_ptr().cast());
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pattern))
    }

    /// The i16 scales (`scales16`: 16 lanes in the low 256 bits) of sub-blocks `4g .. 4g + 4`,
    /// each over 8 i16 lanes, for a 64-byte vector of quants. AVX-512 BW.
    #[inline(always)]
    unsafe fn scale_quad(scales16: __m512i, g: usize) -> __m512i {
        _mm512_permutexvar_epi16(_mm512_loadu_si512(QUAD[g].as_ptr().cast()), scales16)
    }

    /// The vector width of the shared kernels: how a weight super-block is unpacked once
    /// ([`Width::prepare`]) and met with one activation super-block ([`Width::isum`]).
    pub(crate) trait Width {
        type Prepared: Copy;
        unsafe fn prepare<B: SubBlocks16>(w: &B) -> Self::Prepared;
        /// The super-block's integer `isum` (with `B`'s power-of-two offset taken off),
        /// spread over 8 i32 lanes.
        unsafe fn isum<B: SubBlocks16>(p: &Self::Prepared, y: &BlockQ8K) -> __m256i;
    }

    /// AVX2 (llama.cpp's `ggml_vec_dot_q6_K_q8_K` way): `maddubs` takes the quants (0..=63)
    /// as its unsigned operand, so each i16 pair sum is at most `2 * 63 * 128 = 16128` (no
    /// saturation); `madd` scales the pairs; an offset `2^k` ([`Offset::Pow2`]) comes off at the end
    /// as `2^k * sum_j scales[j] * bsums[j]` (the prepared row's true sums); minimums
    /// ([`Offset::Mins`]) are a second integer. Each family
    /// bounds every partial sum below 2^31.
    pub(crate) struct W256;

    /// 512-bit vectors (the quants as 4 vectors of 64, weight order) and `vpdpwssd` adding
    /// the scaled pair sums; with [`SubBlocks16::SCALED_FIT_U8`], the quants times their
    /// scales as bytes (at most 45) and `vpdpbusd` (4 products of at most 45 * 128 per lane
    /// and step). AVX-512 BW + VNNI.
    pub(crate) struct W512;

    impl Width for W256 {
        /// Quants (8 vectors of 32, weight order), the scale of each i16 pair lane, the
        /// scales as i16.
        type Prepared = ([__m256i; 8], [__m256i; 8], __m256i);

        #[inline(always)]
        unsafe fn prepare<B: SubBlocks16>(w: &B) -> Self::Prepared {
            let (q, scales) = w.unpack_avx2();
            let mut pairs = [_mm256_setzero_si256(); 8];
            for (m, p) in pairs.iter_mut().enumerate() {
                *p = scale_pair(scales, m);
            }
            (q, pairs, _mm256_cvtepi8_epi16(scales))
        }

        #[inline(always)]
        unsafe fn isum<B: SubBlocks16>(p: &Self::Prepared, y: &BlockQ8K) -> __m256i {
            let (q, pairs, scales16) = p;
            let mut s = _mm256_setzero_si256();
            for m in 0..8 {
                let yv = _mm256_loadu_si256(y.qs[32 * m..].as_ptr().cast());
                let prod = _mm256_maddubs_epi16(q[m], yv);
                s = _mm256_add_epi32(s, _mm256_madd_epi16(prod, pairs[m]));
            }
            minus_offset::<B>(s, *scales16, y)
        }
    }

    impl Width for W512 {
        type Prepared = ([__m512i; 4], [__m512i; 4], __m256i);

        #[inline(always)]
        unsafe fn prepare<B: SubBlocks16>(w: &B) -> Self::Prepared {
            let (mut q, scales) = w.unpack_avx512();
            let scales16 = _mm256_cvtepi8_epi16(scales);
            let wide = _mm512_castsi256_si512(scales16);
            let mut quads = [_mm512_setzero_si512(); 4];
            for (g, v) in quads.iter_mut().enumerate() {
                *v = scale_quad(wide, g);
                if B::SCALED_FIT_U8 {
                    // Both bytes of a word share the word's scale; each product fits its
                    // byte, so a 16-bit multiply is two byte multiplies.
                    q[g] = _mm512_mullo_epi16(q[g], *v);
                }
            }
            (q, quads, scales16)
        }

        #[inline(always)]
        unsafe fn isum<B: SubBlocks16>(p: &Self::Prepared, y: &BlockQ8K) -> __m256i {
            let (q, quads, scales16) = p;
            let mut s = _mm512_setzero_si512();
            for g in 0..4 {
                let yv = _mm512_loadu_si512(y.qs[64 * g..].as_ptr().cast());
                s = if B::SCALED_FIT_U8 {
                    _mm512_dpbusd_epi32(s, q[g], yv)
                } else {
                    _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(q[g], yv), quads[g])
                };
            }
            minus_offset::<B>(fold512(s), *scales16, y)
        }
    }

    /// `s - 2^k * sum_j scales[j] * bsums[j]` for [`Offset::Pow2`]`(k)` (`scales16`: the
    /// scales as i16), lane by lane; `s` itself for [`Offset::Mins`] (whose minimums are
    /// [`min_sums`]).
    #[inline(always)]
    unsafe fn minus_offset<B: SubBlocks16>(s: __m256i, scales16: __m256i, y: &BlockQ8K) -> __m256i {
        match B::OFFSET {
            Offset::Pow2(k) => {
                let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
                let v = _mm256_madd_epi16(scales16, bsums);
                _mm256_sub_epi32(s, _mm256_sll_epi32(v, _mm_cvtsi32_si128(k)))
            }
            Offset::Mins => s,
        }
    }

    /// `msum = sum_j m_j * bsums_j` of [`Offset::Mins`] (`mins16`: [`SubBlocks16::mins_avx2`]),
    /// spread over 8 i32 lanes (each `madd` pair at most `2 * 15 * 2048`).
    #[inline(always)]
    unsafe fn min_sums(mins16: __m256i, y: &BlockQ8K) -> __m256i {
        _mm256_madd_epi16(mins16, _mm256_loadu_si256(y.bsums.as_ptr().cast()))
    }

    /// The float half of 8 super-blocks: [`super::combine`], or with minimums
    /// `kquant_dot::combine` (`msum` unused without them).
    #[inline(always)]
    unsafe fn float_half<B: SubBlocks16>(
        dw: f32x8,
        dmin: f32x8,
        dx: f32x8,
        isum: i32x8,
        msum: i32x8,
    ) -> f32x8 {
        match B::OFFSET {
            Offset::Pow2(_) => super::combine(dw, dx, isum),
            Offset::Mins => crate::quant::kquant_dot::combine(dw, dmin, dx, isum, msum),
        }
    }

    /// The `dmin` lanes of 8 blocks (zeros without minimums: unused then).
    #[inline(always)]
    unsafe fn dmin_lanes<B: SubBlocks16>(w: [&B; BLOCK_LANES]) -> f32x8 {
        match B::OFFSET {
            Offset::Pow2(_) => f32x8::splat(0.0),
            Offset::Mins => F16::lanes_avx2(w.map(|b| b.dmin())),
        }
    }

    /// The chunk kernel of a [`SubBlocks16`] family: 8 super-blocks, one lane each, then
    /// [`super::combine`].
    #[inline(always)]
    pub(crate) unsafe fn chunk<B: SubBlocks16, W: Width>(acc: &mut f32x8, w: &[B], y: &[BlockQ8K]) {
        let w: &[B; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        // A loop, not `array::from_fn`: a closure would not inherit the target features.
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        let mut vm = [_mm256_setzero_si256(); BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            v[b] = W::isum::<B>(&W::prepare(&w[b]), &y[b]);
            if let Offset::Mins = B::OFFSET {
                vm[b] = min_sums(w[b].mins_avx2(), &y[b]);
            }
        }
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d()));
        let dmin = dmin_lanes(std::array::from_fn(|b| &w[b]));
        let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += float_half::<B>(dw, dmin, dx, hsum8_epi32(v), hsum8_epi32(vm));
    }

    /// One weight row against `N` activation rows: each weight super-block is unpacked once
    /// ([`Width::prepare`]) for all `N`; per row the integers, float steps, lanes, zero padding
    /// of the last group and reduction are [`chunk`]'s in the row driver's order, so every
    /// result has the single-row kernel's bits.
    #[inline(always)]
    pub(crate) unsafe fn row_xn<B: SubBlocks16, W: Width, const N: usize>(
        w: &[B],
        aux: [&super::Q8KRows; N],
    ) -> [f32; N] {
        let nb = w.len();
        for a in aux {
            assert_eq!(a.0.len(), nb, "vec_dot_xn lengths");
        }
        let mut acc = [f32x8::splat(0.0); N];
        for g in 0..nb.div_ceil(BLOCK_LANES) {
            let blocks = g * BLOCK_LANES..(g * BLOCK_LANES + BLOCK_LANES).min(nb);
            // Lanes past the row's end stay zero: the row driver's zero blocks give
            // isum 0, msum 0, d_w 0, dmin 0, d_x 0 there too.
            let mut v = [[_mm256_setzero_si256(); BLOCK_LANES]; N];
            let mut vm = [[_mm256_setzero_si256(); BLOCK_LANES]; N];
            let mut dw = [F16([0; 2]); BLOCK_LANES];
            let mut dmin = [F16([0; 2]); BLOCK_LANES];
            let mut dx = [[F32([0; 4]); BLOCK_LANES]; N];
            for (l, b) in blocks.enumerate() {
                simd::prefetch_block(&w[b]);
                let p = W::prepare(&w[b]);
                dw[l] = w[b].d();
                dmin[l] = w[b].dmin();
                for t in 0..N {
                    let y = &aux[t].0[b];
                    v[t][l] = W::isum::<B>(&p, y);
                    dx[t][l] = y.d;
                }
                if let Offset::Mins = B::OFFSET {
                    let m16 = w[b].mins_avx2();
                    for t in 0..N {
                        vm[t][l] = min_sums(m16, &aux[t].0[b]);
                    }
                }
            }
            let dwv = F16::lanes_avx2(dw);
            let dminv = match B::OFFSET {
                Offset::Pow2(_) => f32x8::splat(0.0),
                Offset::Mins => F16::lanes_avx2(dmin),
            };
            for t in 0..N {
                let dx = F32::lanes_portable(dx[t]);
                let (isum, msum) = (hsum8_epi32(v[t]), hsum8_epi32(vm[t]));
                acc[t] += float_half::<B>(dwv, dminv, dx, isum, msum);
            }
        }
        let mut out = [0f32; N];
        for t in 0..N {
            out[t] = simd::reduce8(acc[t].to_array());
        }
        out
    }

    /// The 16 i32 lanes of `v` folded to 8 (low half + high half). AVX-512 F.
    #[inline(always)]
    unsafe fn fold512(v: __m512i) -> __m256i {
        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::Rng;

    #[test]
    fn searches_keep_their_invariants() {
        let mut rng = Rng::new(8);
        for round in 0..2000 {
            let scale = 10f32.powi(round % 13 - 6);
            let x: Vec<f32> = (0..16).map(|_| rng.normal() * scale).collect();
            let mut l = [0i8; 16];
            let s = make_qx_quants_rmse1(32, &x, &mut l);
            assert!(l.iter().all(|&v| (0..64).contains(&v)), "{l:?}");
            assert!(s.is_finite());
            // The scale is the least-squares one for the chosen quants (weights x^2).
            let (num, den) = x.iter().zip(&l).fold((0f64, 0f64), |(a, b), (&v, &q)| {
                let (w, q) = (v as f64 * v as f64, (q as i32 - 32) as f64);
                (a + w * v as f64 * q, b + w * q * q)
            });
            assert!(((s as f64) - num / den).abs() <= 1e-4 * (num / den).abs());
            let s3 = make_q3_quants_rmse(4, &x, &mut l);
            assert!(l.iter().all(|&v| (0..8).contains(&v)), "{l:?}");
            assert!(s3.is_finite());
        }
        let mut l = [5i8; 16];
        assert_eq!(make_qx_quants_rmse1(32, &[0.0; 16], &mut l), 0.0);
        assert_eq!(l, [0; 16]);
        let mut l = [5i8; 16];
        assert_eq!(make_q3_quants_rmse(4, &[1e-16; 16], &mut l), 0.0);
        assert_eq!(l, [0; 16]);
    }

    #[test]
    fn hand_computed_q3_search() {
        // x = [4, 1, 0, ..]: max 4 -> iscale -1, l = [-4, -1, 0, ..]; the refinement cannot
        // improve an exact fit, so the scale is sumlx / suml2 = (16*4*-4 + 1*1*-1) / (16*16 + 1*1)
        // = -1 and the quants come back with +4.
        let mut x = [0f32; 16];
        x[0] = 4.0;
        x[1] = 1.0;
        let mut l = [0i8; 16];
        let s = make_q3_quants_rmse(4, &x, &mut l);
        assert_eq!(s, -1.0);
        assert_eq!(&l[..3], &[0, 3, 4]);
    }

    /// The multi-row kernels of both families, every level, called directly: each result has
    /// the scalar reference's bits, for ragged and whole groups of 8, quantized and random
    /// weight bytes, activations with -128.
    fn multi_row_equals_single_row<B: SubBlocks16>(set_d: impl Fn(&mut B, &mut Rng)) {
        use crate::quant::block::{view, view_mut};
        use crate::quant::tests_util::{bytes_of_units, check_rows_levels, TestActivation};
        let bb = std::mem::size_of::<B>();
        let mut rng = Rng::new(77);
        for nb in (0..=12).chain([17, 33]) {
            for round in 0..4 {
                let rows = 3;
                let n = nb * 256;
                let mut w = vec![0u8; rows * nb * bb];
                if round % 2 == 0 {
                    let wf: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.02).collect();
                    crate::quant::dispatch::quantize::<B>(&wf, view_mut(&mut w));
                } else {
                    w.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                    view_mut::<B>(&mut w)
                        .iter_mut()
                        .for_each(|b| set_d(b, &mut rng));
                }
                let ys: Vec<Vec<u8>> = (0..8)
                    .map(|t| {
                        let xf: Vec<f32> =
                            (0..n).map(|_| rng.normal() * (t as f32 + 1.0)).collect();
                        let mut u = BlockQ8K::quantize_units(&xf);
                        if round == 3 {
                            for b in &mut u {
                                b.qs[(rng.next_u64() % 256) as usize] = -128;
                                b.fix_random(&mut rng);
                            }
                        }
                        bytes_of_units(&u)
                    })
                    .collect();
                let wv = view::<B>(&w);
                let want: Vec<[f32; 8]> = (0..rows)
                    .map(|r| {
                        std::array::from_fn(|t| {
                            B::dot_scalar(&wv[r * nb..(r + 1) * nb], view::<BlockQ8K>(&ys[t]))
                        })
                    })
                    .collect();
                check_rows_levels::<B, 8>(&w, &ys, 0, &want);
                check_rows_levels::<B, 4>(&w, &ys, 4, &want);
                check_rows_levels::<B, 1>(&w, &ys, 6, &want);
            }
        }
        crate::quant::tests_util::note_skipped_levels();
    }

    #[test]
    fn multi_row_kernels_equal_single_row() {
        use crate::quant::{
            q2_k::BlockQ2K, q3_k::BlockQ3K, q6_k::BlockQ6K, tests_util::finite_half,
        };
        multi_row_equals_single_row::<BlockQ6K>(|b, rng| b.d = finite_half(rng));
        multi_row_equals_single_row::<BlockQ3K>(|b, rng| b.d = finite_half(rng));
        multi_row_equals_single_row::<BlockQ2K>(|b, rng| {
            (b.d, b.dmin) = (finite_half(rng), finite_half(rng))
        });
    }

    /// Single-row dot speed of each level on a 4096 x 4096 matrix against Q4_0's (weight bytes
    /// streamed per second, best of 5 passes, one thread). A report, not a check:
    /// `cargo test --release bench_kquant_dots -- --ignored --nocapture`.
    #[test]
    #[ignore]
    #[allow(clippy::type_complexity)]
    fn bench_kquant_dots() {
        use crate::quant::tests_util::TestActivation;
        use crate::quant::{
            dispatch, q3_k::BlockQ3K, q4_0::BlockQ4_0, q6_k::BlockQ6K, simd, Family,
        };
        fn run<B: Family>(name: &str)
        where
            B::Act: TestActivation,
        {
            let (rows, n) = (4096, 4096);
            let mut rng = Rng::new(1);
            let wf: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.02).collect();
            let mut w = vec![crate::quant::block::zeroed::<B>(); rows * n / B::QK];
            dispatch::quantize(&wf, &mut w);
            let xf: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let y = B::Act::quantize_units(&xf);
            let per_row = n / B::QK;
            let bytes = std::mem::size_of_val(&w[..]) as f64;
            let time = |f: &dyn Fn(&[B], &[B::Act]) -> f32| {
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    let mut s = 0f32;
                    for r in w.chunks_exact(per_row) {
                        s += f(r, &y);
                    }
                    std::hint::black_box(s);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                bytes / best / 1e9
            };
            let portable = time(&|r, y| dispatch::dot_portable(r, y));
            let mut line = format!("{name}: portable {portable:.1} GB/s");
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            {
                if simd::has_avx2() {
                    // SAFETY: checked just above.
                    let v = time(&|r, y| unsafe { dispatch::dot_avx2(r, y) });
                    line += &format!(", avx2 {v:.1} GB/s");
                }
                if simd::has_avx512() {
                    // SAFETY: checked just above.
                    let v = time(&|r, y| unsafe { dispatch::dot_avx512(r, y) });
                    line += &format!(", avx512 {v:.1} GB/s");
                }
            }
            eprintln!("{line}");
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            if B::MULTI_ROW && simd::has_avx512() {
                // 8 activation rows: the multi-row kernel against 8 single-row passes, in
                // weight bytes per second per activation row.
                let aux = B::row_aux(&y).unwrap();
                let mut out = vec![[0f32; 8]; rows];
                let mut best = [f64::MAX; 2];
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    // SAFETY: checked just above.
                    unsafe { dispatch::rows_avx512::<B, 8>(&w, per_row, [&aux; 8], &mut out) };
                    std::hint::black_box(&out);
                    best[0] = best[0].min(t.elapsed().as_secs_f64());
                    let t = std::time::Instant::now();
                    for r in w.chunks_exact(per_row) {
                        for _ in 0..8 {
                            // SAFETY: as above.
                            std::hint::black_box(unsafe { dispatch::dot_avx512(r, &y) });
                        }
                    }
                    best[1] = best[1].min(t.elapsed().as_secs_f64());
                }
                eprintln!(
                    "{name} x8 rows (avx512): multi-row {:.1} GB/s, single-row {:.1} GB/s",
                    8.0 * bytes / best[0] / 1e9,
                    8.0 * bytes / best[1] / 1e9
                );
            }
        }
        run::<BlockQ4_0>("Q4_0");
        run::<BlockQ6K>("Q6_K");
        run::<BlockQ3K>("Q3_K");
    }
}
