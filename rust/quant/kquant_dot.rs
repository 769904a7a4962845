//! What the dot kernels of the K-quants with sub-block minimums (Q2_K, Q4_K, Q5_K) share:
//! the one float combination per super-block, and the minimum term from Q8_K's `bsums`
//! (llama.cpp's `summs`).
//!
//! A super-block's value is `d * sc_s * q - dmin * m_s` per sub-block `s`, so its dot with a
//! Q8_K block (`d_x * y`) is `(d * d_x) * isum - (dmin * d_x) * msum` with the exact integers
//! `isum = sum_s sc_s * sum_{i in s} q_i y_i` and `msum = sum_s m_s * sum_{i in s} y_i`.

use super::block::{bytes_of, i8_bytes, Pod, Scale};
use super::fp16::F16;
use super::fp32::F32;
use super::kquant_scales::{unpack_scales_mins, K_SCALE_SIZE};
use super::q8_k::{BlockQ8K, QK_K};
use super::simd::{self, BLOCK_LANES};
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

/// A super-block of 8 sub-blocks of 32 with 6-bit packed scales and minimums (Q4_K, Q5_K):
/// everything its kernels need besides how its levels are stored. The dequantizer and every
/// dot kernel level are written once, below, over this.
pub(crate) trait K32: Pod {
    /// Largest level (15, 31): the bound of the integer sums.
    const NMAX: i32;
    fn d(&self) -> F16;
    fn dmin(&self) -> F16;
    fn scales(&self) -> &[u8; K_SCALE_SIZE];
    /// The level of weight `i` (0..256).
    fn level(&self, i: usize) -> u8;
    /// Levels of weights `64 c .. 64 c + 32` and `64 c + 32 .. 64 c + 64`.
    fn levels_portable(&self, c: usize) -> (u8x32, u8x32);
    /// [`K32::levels_portable`] as two AVX2 vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe fn levels_avx2(&self, c: usize) -> (x86::__m256i, x86::__m256i);
    /// The same 64 levels in one 512-bit vector (low half first).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe fn levels_avx512(&self, c: usize) -> x86::__m512i;
}

/// gguf's dequantizer of Q4_K and Q5_K: `(d * sc) * q - (dmin * m)` in f32.
#[inline(always)]
pub(crate) fn dequantize_k32<B: K32>(b: &B, y: &mut [f32]) {
    let (sc, m) = unpack_scales_mins(b.scales());
    let (d, dmin) = (b.d().get(), b.dmin().get());
    for (i, o) in y[..QK_K].iter_mut().enumerate() {
        let s = i / 32;
        *o = (d * sc[s] as f32) * b.level(i) as f32 - dmin * m[s] as f32;
    }
}

/// The scalar reference: per super-block the exact `isum` and `msum`, then
/// `acc[b % 8] += combine1(..)`, fixed reduction. Bound: |q y| <= 31 * 128, 32 per sub-block,
/// sc <= 63, 8 sub-blocks: |isum| <= 64M < 2^31 (Q4_K: 31M).
pub(crate) fn dot_scalar_k32<B: K32>(w: &[B], y: &[BlockQ8K]) -> f32 {
    const { assert!(B::NMAX <= 31) };
    let mut acc = [0f32; BLOCK_LANES];
    for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
        let (sc, m) = unpack_scales_mins(wb.scales());
        let mut isum = 0i32;
        for s in 0..8 {
            let mut si = 0i32;
            for i in 32 * s..32 * s + 32 {
                si += wb.level(i) as i32 * yb.qs[i] as i32;
            }
            isum += sc[s] as i32 * si;
        }
        let msum = min_sum_32(&m, yb);
        acc[b % BLOCK_LANES] += combine1(wb.d().get(), wb.dmin().get(), yb.d.get(), isum, msum);
    }
    simd::reduce8(acc)
}

/// The portable chunk kernel (8 super-blocks, one lane each).
#[inline(always)]
pub(crate) fn chunk_portable_k32<B: K32>(acc: &mut f32x8, w: &[B], y: &[BlockQ8K]) {
    let w: &[B; BLOCK_LANES] = w.try_into().unwrap();
    let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
    let mut isum = [0i32; BLOCK_LANES];
    let mut msum = [0i32; BLOCK_LANES];
    for b in 0..BLOCK_LANES {
        let (sc, m) = unpack_scales_mins(w[b].scales());
        for c in 0..4 {
            let (lo, hi) = w[b].levels_portable(c);
            let y0 = i8x32::from_slice(&y[b].qs[64 * c..]).cast::<i16>();
            let y1 = i8x32::from_slice(&y[b].qs[64 * c + 32..]).cast::<i16>();
            // |q * y| <= 31 * 128 fits i16.
            let lo = (lo.cast::<i16>() * y0).cast::<i32>().reduce_sum();
            let hi = (hi.cast::<i16>() * y1).cast::<i32>().reduce_sum();
            isum[b] += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
        }
        msum[b] = min_sum_32(&m, &y[b]);
    }
    let d = F16::lanes_portable(std::array::from_fn(|b| w[b].d()));
    let dmin = F16::lanes_portable(std::array::from_fn(|b| w[b].dmin()));
    let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
    *acc += combine(
        d,
        dmin,
        dx,
        i32x8::from_array(isum),
        i32x8::from_array(msum),
    );
}

