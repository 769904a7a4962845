//! Q8_0: 32 values per 34-byte block: f16 scale `d`, then 32 signed bytes. Value = `q * d`.
//! Also the format activations are prepared in for every quantized weight type.

use super::fp16::{f32_to_f16_bits, read_f16};
use super::simd::{self, block_dot, BlockKernel, BLOCK_LANES, Q8_BYTES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;
pub(crate) const BLOCK_BYTES: usize = Q8_BYTES;

/// gguf's `Q8_0.quantize_blocks`, step by step in f32.
#[inline(always)]
fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    // numpy `abs(x).max()`: NaN propagates (we keep the first one).
    let amax = simd::block_abs_max(x)
        .unwrap_or_else(|| x.iter().map(|v| v.abs()).find(|a| a.is_nan()).unwrap());
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    for k in 0..4 {
        let v = f32x8::from_slice(&x[8 * k..]) * f32x8::splat(id);
        // `astype(np.int8)` keeps the same low byte as the uint8 cast.
        let q = simd::np_trunc_u8_x8(simd::np_roundf_x8(v));
        out[2 + 8 * k..2 + 8 * k + 8].copy_from_slice(q.as_array());
    }
}

#[inline(always)]
fn quantize_row_impl(src: &[f32], dst: &mut [u8]) {
    let (blocks, rest) = src.as_chunks::<QK>();
    debug_assert!(rest.is_empty() && dst.len() == blocks.len() * BLOCK_BYTES);
    for (x, out) in blocks.iter().zip(dst.as_chunks_mut::<BLOCK_BYTES>().0) {
        quantize_block(x, out);
    }
}

pub(crate) fn quantize_row_portable(src: &[f32], dst: &mut [u8]) {
    quantize_row_impl(src, dst)
}

/// The same code built for AVX2 (this prepares every activation row, so it is on the hot
/// path); lane-wise IEEE operations, so the bytes are the same as the portable build's.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_row_avx2(src: &[f32], dst: &mut [u8]) {
    quantize_row_impl(src, dst)
}

pub(crate) fn quantize_row(src: &[f32], dst: &mut [u8]) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2() {
        // SAFETY: checked just above.
        return unsafe { quantize_row_avx2(src, dst) };
    }
    quantize_row_portable(src, dst)
}

pub(crate) fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let (blocks, rest) = src.as_chunks::<BLOCK_BYTES>();
    debug_assert!(rest.is_empty() && dst.len() == blocks.len() * QK);
    for (b, y) in blocks.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let d = read_f16(b);
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// Reference: exact integer sum per block, `acc[b % 8] += (d_w * d_x) * isum`, fixed reduction.
pub(crate) fn vec_dot_scalar(w: &[u8], y: &[u8]) -> f32 {
    debug_assert_eq!(w.len(), y.len());
    let mut acc = [0f32; BLOCK_LANES];
    for (b, (wb, yb)) in w
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact(Q8_BYTES))
        .enumerate()
    {
        let mut isum = 0i32;
        for j in 2..BLOCK_BYTES {
            isum += wb[j] as i8 as i32 * yb[j] as i8 as i32;
        }
        acc[b % BLOCK_LANES] += (read_f16(wb) * read_f16(yb)) * isum as f32;
    }
    simd::reduce8(acc)
}

#[inline(always)]
fn combine(dw: f32x8, dx: f32x8, isum: i32x8) -> f32x8 {
    (dw * dx) * isum.cast::<f32>()
}

struct Portable;
impl BlockKernel for Portable {
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    #[inline(always)]
    unsafe fn group(w: &[u8], y: &[u8]) -> f32x8 {
        // Fixed-size views: one length check here, none per block.
        let w: &[u8; BLOCK_LANES * BLOCK_BYTES] = w.try_into().unwrap();
        let y: &[u8; BLOCK_LANES * Q8_BYTES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| {
            let wv = u8x32::from_array(*simd::arr::<32>(w, b * BLOCK_BYTES + 2));
            let yv = u8x32::from_array(*simd::arr::<32>(y, b * Q8_BYTES + 2));
            // i16 products (|.| <= 128 * 128) summed in i32.
            let p = wv.cast::<i8>().cast::<i16>() * yv.cast::<i8>().cast::<i16>();
            p.cast::<i32>().reduce_sum()
        }));
        let dw = simd::f16_to_f32_portable(simd::gather_f16_bits::<BLOCK_BYTES>(w, 0));
        let dx = simd::f16_to_f32_portable(simd::gather_f16_bits::<Q8_BYTES>(y, 0));
        combine(dw, dx, isum)
    }
}

