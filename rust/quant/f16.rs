//! F16: the f32 <-> f16 conversions (numpy's, bit for bit), the f16 scale of today's blocks,
//! and F16 rows with their F16 x f32 dot kernels.

use super::block::{Family, Pod, Scale};
use super::simd::{self, FLOAT_LANES};
use std::simd::prelude::*;

/// f32 to IEEE half bits, rounding to nearest even, exactly as numpy's `astype(np.float16)`:
/// overflow gives a signed infinity, NaN keeps the top 10 bits of its payload (and stays NaN;
/// numpy does not set the quiet bit).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let f = x.to_bits();
    let sign = ((f >> 16) & 0x8000) as u16;
    let exp = f & 0x7f80_0000;
    let man = f & 0x007f_ffff;
    if exp >= 0x4780_0000 {
        // |x| >= 65536 (rounds past the largest half 65504), inf or NaN.
        if exp == 0x7f80_0000 && man != 0 {
            let m = (man >> 13) as u16;
            return sign | 0x7c00 | if m == 0 { 1 } else { m };
        }
        return sign | 0x7c00;
    }
    if exp <= 0x3800_0000 {
        // Below the smallest normal half (2^-14): a subnormal half or zero.
        if exp < 0x3300_0000 {
            return sign; // below 2^-25: rounds to zero
        }
        // Count of 2^-24 units = sig * 2^(e - 150 + 24), rounded half to even.
        let e = exp >> 23; // 102..=112
        let sig = 0x0080_0000 | man;
        let shift = 126 - e; // 14..=24
        let q = sig >> shift;
        let rem = sig & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        let q = if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        };
        return sign | q as u16; // q == 0x400 is the smallest normal: still right
    }
    // Normal half: rebias the exponent, keep 10 mantissa bits, round half to even on the
    // 13 dropped bits; a carry propagates into the exponent (up to infinity), as it should.
    let base = ((exp - 0x3800_0000) >> 13) | (man >> 13);
    let rem = man & 0x1fff;
    let r = if rem > 0x1000 || (rem == 0x1000 && base & 1 == 1) {
        base + 1
    } else {
        base
    };
    sign | r as u16
}

/// ggml's `GGML_FP32_TO_FP16` as llama.cpp's reference encoders run it (ggml-base is built
/// without F16C, so it is the software `ggml_compute_fp32_to_fp16`): round to nearest even
/// like [`f32_to_f16_bits`], but every NaN becomes the quiet NaN `0x7e00` with its sign.
pub fn ggml_fp32_to_fp16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return ((x.to_bits() >> 16) & 0x8000) as u16 | 0x7e00;
    }
    f32_to_f16_bits(x)
}

/// IEEE half bits to f32 (exact; NaN payloads are kept, as numpy does).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let man = (h & 0x03ff) as u32;
    let bits = match h & 0x7c00 {
        0 => (man as f32 * (1.0 / 16_777_216.0)).to_bits(), // zero or subnormal: man * 2^-24
        0x7c00 => 0x7f80_0000 | (man << 13),
        _ => (((h & 0x7fff) as u32) + 0x1c000) << 13,
    };
    f32::from_bits(sign | bits)
}

/// Little-endian f16 at `b[0..2]`, as f32.
#[cfg(test)]
#[inline(always)]
pub(crate) fn read_f16(b: &[u8]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// An IEEE half, little-endian: the scale of today's blocks, and the element of F16 rows.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct F16(pub [u8; 2]);
const _: () = assert!(std::mem::size_of::<F16>() == 2);
// SAFETY: two bytes, alignment 1.
unsafe impl Pod for F16 {}

impl F16 {
    #[inline(always)]
    pub fn bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }
}

#[inline(always)]
fn bits8(s: [F16; 8]) -> u16x8 {
    u16x8::from_array(s.map(F16::bits))
}

