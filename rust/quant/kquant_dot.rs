//! What the dot kernels of the K-quants with sub-block minimums (Q2_K, Q4_K, Q5_K) share:
//! the one float combination per super-block, and the minimum term from Q8_K's `bsums`
//! (llama.cpp's `summs`).
//!
//! A super-block's value is `d * sc_s * q - dmin * m_s` per sub-block `s`, so its dot with a
//! Q8_K block (`d_x * y`) is `(d * d_x) * isum - (dmin * d_x) * msum` with the exact integers
//! `isum = sum_s sc_s * sum_{i in s} q_i y_i` and `msum = sum_s m_s * sum_{i in s} y_i`.

use super::block::{bytes_of, i8_bytes, Activation, Pod, Scale};
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

/// The AMX tiles' multipliers of a K32 super-block (`amx_k::AmxK`): `sc_s * q_i`, at most
/// 63 * 31, so that `isum = sum_i w_i y_i` is [`dot_scalar_k32`]'s.
#[inline(always)]
pub(crate) fn k32_multipliers<B: K32>(b: &B) -> [i16x32; 8] {
    let (sc, _) = unpack_scales_mins(b.scales());
    let mut w = [i16x32::splat(0); 8];
    for c in 0..4 {
        let (lo, hi) = b.levels_portable(c);
        w[2 * c] = lo.cast::<i16>() * i16x32::splat(sc[2 * c] as i16);
        w[2 * c + 1] = hi.cast::<i16>() * i16x32::splat(sc[2 * c + 1] as i16);
    }
    w
}