pub(crate) fn vec_dot_portable(w: &[u8], y: &[u8]) -> f32 {
    // SAFETY: the portable kernel needs no CPU feature.
    unsafe { block_dot::<Portable>(w, y) }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
struct Avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl BlockKernel for Avx2 {
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    // Inlined into `vec_dot_avx2`, which enables the features (see `simd::x86`).
    #[inline(always)]
    unsafe fn group(w: &[u8], y: &[u8]) -> f32x8 {
        // Fixed-size views: one length check here, none per block.
        let w: &[u8; BLOCK_LANES * BLOCK_BYTES] = w.try_into().unwrap();
        let y: &[u8; BLOCK_LANES * Q8_BYTES] = y.try_into().unwrap();
        use simd::x86::*;
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            // Sign-extend to i16 and use madd: exact for every byte pair, -128 * -128
            // included (llama.cpp's abs/sign + maddubs trick is not, for -128).
            let w0 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(w, b * BLOCK_BYTES + 2)));
            let w1 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(w, b * BLOCK_BYTES + 18)));
            let y0 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(y, b * Q8_BYTES + 2)));
            let y1 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(y, b * Q8_BYTES + 18)));
            *vb = _mm256_add_epi32(_mm256_madd_epi16(w0, y0), _mm256_madd_epi16(w1, y1));
        }
        let isum = hsum8_epi32(v);
        let dw = f16x8_to_f32(simd::gather_f16_bits::<BLOCK_BYTES>(w, 0));
        let dx = f16x8_to_f32(simd::gather_f16_bits::<Q8_BYTES>(y, 0));
        combine(dw, dx, isum)
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn vec_dot_avx2(w: &[u8], y: &[u8]) -> f32 {
    block_dot::<Avx2>(w, y)
}

pub(crate) fn vec_dot(w: &[u8], y: &[u8]) -> f32 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2() {
        // SAFETY: checked just above.
        return unsafe { vec_dot_avx2(w, y) };
    }
    vec_dot_portable(w, y)
}

/// Side data of one q8_0 activation row for [`vec_dot_rows_xn`], per group of 8 blocks (the
/// last one padded with zero blocks): the scales as f32 and the quants widened to i16, so the
/// multi-row kernel multiplies them straight from memory.
pub(crate) fn rows_aux(y: &[u8]) -> (Vec<f32>, Vec<i16>) {
    let nb = y.len() / Q8_BYTES;
    let padded = nb.div_ceil(BLOCK_LANES) * BLOCK_LANES;
    let mut d = vec![0f32; padded];
    let mut y16 = vec![0i16; padded * QK];
    for (b, yb) in y.chunks_exact(Q8_BYTES).enumerate() {
        d[b] = read_f16(yb);
        for (o, &q) in y16[b * QK..(b + 1) * QK].iter_mut().zip(&yb[2..]) {
            *o = q as i8 as i16;
        }
    }
    (d, y16)
}

/// One group of 8 weight blocks against the same group of `N` activation rows. Each weight
/// block is widened to i16 once for all rows; per row, the integer sum of each block is the
/// single-row kernel's (exact i16 x i16 -> i32 madd), reduced to one lane per block by the
/// same `hadd` tree as `hsum8_epi32`, and the float steps are the single-row kernel's
/// (`combine`), so each lane accumulates the bits it would in [`vec_dot`].
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn group_xn_avx2<const N: usize>(
    w: &[u8; BLOCK_LANES * BLOCK_BYTES],
    y16: [&[i16; BLOCK_LANES * QK]; N],
    dx: [&[f32; BLOCK_LANES]; N],
    acc: &mut [f32x8; N],
) {
    use simd::x86::*;
    use std::mem::MaybeUninit;
    // h[n][i]: hadd of blocks 2i and 2i + 1 of row n (the first level of the hadd tree).
    // Left uninitialized: every element is written below before it is read, and zeroing
    // 32 vectors per group cost a memset call per group.
    let mut h = [[const { MaybeUninit::<__m256i>::uninit() }; 4]; N];
    for i in 0..4 {
        let wv: [__m256i; 4] = std::array::from_fn(|k| {
            let b = 2 * i + k / 2;
            _mm256_cvtepi8_epi16(load16(simd::arr::<16>(w, b * BLOCK_BYTES + 2 + 16 * (k % 2))))
        });
        for n in 0..N {
            let a = block_i32(wv[0], wv[1], &y16[n][2 * i * QK..][..QK]);
            let b = block_i32(wv[2], wv[3], &y16[n][(2 * i + 1) * QK..][..QK]);
            h[n][i].write(_mm256_hadd_epi32(a, b));
        }
    }
    let dw = f16x8_to_f32(simd::gather_f16_bits::<BLOCK_BYTES>(w, 0));
    for n in 0..N {
        // SAFETY: all four were written in the loop above.
        let [h0, h1, h2, h3] = h[n].map(|v| v.assume_init());
        let h0123 = _mm256_hadd_epi32(h0, h1);
        let h4567 = _mm256_hadd_epi32(h2, h3);
        let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
        let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
        let isum = i32x8::from(_mm256_add_epi32(lo, hi));
        acc[n] += combine(dw, f32x8::from_array(*dx[n]), isum);
    }
}