impl Scale for F16 {
    #[inline(always)]
    fn get(self) -> f32 {
        f16_bits_to_f32(self.bits())
    }
    #[inline(always)]
    fn store(v: f32) -> F16 {
        F16(f32_to_f16_bits(v).to_le_bytes())
    }
    #[inline(always)]
    fn lanes_portable(s: [F16; 8]) -> f32x8 {
        simd::f16_to_f32_portable(bits8(s))
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn lanes_avx2(s: [F16; 8]) -> f32x8 {
        simd::x86::f16x8_to_f32(bits8(s))
    }
    /// One or two `vpermt2w` over the chunk's first 128 or 256 bytes pick the 8 scales
    /// (instead of 8 word inserts), where the stride lets them: even, and the chunk long
    /// enough for the loads. Other strides read the scales one by one.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn lanes_strided_avx512(bytes: &[u8], stride: usize) -> f32x8 {
        use simd::x86::*;
        // Word index of each scale (all of this folds away for a constant stride).
        let word: [usize; 8] = std::array::from_fn(|b| b * stride / 2);
        let even = stride.is_multiple_of(2);
        let one = even && word[7] < 64 && bytes.len() >= 128;
        let two = even && word[7] < 128 && bytes.len() >= 256;
        if !(one || two) {
            return Self::lanes_avx2(super::block::read_strided(bytes, stride));
        }
        let p = bytes.as_ptr();
        // Word indices into a pair of 64-byte tables (bit 5 picks the second table).
        let idx = |lo: usize| -> __m512i {
            let mut i = [0u16; 32];
            for b in 0..8 {
                i[b] = (word[b].wrapping_sub(lo) & 63) as u16;
            }
            _mm512_loadu_si512(i.as_ptr().cast())
        };
        let t0 = _mm512_loadu_si512(p.cast());
        let t1 = _mm512_loadu_si512(p.add(64).cast());
        let mut r = _mm512_permutex2var_epi16(t0, idx(0), t1);
        if !one {
            let t2 = _mm512_loadu_si512(p.add(128).cast());
            let t3 = _mm512_loadu_si512(p.add(192).cast());
            let r2 = _mm512_permutex2var_epi16(t2, idx(64), t3);
            let mut high = 0u32;
            for (b, &w) in word.iter().enumerate() {
                if w >= 64 {
                    high |= 1 << b;
                }
            }
            r = _mm512_mask_blend_epi16(high, r, r2);
        }
        f32x8::from(_mm256_cvtph_ps(_mm512_castsi512_si128(r)))
    }
}

/// F16 rows against f32 activations: `acc[i % 32] += w[i] * x[i]`, then the fixed reduction.
impl Family for F16 {
    const QK: usize = 1;
    type Act = f32;
    type Aux = ();