/// The AMX tiles' `dmin` and minimums of a K32 super-block.
#[inline(always)]
pub(crate) fn k32_mins<B: K32>(b: &B) -> (f32, [u8; 8]) {
    (b.dmin().get(), unpack_scales_mins(b.scales()).1)
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
        for (s, &scale) in sc.iter().enumerate() {
            let mut si = 0i32;
            for i in 32 * s..32 * s + 32 {
                si += wb.level(i) as i32 * yb.qs[i] as i32;
            }
            isum += scale as i32 * si;
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

/// Side data of one Q8_K activation row for the K32 multi-row kernel: the row's blocks,
/// padded with zero blocks to whole groups of 8 (so a group is one fixed-size view), and for
/// the repacked Q4_K kernel each block's sub-block sums.
pub struct K8Aux {
    y: Vec<BlockQ8K>,
    /// Per block (padding included): the 8 sums of 32 values (`bsum_2s + bsum_2s+1`, |sum| <=
    /// 4096) split as `128 h + l`, bytes `[l_0..l_4], [l_4..l_8], [h_0..h_4], [h_4..h_8]` as four
    /// dwords: `l` in 0..128 and `h` in -32..32 are signed bytes that `vpdpbusd` multiplies
    /// with the 6-bit minimums, four sub-blocks at once, exactly.
    sub_sums: Vec<[i32; 4]>,
}

impl K8Aux {
    /// The first `n` blocks: the row of `n` blocks this was made of.
    pub(crate) fn row(&self, n: usize) -> &[BlockQ8K] {
        &self.y[..n]
    }

    /// Block `b` (padded to whole groups of 8).
    #[inline(always)]
    pub(crate) fn block(&self, b: usize) -> &BlockQ8K {
        &self.y[b]
    }

    /// Block `b`'s split sub-block sums (see the field).
    #[inline(always)]
    pub(crate) fn sub_sums(&self, b: usize) -> &[i32; 4] {
        &self.sub_sums[b]
    }

    /// Blocks held, padding included.
    pub(crate) fn padded_len(&self) -> usize {
        self.y.len()
    }
}

/// [`K8Aux`]'s split sums of one block.
fn split_sub_sums(y: &BlockQ8K) -> [i32; 4] {
    let (mut l, mut h) = ([0u8; 8], [0u8; 8]);
    for s in 0..8 {
        let sum = y.bsum(2 * s) as i32 + y.bsum(2 * s + 1) as i32;
        l[s] = (sum & 127) as u8;
        h[s] = (sum >> 7) as i8 as u8;
    }
    let word = |b: &[u8]| i32::from_le_bytes(b.try_into().unwrap());
    [word(&l[..4]), word(&l[4..]), word(&h[..4]), word(&h[4..])]
}

pub(crate) fn k8_aux(y: &[BlockQ8K]) -> K8Aux {
    let mut y = y.to_vec();
    y.resize(
        y.len().div_ceil(BLOCK_LANES) * BLOCK_LANES,
        <BlockQ8K as Activation>::ZERO,
    );
    let sub_sums = y.iter().map(split_sub_sums).collect();
    K8Aux { y, sub_sums }
}

pub(crate) fn k8_aux_fits(aux: &K8Aux, y: &[BlockQ8K]) -> bool {
    aux.y.len() == y.len().div_ceil(BLOCK_LANES) * BLOCK_LANES
}

/// A super-block family whose multi-row kernel meets [`K8Aux`] rows one group of 8 blocks at
/// a time, [`row_xn_k8`] driving it: the K32 families (Q4_K, Q5_K) and IQ4_XS.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) trait GroupK8: Pod {
    /// Adds one group's float terms for each of the `N` activation rows into `acc` (lane =
    /// block), with the single-row chunk kernel's integers and float steps, prefetching each
    /// block as it reads it (`simd::prefetch_block`). `WIDE`: the AVX-512 form, else AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (and AVX-512 F/BW/VL/VNNI when `WIDE`).
    unsafe fn group_xn<const N: usize, const WIDE: bool>(
        w: &[Self; BLOCK_LANES],
        ys: [&[BlockQ8K; BLOCK_LANES]; N],
        acc: &mut [f32x8; N],
    );
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl<B: K32> GroupK8 for B {
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const WIDE: bool>(
        w: &[Self; BLOCK_LANES],
        ys: [&[BlockQ8K; BLOCK_LANES]; N],
        acc: &mut [f32x8; N],
    ) {
        group_xn_k32::<B, N, WIDE>(w, ys, acc)
    }
}

/// One weight row against `N` activation rows: per group of 8 super-blocks each weight
/// block is unpacked once and met by every activation row ([`GroupK8::group_xn`]). Per row
/// the integers are the single-row kernel's (exact), the float steps its `combine` on the
/// same lanes, the last group zero-padded as the row driver pads it: the single-row bits.
/// `WIDE`: the AVX-512 form (the caller enables AVX-512 BW/VNNI), else AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (and AVX-512 F/BW/VL/VNNI when `WIDE`).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn row_xn_k8<B: GroupK8, const N: usize, const WIDE: bool>(
    w: &[B],
    aux: [&K8Aux; N],
) -> [f32; N] {
    let nb = w.len();
    let groups = nb.div_ceil(BLOCK_LANES);
    for a in aux {
        assert_eq!(a.y.len(), groups * BLOCK_LANES, "row_xn: activation length");
    }
    let mut acc = [f32x8::splat(0.0); N];
    for g in 0..groups {
        let ys: [&[BlockQ8K; BLOCK_LANES]; N] = std::array::from_fn(|n| {
            aux[n].y[g * BLOCK_LANES..(g + 1) * BLOCK_LANES]
                .try_into()
                .unwrap()
        });
        if (g + 1) * BLOCK_LANES <= nb {
            let wg = &w[g * BLOCK_LANES..(g + 1) * BLOCK_LANES];
            B::group_xn::<N, WIDE>(wg.try_into().unwrap(), ys, &mut acc);
        } else {
            let mut wp = [super::block::zeroed::<B>(); BLOCK_LANES];
            wp[..nb - g * BLOCK_LANES].copy_from_slice(&w[g * BLOCK_LANES..]);
            B::group_xn::<N, WIDE>(&wp, ys, &mut acc);
        }
    }
    acc.map(|a| simd::reduce8(a.to_array()))
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn group_xn_k32<B: K32, const N: usize, const WIDE: bool>(
    w: &[B; BLOCK_LANES],
    ys: [&[BlockQ8K; BLOCK_LANES]; N],
    acc: &mut [f32x8; N],
) {
    use simd::x86::*;
    let mut vi = [[_mm256_setzero_si256(); BLOCK_LANES]; N];
    let mut vm = [[_mm256_setzero_si256(); BLOCK_LANES]; N];
    // Per weight block: 64 levels and their two scale vectors at a time, met by all `N`
    // rows' running sums (N accumulators + 4 vectors stay in registers). Plain loops, no
    // closures: a closure is not built with the caller's target features unless inlined.
    for b in 0..BLOCK_LANES {
        simd::prefetch_block(&w[b]);
        let (sc, m) = unpack_scales_mins(w[b].scales());
        let sc16 = x86::bytes_to_words(&sc);
        let m16 = x86::bytes_to_words(&m);
        if WIDE {
            let scales = _mm512_broadcast_i32x4(sc16);
            let mut sumi = [_mm512_setzero_si512(); N];
            for c in 0..4 {
                let lv = w[b].levels_avx512(c);
                let sv = _mm512_shuffle_epi8(scales, x86::word_broadcast2(2 * c, 2 * c + 1));
                for n in 0..N {
                    let qy = i8_bytes(&ys[n][b].qs);
                    let yv = _mm512_loadu_si512(qy[64 * c..].as_ptr().cast());
                    sumi[n] = _mm512_dpwssd_epi32(sumi[n], _mm512_maddubs_epi16(lv, yv), sv);
                }
            }
            for n in 0..N {
                vi[n][b] = x86::fold512(sumi[n]);
            }
        } else {
            let scales = _mm256_broadcastsi128_si256(sc16);
            let mut sumi = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let (ql, qh) = w[b].levels_avx2(c);
                // One sub-block (32 levels, one scale vector) at a time: 16 registers.
                for (h, q) in [ql, qh].into_iter().enumerate() {
                    let s = _mm256_shuffle_epi8(scales, x86::word_broadcast(2 * c + h));
                    for n in 0..N {
                        let qy = i8_bytes(&ys[n][b].qs);
                        let p = _mm256_maddubs_epi16(q, load32(simd::arr(qy, 64 * c + 32 * h)));
                        sumi[n] = _mm256_add_epi32(sumi[n], _mm256_madd_epi16(s, p));
                    }
                }
            }
            for n in 0..N {
                vi[n][b] = sumi[n];
            }
        }
        for n in 0..N {
            vm[n][b] = x86::min_sum_words(m16, &ys[n][b]);
        }
    }
    let d = F16::lanes_avx2(std::array::from_fn(|b| w[b].d()));
    let dmin = F16::lanes_avx2(std::array::from_fn(|b| w[b].dmin()));
    for n in 0..N {
        let dx = F32::lanes_portable(std::array::from_fn(|b| ys[n][b].d));
        acc[n] += combine(d, dmin, dx, hsum8_epi32(vi[n]), hsum8_epi32(vm[n]));
    }
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
        min_sum_words(bytes_to_words(mins), y)
    }

    /// 8 bytes zero-extended to 8 i16 lanes.
    #[inline(always)]
    pub(crate) unsafe fn bytes_to_words(b: &[u8; 8]) -> __m128i {
        _mm_cvtepu8_epi16(_mm_loadl_epi64(b.as_ptr().cast()))
    }

    /// [`min_sum_32`] with the minimums already as words.
    #[inline(always)]
    pub(crate) unsafe fn min_sum_words(m16: __m128i, y: &BlockQ8K) -> __m256i {
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

/// Single-row dot speed of the K-quant kernels next to Q4_0's, per level (a report, not a
/// check: `cargo test --release bench_k_quant_dots -- --ignored --nocapture`).
#[cfg(all(test, any(target_arch = "x86", target_arch = "x86_64")))]
mod bench {
    use super::super::block::{view_mut, Family};
    use super::super::dispatch;
    use super::super::tests_util::{bytes_of_units, Rng, TestActivation};
    use super::super::{q2_k, q4_0, q4_k, q5_k};
    use std::time::Instant;

    /// GB/s of weight bytes through `dot_avx2` and `dot_avx512`, 4096 x 4096 weights, best of
    /// 5 passes over all rows (64 distinct quantized rows, tiled: the same bytes per row).
    fn run<B: Family>(name: &str)
    where
        B::Act: TestActivation,
    {
        let (rows, cols) = (4096, 4096);
        let nb = cols / B::QK;
        let mut rng = Rng::new(1);
        let distinct = 64;
        let wf: Vec<f32> = (0..distinct * cols).map(|_| rng.normal() * 0.02).collect();
        let mut wq = vec![0u8; distinct * nb * std::mem::size_of::<B>()];
        dispatch::quantize::<B>(&wf, view_mut(&mut wq));
        let w: Vec<u8> = wq
            .iter()
            .copied()
            .cycle()
            .take(wq.len() * rows / distinct)
            .collect();
        let w: &[B] = super::super::view(&w);
        let xf: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        let x = bytes_of_units(&B::Act::quantize_units(&xf));
        let x: &[B::Act] = super::super::view(&x);
        let bytes = std::mem::size_of_val(w) as f64;
        let wide = super::super::simd::has_avx512();
        // 8 activation rows for the multi-row kernels.
        let units: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                let xf: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                bytes_of_units(&B::Act::quantize_units(&xf))
            })
            .collect();
        let aux: Vec<B::Aux> = if B::MULTI_ROW {
            units
                .iter()
                .map(|u| B::row_aux(super::super::view(u)).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        let mut out = vec![[0f32; 8]; rows];
        // The levels take turns within each pass (the machine is shared: interleaving gives
        // each the same conditions); best of 20 passes.
        let mut best = [f64::MAX; 4];
        let mut sink = 0f32;
        for _ in 0..20 {
            for (k, single) in [
                dispatch::dot_avx2::<B> as unsafe fn(&[B], &[B::Act]) -> f32,
                dispatch::dot_avx512::<B>,
            ]
            .into_iter()
            .enumerate()
            {
                if k == 1 && !wide {
                    continue;
                }
                let t = Instant::now();
                for r in 0..rows {
                    // SAFETY: the levels run only where the CPU has them (checked above).
                    sink += unsafe { single(&w[r * nb..(r + 1) * nb], x) };
                }
                best[k] = best[k].min(t.elapsed().as_secs_f64());
            }
            if B::MULTI_ROW {
                let aux: [&B::Aux; 8] = std::array::from_fn(|k| &aux[k]);
                for (k, multi) in [
                    dispatch::rows_avx2::<B, 8>
                        as unsafe fn(&[B], usize, [&B::Aux; 8], &mut [[f32; 8]]),
                    dispatch::rows_avx512::<B, 8>,
                ]
                .into_iter()
                .enumerate()
                {
                    if k == 1 && !wide {
                        continue;
                    }
                    let t = Instant::now();
                    // SAFETY: as above.
                    unsafe { multi(w, nb, aux, &mut out) };
                    // Per activation row, comparable with the single-row figure.
                    best[2 + k] = best[2 + k].min(t.elapsed().as_secs_f64() / 8.0);
                }
            }
        }
        std::hint::black_box((sink, &out));
        let mut line = format!("{name}:");
        for (k, level) in ["avx2", "avx512", "avx2 x8", "avx512 x8"]
            .iter()
            .enumerate()
        {
            if best[k] < f64::MAX {
                line += &format!(" {level} {:.1} GB/s", bytes / best[k] / 1e9);
            }
        }
        eprintln!("{line}");
    }

    #[test]
    #[ignore]
    fn bench_k_quant_dots() {
        if !super::super::simd::has_avx2() {
            return eprintln!("no AVX2 here");
        }
        run::<q4_0::BlockQ4_0>("Q4_0");
        run::<q4_k::BlockQ4K>("Q4_K");
        run::<q5_k::BlockQ5K>("Q5_K");
        run::<q2_k::BlockQ2K>("Q2_K");
    }
}

/// Checks a Q8_K family's multi-row kernels: `vec_dot_rows` with 8, 4 and 1 activation rows
/// and each level called directly give the scalar reference's bits, over ragged groups,
/// quantized and raw random blocks (finite scales), activations with -128.
#[cfg(test)]
pub(crate) fn check_multi_row_q8k<B: super::Family<Act = BlockQ8K>>(
    ty: super::GgmlType,
    finite: impl Fn(&mut B, &mut super::tests_util::Rng),
) {
    use super::block::view_mut;
    use super::tests_util::{bytes_of_units, check_multi_row, check_rows_levels, Rng};
    use super::{prepare_activation, vec_dot_rows, vec_dot_scalar, PreparedRow, RowAux};
    let bb = std::mem::size_of::<B>();
    let mut rng = Rng::new(77);
    for nb in (0..=17).chain([24, 31, 33]) {
        for round in 0..3 {
            let (rows, n) = (3, nb * QK_K);
            let mut w = vec![0u8; rows * nb * bb];
            if round == 0 {
                let wf: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.02).collect();
                super::dispatch::quantize::<B>(&wf, view_mut(&mut w));
            } else {
                w.iter_mut().for_each(|v| *v = rng.next_u64() as u8);
                for b in view_mut::<B>(&mut w) {
                    finite(b, &mut rng);
                }
            }
            let ps: Vec<PreparedRow> = (0..8)
                .map(|t| {
                    let xf: Vec<f32> = (0..n).map(|_| rng.normal() * (t as f32 + 1.0)).collect();
                    let p = prepare_activation(ty, &xf);
                    match p {
                        PreparedRow::Q8K(mut q) if round == 2 && nb > 0 => {
                            // A -128 activation (bsums kept true).
                            let y = &mut view_mut::<BlockQ8K>(&mut q)[0];
                            let old = y.qs[5] as i16;
                            y.qs[5] = -128;
                            y.bsums[0] = (y.bsum(0) - old - 128).to_le_bytes();
                            PreparedRow::Q8K(q)
                        }
                        p => p,
                    }
                })
                .collect();
            let ys: Vec<Vec<u8>> = ps
                .iter()
                .map(|p| bytes_of_units(<BlockQ8K as Activation>::view(p).unwrap()))
                .collect();
            let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(ty, p)).collect();
            assert!(ps.iter().zip(&aux).all(|(p, a)| a.fits(ty, p)));
            let rb = nb * bb;
            let want: Vec<[f32; 8]> = (0..rows)
                .map(|r| {
                    std::array::from_fn(|t| vec_dot_scalar(ty, &w[r * rb..(r + 1) * rb], &ps[t]))
                })
                .collect();
            fn via_dispatch<const N: usize>(
                ty: super::GgmlType,
                w: &[u8],
                ps: &[PreparedRow],
                aux: &[RowAux],
                t0: usize,
                want: &[[f32; 8]],
            ) {
                check_multi_row::<N>(want, t0, |out| {
                    vec_dot_rows::<N>(
                        ty,
                        w,
                        std::array::from_fn(|k| &ps[t0 + k]),
                        std::array::from_fn(|k| &aux[t0 + k]),
                        out,
                    )
                });
            }
            via_dispatch::<8>(ty, &w, &ps, &aux, 0, &want);
            via_dispatch::<4>(ty, &w, &ps, &aux, 4, &want);
            via_dispatch::<1>(ty, &w, &ps, &aux, 6, &want);
            check_rows_levels::<B, 8>(&w, &ys, 0, &want);
            check_rows_levels::<B, 4>(&w, &ys, 4, &want);
            check_rows_levels::<B, 1>(&w, &ys, 7, &want);
        }
    }
}