/// Eight i32 partial sums of one block: widened weights `w0`, `w1` (values 0..16, 16..32)
/// times the block's i16 activations.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn block_i32(w0: simd::x86::__m256i, w1: simd::x86::__m256i, y: &[i16]) -> simd::x86::__m256i {
    use simd::x86::*;
    let y = &y[..QK];
    let y0 = _mm256_loadu_si256(y.as_ptr().cast());
    let y1 = _mm256_loadu_si256(y[16..].as_ptr().cast());
    _mm256_add_epi32(_mm256_madd_epi16(w0, y0), _mm256_madd_epi16(w1, y1))
}

/// Group `g`'s slices of each activation row's side data.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn group_parts<'a, const N: usize>(y16: [&'a [i16]; N], d: [&'a [f32]; N], g: usize) -> ([&'a [i16; BLOCK_LANES * QK]; N], [&'a [f32; BLOCK_LANES]; N]) {
    const YG: usize = BLOCK_LANES * QK;
    (
        std::array::from_fn(|t| y16[t][g * YG..][..YG].try_into().unwrap()),
        std::array::from_fn(|t| d[t][g * BLOCK_LANES..][..BLOCK_LANES].try_into().unwrap()),
    )
}

/// One weight row against `N` activation rows (the body of [`rows_xn_avx2`]).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn row_xn_avx2<const N: usize>(w: &[u8], d: [&[f32]; N], y16: [&[i16]; N]) -> [f32; N] {
    const WG: usize = BLOCK_LANES * BLOCK_BYTES;
    const YG: usize = BLOCK_LANES * QK;
    let nb = w.len() / BLOCK_BYTES;
    let groups = nb.div_ceil(BLOCK_LANES);
    for t in 0..N {
        assert!(d[t].len() == groups * BLOCK_LANES && y16[t].len() == groups * YG, "q8_0 rows_aux lengths");
    }
    let mut acc = [f32x8::splat(0.0); N];
    let full = nb / BLOCK_LANES;
    for g in 0..full {
        simd::prefetch_ahead(w.as_ptr().wrapping_add(g * WG), WG);
        let (yg, dg) = group_parts(y16, d, g);
        group_xn_avx2(simd::arr::<WG>(w, g * WG), yg, dg, &mut acc);
    }
    if nb % BLOCK_LANES != 0 {
        // Zero padding as in `block_dot`: padded lanes add (0 * 0) * 0 = +0.0.
        let mut wp = [0u8; WG];
        wp[..w.len() - full * WG].copy_from_slice(&w[full * WG..]);
        let (yg, dg) = group_parts(y16, d, full);
        group_xn_avx2(&wp, yg, dg, &mut acc);
    }
    acc.map(|a| simd::reduce8(a.to_array()))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `d` and `y16` come from [`rows_aux`].
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_xn_avx2<const N: usize>(w: &[u8], row_bytes: usize, d: [&[f32]; N], y16: [&[i16]; N], out: &mut [[f32; N]]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = row_xn_avx2(&w[r * row_bytes..(r + 1) * row_bytes], d, y16);
    }
}

