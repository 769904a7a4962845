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

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    const AVX2: Option<UnsafeDot> = Some(vec_dot_avx2);
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    const AVX2: Option<UnsafeDot> = None;
}