/// llama.cpp's AVX2 kernel per super-block: `maddubs` levels x activations (i16 pair sums
/// <= 2 * 31 * 128, exact), `madd` with the broadcast sub-block scale; the 8 blocks' integers
/// are summed across lanes at once.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn chunk_avx2_k32<B: K32>(acc: &mut f32x8, w: &[B], y: &[BlockQ8K]) {
    use simd::x86::*;
    let w: &[B; BLOCK_LANES] = w.try_into().unwrap();
    let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
    let mut vi = [_mm256_setzero_si256(); BLOCK_LANES];
    let mut vm = [_mm256_setzero_si256(); BLOCK_LANES];
    for b in 0..BLOCK_LANES {
        let (sc, m) = unpack_scales_mins(w[b].scales());
        let scales =
            _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast())));
        let qy = i8_bytes(&y[b].qs);
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let sl = _mm256_shuffle_epi8(scales, x86::word_broadcast(2 * c));
            let sh = _mm256_shuffle_epi8(scales, x86::word_broadcast(2 * c + 1));
            let (ql, qh) = w[b].levels_avx2(c);
            let pl = _mm256_maddubs_epi16(ql, load32(simd::arr(qy, 64 * c)));
            let ph = _mm256_maddubs_epi16(qh, load32(simd::arr(qy, 64 * c + 32)));
            sumi = _mm256_add_epi32(
                sumi,
                _mm256_add_epi32(_mm256_madd_epi16(sl, pl), _mm256_madd_epi16(sh, ph)),
            );
        }
        vi[b] = sumi;
        vm[b] = x86::min_sum_32(&m, &y[b]);
    }
    let d = F16::lanes_avx2(std::array::from_fn(|b| w[b].d()));
    let dmin = F16::lanes_avx2(std::array::from_fn(|b| w[b].dmin()));
    let dx = F32::lanes_portable(std::array::from_fn(|b| y[b].d));
    *acc += combine(d, dmin, dx, hsum8_epi32(vi), hsum8_epi32(vm));
}

/// 64 weights per 512-bit step: both sub-blocks' levels side by side against 64 contiguous
/// activations, `maddubs` then `vpdpwssd` with the two sub-block scales (exact: pair sums
/// <= 2 * 31 * 128, times <= 63, summed in i32 within the bound of [`dot_scalar_k32`]).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn chunk_avx512_k32<B: K32>(acc: &mut f32x8, w: &[B], y: &[BlockQ8K]) {
    use simd::x86::*;
    let w: &[B; BLOCK_LANES] = w.try_into().unwrap();
    let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
    let mut vi = [_mm256_setzero_si256(); BLOCK_LANES];
    let mut vm = [_mm256_setzero_si256(); BLOCK_LANES];
    for b in 0..BLOCK_LANES {
        let (sc, m) = unpack_scales_mins(w[b].scales());
        let scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast())));
        let qy = i8_bytes(&y[b].qs);
        let mut sumi = _mm512_setzero_si512();
        for c in 0..4 {
            let yv = _mm512_loadu_si512(qy[64 * c..].as_ptr().cast());
            let p = _mm512_maddubs_epi16(w[b].levels_avx512(c), yv);
            let s = _mm512_shuffle_epi8(scales, x86::word_broadcast2(2 * c, 2 * c + 1));
            sumi = _mm512_dpwssd_epi32(sumi, p, s);
        }
        vi[b] = x86::fold512(sumi);
        vm[b] = x86::min_sum_32(&m, &y[b]);
    }
    let stride = std::mem::size_of::<B>();
    // `d` and `dmin` open the block.
    let wb = bytes_of(w);
    let d = F16::lanes_strided_avx512(wb, stride);
    let dmin = F16::lanes_strided_avx512(&wb[2..], stride);
    let dx = F32::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8K>());
    *acc += combine(d, dmin, dx, hsum8_epi32(vi), hsum8_epi32(vm));
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    //! AVX2 pieces, inlined into the families' `#[target_feature]` kernels.
    use super::super::q8_k::BlockQ8K;
    pub(crate) use super::super::simd::x86::*;

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