/// `out.len()` consecutive weight rows of `row_bytes` (in `w`) against `N` activation rows
/// `ys`: `out[r][t]` is bit-identical to `vec_dot(row r, ys[t])`. `d` and `y16` come from
/// [`rows_aux`] of `ys`.
pub(crate) fn vec_dot_rows_xn<const N: usize>(w: &[u8], row_bytes: usize, ys: [&[u8]; N], d: [&[f32]; N], y16: [&[i16]; N], out: &mut [[f32; N]]) {
    assert_eq!(w.len(), out.len() * row_bytes, "vec_dot_rows_xn weight rows");
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2() {
        // SAFETY: checked just above.
        return unsafe { rows_xn_avx2(w, row_bytes, d, y16, out) };
    }
    let _ = (d, y16);
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        *o = ys.map(|y| vec_dot_portable(row, y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::{np_roundf, np_trunc_u8};
    use crate::quant::tests_util::{
        check_block_dot_paths, fnv1a, known_input, UnsafeDot, GGUF_Q8_0,
    };

    fn quantize(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK * BLOCK_BYTES];
        quantize_row(x, &mut out);
        out
    }

    fn dequantize(b: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; b.len() / BLOCK_BYTES * QK];
        dequantize_row(b, &mut out);
        out
    }

    #[test]
    fn roundf_is_half_away_from_zero() {
        for (n, r) in [
            (0.5, 1.0),
            (1.5, 2.0),
            (2.5, 3.0),
            (-0.5, -1.0),
            (-2.5, -3.0),
            (0.49999997, 0.0),
            (126.5, 127.0),
            (-0.0, 0.0),
            (3.0, 3.0),
        ] {
            assert_eq!(np_roundf(n), r, "{n}");
        }
        assert!(np_roundf(f32::NAN).is_nan());
        assert!(np_roundf(f32::INFINITY).is_nan()); // inf - inf inside, as in numpy
        assert_eq!(np_trunc_u8(np_roundf(f32::NAN)), 0);
        assert_eq!(np_trunc_u8(np_roundf(-127.4)) as i8, -127);
        assert_eq!(np_roundf(1e20), 1e20);
        assert_eq!(np_roundf(8_388_607.5), 8_388_608.0);
    }

    #[test]
    fn hand_computed_block() {
        // amax = 127 -> d = 1, q = round-half-away(x).
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5;
        x[2] = 2.5;
        x[3] = -127.0;
        x[4] = 0.4;
        let b = quantize(&x);
        assert_eq!(&b[..2], &[0x00, 0x3c]); // 1.0
        assert_eq!(&b[2..7], &[127, (-3i8) as u8, 3, (-127i8) as u8, 0]);
        assert!(b[7..].iter().all(|&v| v == 0));
        // amax = 2.54 -> d = 0.02, id = 50.
        let mut x = [0.01f32; 32];
        x[5] = -2.54;
        let b = quantize(&x);
        assert_eq!(
            u16::from_le_bytes([b[0], b[1]]),
            f32_to_f16_bits(2.54 / 127.0)
        );
        assert_eq!(b[2 + 5] as i8, -127);
        assert_eq!(
            b[2] as i8,
            np_roundf(0.01 * (1.0 / (2.54f32 / 127.0))) as i8
        );
    }

    #[test]
    fn known_answer_vectors_from_gguf() {
        let b = quantize(&known_input(1, 32));
        assert_eq!(
            b,
            [
                0x06, 0x16, 0x55, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x5e, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0xe4, 0x00, 0x00, 0x00, 0xa9, 0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x7f, 0x00, 0x5c,
            ]
        );
        for (seed, n, qhash, dqhash) in GGUF_Q8_0 {
            let b = quantize(&known_input(seed, n));
            assert_eq!(fnv1a(&b), qhash, "seed {seed} n {n}");
            let y: Vec<u8> = dequantize(&b)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            assert_eq!(fnv1a(&y), dqhash, "dequantize seed {seed} n {n}");
        }
    }

    #[test]
    fn edge_blocks() {
        let b = quantize(&[0.0; 32]);
        assert!(b.iter().all(|&v| v == 0));
        let b = quantize(&[-7.0; 32]);
        assert!(b[2..].iter().all(|&v| v as i8 == -127));
        let y = dequantize(&b);
        assert!(y.iter().all(|&v| (v + 7.0).abs() < 7.0 / 1000.0));
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e-30).collect();
        assert!(dequantize(&quantize(&x)).iter().all(|v| v.is_finite()));
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e30).collect();
        let _ = dequantize(&quantize(&x));
        let mut x = [1.0f32; 32];
        x[3] = f32::NAN;
        let b = quantize(&x);
        assert_eq!(b[2 + 3], 0);
        x[3] = f32::INFINITY;
        let _ = dequantize(&quantize(&x));
    }

    #[test]
    fn builds_quantize_alike() {
        let mut x = known_input(1003, 32 * 500);
        x.extend(known_input(7, 32 * 100));
        x.extend(
            [f32::NAN, f32::INFINITY, -1e38, 1e-40]
                .iter()
                .cycle()
                .take(64),
        );
        let mut a = vec![0u8; x.len() / QK * BLOCK_BYTES];
        let mut b = a.clone();
        quantize_row_portable(&x, &mut a);
        quantize_row(&x, &mut b);
        assert_eq!(a, b);
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if simd::has_avx2() {
            unsafe { quantize_row_avx2(&x, &mut b) };
            assert_eq!(a, b);
        }
    }

    #[test]
    fn round_trip_error_is_bounded() {
        let x = known_input(5, 32 * 64);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            for (a, r) in xb.iter().zip(yb) {
                assert!(
                    (a - r).abs() <= d * 0.5 + amax * 1e-3 + 128.0 * 3e-8,
                    "{a} vs {r}, d {d}"
                );
            }
        }
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths(
            BLOCK_BYTES,
            quantize_row,
            dequantize_row,
            vec_dot_scalar,
            vec_dot_portable,
            vec_dot,
            AVX2,
        );
    }

    /// Several weight rows against 8, 4 and 1 activation rows at once equal the single-row
    /// reference exactly: ragged and whole groups, quantized and random bytes (so -128 on
    /// both sides), random finite scales.
    #[test]
    fn multi_row_equals_single_row_exactly() {
        let mut rng = crate::quant::tests_util::Rng::new(78);
        for nb in (0..=20).chain([63, 64, 65]) {
            for round in 0..2 {
                let (n, rows, row_bytes) = (nb * QK, 3, nb * BLOCK_BYTES);
                let random = |rng: &mut crate::quant::tests_util::Rng, len: usize| -> Vec<u8> {
                    let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                    for blk in b.chunks_exact_mut(BLOCK_BYTES) {
                        let h = (rng.next_u64() as u16 & 0x83ff) | (((rng.next_u64() % 29) as u16 + 1) << 10);
                        blk[..2].copy_from_slice(&h.to_le_bytes());
                    }
                    b
                };
                let (w, ys): (Vec<u8>, Vec<Vec<u8>>) = if round == 0 {
                    let w = quantize(&(0..rows * n).map(|_| rng.normal() * 0.02).collect::<Vec<_>>());
                    (w, (0..8).map(|t| quantize(&(0..n).map(|_| rng.normal() * (t as f32 + 1.0)).collect::<Vec<_>>())).collect())
                } else {
                    (random(&mut rng, rows * row_bytes), (0..8).map(|_| random(&mut rng, row_bytes)).collect())
                };
                let aux: Vec<(Vec<f32>, Vec<i16>)> = ys.iter().map(|y| rows_aux(y)).collect();
                let want: Vec<[f32; 8]> = (0..rows)
                    .map(|r| std::array::from_fn(|t| vec_dot_scalar(&w[r * row_bytes..(r + 1) * row_bytes], &ys[t])))
                    .collect();
                fn check<const N: usize>(w: &[u8], row_bytes: usize, ys: &[Vec<u8>], aux: &[(Vec<f32>, Vec<i16>)], t0: usize, want: &[[f32; 8]]) {
                    crate::quant::tests_util::check_multi_row::<N>(want, t0, |out| {
                        vec_dot_rows_xn::<N>(
                            w,
                            row_bytes,
                            std::array::from_fn(|k| &ys[t0 + k][..]),
                            std::array::from_fn(|k| &aux[t0 + k].0[..]),
                            std::array::from_fn(|k| &aux[t0 + k].1[..]),
                            out,
                        )
                    });
                }
                check::<8>(&w, row_bytes, &ys, &aux, 0, &want);
                check::<4>(&w, row_bytes, &ys, &aux, 3, &want);
                check::<1>(&w, row_bytes, &ys, &aux, 7, &want);
            }
        }
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    const AVX2: Option<UnsafeDot> = Some(vec_dot_avx2);
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    const AVX2: Option<UnsafeDot> = None;
}
