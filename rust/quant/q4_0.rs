//! Q4_0: 32 weights per 18-byte block: f16 scale `d`, then 16 bytes of nibbles; byte `j`
//! holds weight `j` (low nibble) and weight `j + 16` (high nibble). Value = `(q - 8) * d`.

use super::fp16::{f32_to_f16_bits, read_f16};
use super::simd::{self, block_dot, BlockKernel, BLOCK_LANES, Q8_BYTES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;
pub(crate) const BLOCK_BYTES: usize = 18;

/// gguf's `Q4_0.quantize_blocks`, step by step in f32.
fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    // numpy `abs(x).argmax()`: first index of the largest magnitude; the first NaN if any.
    let imax = match simd::block_abs_max(x) {
        Some(amax) => x.iter().position(|v| v.abs() == amax).unwrap(),
        None => x.iter().position(|v| v.is_nan()).unwrap(),
    };
    let d = x[imax] / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    // trunc(x*id + 8.5), numpy's uint8 cast, clip to 15 (finite input gives 0..=16 here).
    let q = |k: usize| {
        let v = f32x8::from_slice(&x[8 * k..]) * f32x8::splat(id) + f32x8::splat(8.5);
        simd::np_trunc_u8_x8(v).simd_min(u8x8::splat(15))
    };
    out[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    // Weights j and j + 16 share byte j.
    for k in 0..2 {
        let packed = q(k) | (q(k + 2) << 4);
        out[2 + 8 * k..2 + 8 * k + 8].copy_from_slice(packed.as_array());
    }
}

pub(crate) fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let (blocks, rest) = src.as_chunks::<QK>();
    debug_assert!(rest.is_empty() && dst.len() == blocks.len() * BLOCK_BYTES);
    for (x, out) in blocks.iter().zip(dst.as_chunks_mut::<BLOCK_BYTES>().0) {
        quantize_block(x, out);
    }
}

pub(crate) fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    let (blocks, rest) = src.as_chunks::<BLOCK_BYTES>();
    debug_assert!(rest.is_empty() && dst.len() == blocks.len() * QK);
    for (b, y) in blocks.iter().zip(dst.as_chunks_mut::<QK>().0) {
        let d = read_f16(b);
        for j in 0..QK / 2 {
            y[j] = d * ((b[2 + j] & 0x0f) as i32 - 8) as f32;
            y[j + QK / 2] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
        }
    }
}

/// Reference: exact integer sum per block, `acc[b % 8] += (d_w * d_x) * isum`, fixed reduction.
pub(crate) fn vec_dot_scalar(w: &[u8], y: &[u8]) -> f32 {
    debug_assert_eq!(w.len() / BLOCK_BYTES * Q8_BYTES, y.len());
    let mut acc = [0f32; BLOCK_LANES];
    for (b, (wb, yb)) in w
        .chunks_exact(BLOCK_BYTES)
        .zip(y.chunks_exact(Q8_BYTES))
        .enumerate()
    {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            let lo = (wb[2 + j] & 0x0f) as i32 - 8;
            let hi = (wb[2 + j] >> 4) as i32 - 8;
            isum += lo * yb[2 + j] as i8 as i32 + hi * yb[2 + QK / 2 + j] as i8 as i32;
        }
        acc[b % BLOCK_LANES] += (read_f16(wb) * read_f16(yb)) * isum as f32;
    }
    simd::reduce8(acc)
}

