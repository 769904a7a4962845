//! Q4_1: 32 weights per 20-byte block: f16 scale `d`, f16 minimum `m`, then 16 bytes of
//! nibbles laid out as in Q4_0. Value = `q * d + m`.

use super::block::{i8_bytes, Family, Pod, Scale};
use super::fp16::F16;
use super::q8_0::BlockQ8_0;
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;

/// `S` is the scale type: [`F16`] today, `F32` in pre-GGUF files (`f32_scale.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1<S = F16> {
    pub d: S,
    pub m: S,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
// SAFETY: byte arrays and Pod scales (alignment 1), no padding.
unsafe impl<S: Scale> Pod for BlockQ4_1<S> {}

/// The float half of a group, shared by every level.
#[inline(always)]
pub(crate) fn combine(dw: f32x8, mw: f32x8, dx: f32x8, isum: i32x8, ysum: i32x8) -> f32x8 {
    (dw * dx) * isum.cast::<f32>() + mw * (dx * ysum.cast::<f32>())
}

impl<S: Scale> Family for BlockQ4_1<S> {
    const QK: usize = QK;
    type Act = BlockQ8_0;
    type Aux = ();

    /// gguf's `Q4_1.quantize_blocks`, step by step in f32.
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK] = x.try_into().unwrap();
        let (min, max) = simd::np_min_max(x);
        let d = (max - min) / 15.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        // trunc((x - min)*id + 0.5), numpy's uint8 cast, clip to 15.
        let q = |k: usize| {
            let v = (f32x8::from_slice(&x[8 * k..]) - f32x8::splat(min)) * f32x8::splat(id)
                + f32x8::splat(0.5);
            simd::np_trunc_u8_x8(v).simd_min(u8x8::splat(15))
        };
        out.d = S::store(d);
        out.m = S::store(min);
        for k in 0..2 {
            let packed = q(k) | (q(k + 2) << 4);
            out.qs[8 * k..8 * k + 8].copy_from_slice(packed.as_array());
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.get(), self.m.get());
        for j in 0..QK / 2 {
            y[j] = d * (self.qs[j] & 0x0f) as f32 + m;
            y[j + QK / 2] = d * (self.qs[j] >> 4) as f32 + m;
        }
    }

    /// Per block the exact sums `isum = sum q_w * q_x` and `ysum = sum q_x`, then
    /// `acc[b % 8] += (d_w * d_x) * isum + m_w * (d_x * ysum)`, fixed reduction. The second
    /// term is llama.cpp's `m * s` of block_q8_1, with `s` computed here from the q8_0 block.
    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let (mut isum, mut ysum) = (0i32, 0i32);
            for j in 0..QK / 2 {
                let (y0, y1) = (yb.qs[j] as i32, yb.qs[QK / 2 + j] as i32);
                isum += (wb.qs[j] & 0x0f) as i32 * y0 + (wb.qs[j] >> 4) as i32 * y1;
                ysum += y0 + y1;
            }
            let (dw, mw, dx) = (wb.d.get(), wb.m.get(), yb.d.get());
            acc[b % BLOCK_LANES] += (dw * dx) * isum as f32 + mw * (dx * ysum as f32);
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        // Fixed-size views: one length check here, none per block.
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let mut isum = [0i32; BLOCK_LANES];
        let mut ysum = [0i32; BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let qs = u8x16::from_array(w[b].qs);
            let y0 = i8x16::from_slice(&y[b].qs[..16]).cast::<i16>();
            let y1 = i8x16::from_slice(&y[b].qs[16..]).cast::<i16>();
            let lo = (qs & u8x16::splat(0x0f)).cast::<i16>();
            let hi = (qs >> 4).cast::<i16>();
            // |products| <= 15 * 128, so the i16 sums of two cannot overflow.
            isum[b] = (lo * y0 + hi * y1).cast::<i32>().reduce_sum();
            ysum[b] = (y0 + y1).cast::<i32>().reduce_sum();
        }
        let dw = S::lanes_portable(std::array::from_fn(|b| w[b].d));
        let mw = S::lanes_portable(std::array::from_fn(|b| w[b].m));
        let dx = F16::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, mw, dx, i32x8::from_array(isum), i32x8::from_array(ysum));
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let m4 = _mm_set1_epi8(0x0f);
        let one8 = _mm256_set1_epi8(1);
        let ones = _mm256_set1_epi16(1);
        let mut vq = [_mm256_setzero_si256(); BLOCK_LANES];
        let mut vy = [_mm256_setzero_si256(); BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let qs = load16(&w[b].qs);
            let lo = _mm_and_si128(qs, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
            let nib = _mm256_set_m128i(hi, lo);
            let yv = load32(i8_bytes(&y[b].qs));
            // Nibbles are the unsigned operand: exact for every y, no saturation.
            vq[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, yv), ones);
            vy[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(one8, yv), ones);
        }
        let isum = hsum8_epi32(vq);
        let ysum = hsum8_epi32(vy);
        let dw = S::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let mw = S::lanes_avx2(std::array::from_fn(|b| w[b].m));
        let dx = F16::lanes_avx2(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, mw, dx, isum, ysum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp16::read_f16;
    use crate::quant::tests_util::{
        byte_shims, check_block_dot_paths, finite_half, fnv1a, known_input, GGUF_Q4_1,
    };
    use crate::quant::{f32_to_f16_bits, fp32::F32};

    byte_shims!(BlockQ4_1, [u8], crate::quant::tests_util::q8s);

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
        // x = 0, 1, ..., 31 (shifted by -1): min = -1, max = 30, d = 31/15,
        // q = trunc((x + 1) * 15/31 + 0.5).
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 1.0).collect();
        let b = quantize(&x);
        let d = 31.0f32 / 15.0;
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), f32_to_f16_bits(d));
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0xbc00); // -1.0
        let id = 1.0 / d;
        let q: Vec<u8> = x
            .iter()
            .map(|v| (((v + 1.0) * id + 0.5) as u8).min(15))
            .collect();
        assert_eq!(q[0], 0);
        assert_eq!(q[31], 15);
        for j in 0..16 {
            assert_eq!(b[4 + j], q[j] | (q[j + 16] << 4), "byte {j}");
        }
        let y = dequantize(&b);
        let d16 = read_f16(&b);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[31], d16 * 15.0 + -1.0);
        for (a, r) in x.iter().zip(&y) {
            assert!((a - r).abs() <= d / 2.0 + 0.01, "{a} vs {r}");
        }
    }

    #[test]
    fn known_answer_vectors_from_gguf() {
        let b = quantize(&known_input(1, 32));
        assert_eq!(
            b,
            [
                0x5d, 0x25, 0x15, 0xb0, 0x6c, 0x66, 0x06, 0x66, 0xc6, 0x66, 0x66, 0x6d, 0x66, 0x66,
                0x66, 0x66, 0x66, 0xf6, 0x64, 0xd6,
            ]
        );
        for (seed, n, qhash, dqhash) in GGUF_Q4_1 {
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
        // Zeros: d = 0, m = 0, q = 0.
        let b = quantize(&[0.0; 32]);
        assert!(b.iter().all(|&v| v == 0));
        // Constant: d = 0, m = c, every value comes back exactly.
        let b = quantize(&[-1.5; 32]);
        assert_eq!(read_f16(&b), 0.0);
        assert_eq!(read_f16(&b[2..]), -1.5);
        assert!(dequantize(&b).iter().all(|&v| v == -1.5));
        // Negative-dominated block: the minimum is stored and comes back exactly.
        let mut x = [0.25f32; 32];
        x[11] = -6.0;
        let y = dequantize(&quantize(&x));
        assert_eq!(y[11], -6.0);
        // Tiny and huge magnitudes, NaN and infinities: no panic.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e-30).collect();
        assert!(dequantize(&quantize(&x)).iter().all(|v| v.is_finite()));
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e30).collect();
        let _ = dequantize(&quantize(&x));
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1800.0).collect();
        assert!(dequantize(&quantize(&x)).iter().all(|v| v.is_finite()));
        let mut x = [1.0f32; 32];
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[3] = f32::INFINITY;
        x[4] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
    }

    #[test]
    fn round_trip_error_is_bounded() {
        let x = known_input(5, 32 * 64);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let max = xb.iter().fold(f32::MIN, |m, &v| m.max(v));
            let min = xb.iter().fold(f32::MAX, |m, &v| m.min(v));
            let d = (max - min) / 15.0;
            for (a, r) in xb.iter().zip(yb) {
                // Half a step, plus f16 rounding of d and m.
                let tol = d * 0.51 + min.abs().max(max.abs()) * 2e-3 + 16.0 * 3e-8;
                assert!((a - r).abs() <= tol, "{a} vs {r}, d {d}");
            }
        }
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ4_1>(|b, rng| {
            (b.d, b.m) = (finite_half(rng), finite_half(rng))
        });
        let wide = |h: F16| F32(h.get().to_le_bytes());
        check_block_dot_paths::<crate::quant::f32_scale::BlockQ4_1F32>(|b, rng| {
            (b.d, b.m) = (wide(finite_half(rng)), wide(finite_half(rng)))
        });
    }
}