    #[inline(always)]
    fn quantize(x: &[f32], out: &mut F16) {
        *out = F16::store(x[0]);
    }
    #[inline(always)]
    fn dequantize(&self, y: &mut [f32]) {
        y[0] = self.get();
    }
    fn dot_scalar(w: &[F16], x: &[f32]) -> f32 {
        let mut acc = [0f32; FLOAT_LANES];
        for (i, (wv, &xv)) in w.iter().zip(x).enumerate() {
            acc[i % FLOAT_LANES] += wv.get() * xv;
        }
        simd::reduce32(&acc)
    }
    #[inline(always)]
    fn chunk_portable(acc: &mut [f32x8; 4], w: &[F16], x: &[f32]) {
        let (w, x): (&[F16; FLOAT_LANES], &[f32; FLOAT_LANES]) =
            (w.try_into().unwrap(), x.try_into().unwrap());
        for k in 0..4 {
            let wv = F16::lanes_portable(std::array::from_fn(|i| w[8 * k + i]));
            acc[k] += wv * f32x8::from_slice(&x[8 * k..8 * k + 8]);
        }
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut [f32x8; 4], w: &[F16], x: &[f32]) {
        use simd::x86::*;
        let (w, x): (&[F16; FLOAT_LANES], &[f32; FLOAT_LANES]) =
            (w.try_into().unwrap(), x.try_into().unwrap());
        for k in 0..4 {
            let h = _mm_loadu_si128(w[8 * k..].as_ptr().cast());
            acc[k] += f32x8::from(_mm256_cvtph_ps(h)) * f32x8::from_slice(&x[8 * k..8 * k + 8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::{byte_shims, Rng};

    byte_shims!(F16, [f32], crate::quant::tests_util::f32s);

    const P2_M10: f32 = 1.0 / 1024.0;
    const P2_M14: f32 = 1.0 / 16384.0;
    const P2_M24: f32 = 1.0 / 16_777_216.0;

    #[test]
    fn known_conversions() {
        let cases: &[(f32, u16)] = &[
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (65519.99, 0x7bff), // below the rounding midpoint to infinity
            (65520.0, 0x7c00),  // the midpoint rounds to even: infinity
            (1e30, 0x7c00),
            (-1e30, 0xfc00),
            (f32::INFINITY, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (P2_M14, 0x0400),                              // smallest normal 2^-14
            (P2_M24, 0x0001),                              // smallest subnormal 2^-24
            (P2_M24 / 2.0, 0x0000),                        // 2^-25: tie, rounds to even (zero)
            (P2_M24 / 2.0 * (1.0 + f32::EPSILON), 0x0001), // just above 2^-25
            (1e-30, 0x0000),
            (-1e-30, 0x8000),
            (0.1, 0x2e66),
            (1.0 + P2_M10, 0x3c01),
            (1.0 + P2_M10 / 2.0, 0x3c00), // tie between 0x3c00 and 0x3c01: even
            (1.0 + P2_M10 * 1.5, 0x3c02), // tie between 0x3c01 and 0x3c02: even
        ];
        for &(x, h) in cases {
            assert_eq!(f32_to_f16_bits(x), h, "f32_to_f16_bits({x:e})");
        }
        // NaN payloads as numpy handles them (checked against numpy 2.4).
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7fc0_0000)), 0x7e00);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7f80_0001)), 0x7c01);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7fa0_0000)), 0x7d00);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0xffc0_0001)), 0xfe00);
        assert_eq!(f16_bits_to_f32(0x7c01).to_bits(), 0x7f80_2000);
        assert_eq!(f16_bits_to_f32(0xfe01).to_bits(), 0xffc0_2000);
        assert_eq!(f16_bits_to_f32(0x0001), P2_M24);
        assert_eq!(f16_bits_to_f32(0x03ff).to_bits(), 0x387f_c000);
        assert_eq!(f16_bits_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_bits_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn every_half_round_trips() {
        for h in 0..=u16::MAX {
            let f = f16_bits_to_f32(h);
            assert_eq!(f32_to_f16_bits(f), h, "{h:#06x}");
            if !f.is_nan() {
                // Exactness: the half value survives f32 arithmetic identities.
                assert_eq!(f32_to_f16_bits(f * 1.0), h);
            }
        }
    }

    #[test]
    fn rounding_is_nearest_even_everywhere() {
        // For every half h (finite, positive) the f32 values strictly between h and its
        // successor round to the nearer one, and the midpoint to the even one.
        for h in 0u16..0x7bff {
            let lo = f16_bits_to_f32(h) as f64;
            let hi = f16_bits_to_f32(h + 1) as f64;
            let mid = ((lo + hi) / 2.0) as f32;
            assert_eq!(mid as f64, (lo + hi) / 2.0);
            let expect_mid = if h % 2 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16_bits(mid), expect_mid, "mid {h:#06x}");
            assert_eq!(f32_to_f16_bits(f32::from_bits(mid.to_bits() - 1)), h);
            assert_eq!(f32_to_f16_bits(f32::from_bits(mid.to_bits() + 1)), h + 1);
            assert_eq!(f32_to_f16_bits(-mid), expect_mid | 0x8000);
        }
    }

    #[test]
    fn portable_simd_conversion_matches_scalar() {
        for base in (0..=u16::MAX as u32).step_by(8) {
            let h = u16x8::from_array(std::array::from_fn(|i| (base + i as u32) as u16));
            let v = simd::f16_to_f32_portable(h).to_array();
            for i in 0..8 {
                assert_eq!(v[i].to_bits(), f16_bits_to_f32(h[i]).to_bits());
            }
        }
    }

    #[test]
    fn dot_paths_agree_exactly() {
        let mut rng = Rng::new(7);
        for n in (0..=100).chain([127, 128, 129, 255, 256, 1000, 4096, 4097]) {
            for _ in 0..4 {
                let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
                let mut w = vec![0u8; n * 2];
                quantize_row(&wf, &mut w);
                let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let r = vec_dot_scalar(&w, &x);
                assert_eq!(vec_dot_portable(&w, &x).to_bits(), r.to_bits(), "n={n}");
                assert_eq!(vec_dot(&w, &x).to_bits(), r.to_bits(), "n={n}");
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                if simd::has_avx2() {
                    assert_eq!(
                        unsafe { vec_dot_avx2(&w, &x) }.to_bits(),
                        r.to_bits(),
                        "n={n}"
                    );
                }
                // Unaligned weight bytes (as from an mmap at an odd offset).
                let mut shifted = vec![0u8; w.len() + 1];
                shifted[1..].copy_from_slice(&w);
                assert_eq!(vec_dot(&shifted[1..], &x).to_bits(), r.to_bits());
            }
        }
    }

    #[test]
    fn known_answer_vectors_from_numpy() {
        for (seed, n, qhash, dqhash) in crate::quant::tests_util::GGUF_F16 {
            let x = crate::quant::tests_util::known_input(seed, n);
            let mut b = vec![0u8; n * 2];
            quantize_row(&x, &mut b);
            assert_eq!(
                crate::quant::tests_util::fnv1a(&b),
                qhash,
                "seed {seed} n {n}"
            );
            let mut y = vec![0f32; n];
            dequantize_row(&b, &mut y);
            let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(
                crate::quant::tests_util::fnv1a(&yb),
                dqhash,
                "seed {seed} n {n}"
            );
        }
    }

    #[test]
    fn dot_small_known() {
        // 1*1 + 2*0.5 + (-3)*2 = -4, all exact in f16 and f32.
        let mut w = vec![0u8; 6];
        quantize_row(&[1.0, 2.0, -3.0], &mut w);
        assert_eq!(vec_dot(&w, &[1.0, 0.5, 2.0]), -4.0);
        assert_eq!(vec_dot_scalar(&w, &[1.0, 0.5, 2.0]), -4.0);
        assert_eq!(vec_dot(&[], &[]), 0.0);
    }
}