/// The float half of a group, shared by both builds so their order cannot drift apart.
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
            let qs = u8x16::from_array(*simd::arr::<16>(w, b * BLOCK_BYTES + 2));
            let y0 = u8x16::from_array(*simd::arr::<16>(y, b * Q8_BYTES + 2)).cast::<i8>();
            let y1 = u8x16::from_array(*simd::arr::<16>(y, b * Q8_BYTES + 18)).cast::<i8>();
            let lo = (qs & u8x16::splat(0x0f)).cast::<i16>() - i16x16::splat(8);
            let hi = (qs >> 4).cast::<i16>() - i16x16::splat(8);
            // |products| <= 8 * 128, so the i16 sums of two cannot overflow.
            (lo * y0.cast::<i16>() + hi * y1.cast::<i16>())
                .cast::<i32>()
                .reduce_sum()
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
        let m4 = _mm_set1_epi8(0x0f);
        let eight = _mm256_set1_epi8(8);
        let ones = _mm256_set1_epi16(1);
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            let qs = load16(simd::arr::<16>(w, b * BLOCK_BYTES + 2));
            let lo = _mm_and_si128(qs, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
            let nib = _mm256_set_m128i(hi, lo); // weights 0..32 in order, values 0..=15
            let yv = load32(simd::arr::<32>(y, b * Q8_BYTES + 2));
            // sum (q - 8) * y = sum q * y - sum 8 * y. maddubs takes the nibbles as the
            // unsigned operand, so no sign trick is needed and y = -128 is still exact;
            // each i16 pair sum is at most 2 * 15 * 128, no saturation.
            let p = _mm256_sub_epi16(
                _mm256_maddubs_epi16(nib, yv),
                _mm256_maddubs_epi16(eight, yv),
            );
            *vb = _mm256_madd_epi16(p, ones);
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
    use crate::quant::tests_util::{
        check_block_dot_paths, fnv1a, known_input, UnsafeDot, GGUF_Q4_0,
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
    fn hand_computed_block() {
        // x = i - 8 for i in 0..32: m = 23 (largest |x|, positive), d = -2.875,
        // q = trunc(x / -2.875 + 8.5) clipped to 15.
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 8.0).collect();
        let b = quantize(&x);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0xc1c0); // -2.875 in f16
        let q: Vec<u8> = x
            .iter()
            .map(|v| ((v / -2.875 + 8.5) as u8).min(15))
            .collect();
        for j in 0..16 {
            assert_eq!(b[2 + j], q[j] | (q[j + 16] << 4), "byte {j}");
        }
        assert_eq!(b[2], 0x5b); // x=-8 -> q=11, x=8 -> q=5
        let y = dequantize(&b);
        assert_eq!(y[31], (0 - 8) as f32 * -2.875); // x=23 -> q=0
        for (a, r) in x.iter().zip(&y) {
            assert!((a - r).abs() <= 2.875 / 2.0 + 1e-6, "{a} vs {r}");
        }
    }

    #[test]
    fn known_answer_vectors_from_gguf() {
        // Bytes from gguf.quants.quantize (gguf 0.19.0, numpy 2.4.6) on `known_input` rows.
        let x = known_input(1, 32);
        let b = quantize(&x);
        assert_eq!(
            b,
            [
                0xfa, 0xa5, 0x83, 0x88, 0xd8, 0x88, 0x38, 0x88, 0x88, 0x82, 0x88, 0x88, 0x88, 0x88,
                0x88, 0x08, 0x8a, 0x28,
            ]
        );
        for (seed, n, qhash, dqhash) in GGUF_Q4_0 {
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
        // All zeros: m = +0, d = 0 / -8 = -0 (stored as f16 -0), every q = 8.
        let b = quantize(&[0.0; 32]);
        assert_eq!(&b[..2], &[0x00, 0x80]);
        assert!(b[2..].iter().all(|&v| v == 0x88));
        assert!(dequantize(&b).iter().all(|&v| v == 0.0));
        // Constant row: m = c, d = -c/8, q = trunc(-8 + 8.5) = 0 for all.
        let b = quantize(&[3.0; 32]);
        assert_eq!(read_f16(&b), -0.375);
        assert!(b[2..].iter().all(|&v| v == 0x00));
        assert!(dequantize(&b).iter().all(|&v| v == 3.0));
        // Negative extreme: d > 0, the extreme maps to q = 0 and the opposite end clips.
        let mut x = [0.5f32; 32];
        x[7] = -4.0;
        x[20] = 4.0;
        let b = quantize(&x);
        assert_eq!(read_f16(&b), 0.5);
        let y = dequantize(&b);
        assert_eq!(y[7], -4.0);
        assert_eq!(y[20], 3.5); // 4/0.5 + 8.5 = 16.5 -> 16 -> clip 15
        assert_eq!(y[0], 0.5);
        // First index wins a tie of magnitudes: -2 at 3 before +2 at 5, so d = 0.25.
        let mut x = [0.0f32; 32];
        x[3] = -2.0;
        x[5] = 2.0;
        assert_eq!(read_f16(&quantize(&x)), 0.25);
        // Tiny: the scale underflows to f16 zero, the values to 0 (finite).
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e-30).collect();
        let b = quantize(&x);
        assert!(dequantize(&b).iter().all(|v| v.is_finite()));
        // Huge: the scale overflows f16 as it does in gguf (stored as infinity); no panic.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e30).collect();
        let b = quantize(&x);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]) & 0x7fff, 0x7c00);
        // Up to 60000 the scale stays finite and so do the values.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 3800.0).collect();
        assert!(dequantize(&quantize(&x)).iter().all(|v| v.is_finite()));
        // NaN and infinities do not panic.
        let mut x = [1.0f32; 32];
        x[4] = f32::NAN;
        x[9] = f32::INFINITY;
        let _ = dequantize(&quantize(&x));
        x[4] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
    }

    #[test]
    fn round_trip_error_is_bounded() {
        let x = known_input(5, 32 * 64);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 8.0;
            for (a, r) in xb.iter().zip(yb) {
                // half a step, plus the clipped top end (one more step), plus f16 rounding.
                assert!((a - r).abs() <= d * 1.001 + 8.0 * 3e-8, "{a} vs {r}, d {d}");
            }
        }
        // Quantizing a dequantized row gives the same values back (a fixed point; only the
        // sign of a zero scale may flip).
        let y = dequantize(&quantize(&x));
        assert_eq!(dequantize(&quantize(&y)), y);
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
