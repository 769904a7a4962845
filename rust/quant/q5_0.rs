//! Q5_0: 32 weights per 22-byte block: f16 scale `d`, the fifth bit plane `qh` (u32 LE), then
//! 16 bytes of nibbles (`q5_bits.rs`). Value = `(q - 16) * d`, `q` in 0..=31.

use super::block::{bytes_of, i8_bytes, Family, Pod, Scale};
use super::fp16::F16;
use super::q4_0::{self, combine, GroupParts, NibbleGroup, Q4Aux, LANE_BLOCK};
use super::q5_bits;
use super::q8_0::BlockQ8_0;
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    pub d: F16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
// SAFETY: byte arrays and a Pod scale (alignment 1), no padding.
unsafe impl Pod for BlockQ5_0 {}

impl Family for BlockQ5_0 {
    const QK: usize = QK;
    type Act = BlockQ8_0;
    type Aux = Q4Aux;

    /// gguf's `Q5_0.quantize_blocks`, step by step in f32. It gives llama.cpp's
    /// `quantize_row_q5_0_ref` bytes for every block without NaN (the C code skips NaN when
    /// looking for the largest magnitude, numpy's argmax picks it).
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK] = x.try_into().unwrap();
        let d = x[simd::np_abs_argmax(x)] / -16.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        // trunc(x*id + 16.5), numpy's uint8 cast, clip to 31 (finite input gives 0..=32).
        let q = std::array::from_fn(|k| {
            let v = f32x8::from_slice(&x[8 * k..]) * f32x8::splat(id) + f32x8::splat(16.5);
            simd::np_trunc_u8_x8(v).simd_min(u8x8::splat(31))
        });
        out.d = F16::store(d);
        (out.qs, out.qh) = q5_bits::pack(q);
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        for (j, o) in y.iter_mut().enumerate().take(QK) {
            *o = d * (q5_bits::q5_scalar(&self.qs, &self.qh, j) as i32 - 16) as f32;
        }
    }

    /// Exact integer sum per block (|.| <= 32 * 16 * 128), `acc[b % 8] += (d_w * d_x) * isum`,
    /// fixed reduction.
    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let mut isum = 0i32;
            for j in 0..QK {
                let q = q5_bits::q5_scalar(&wb.qs, &wb.qh, j) as i32 - 16;
                isum += q * yb.qs[j] as i32;
            }
            acc[b % BLOCK_LANES] += (wb.d.get() * yb.d.get()) * isum as f32;
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| {
            let q = q5_bits::unpack_portable(&w[b].qs, &w[b].qh).cast::<i16>() - i16x32::splat(16);
            // |products| <= 16 * 128: exact in i16, summed in i32.
            (q * i8x32::from_array(y[b].qs).cast::<i16>())
                .cast::<i32>()
                .reduce_sum()
        }));
        let dw = F16::lanes_portable(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let sixteen = _mm256_set1_epi8(16);
        let ones = _mm256_set1_epi16(1);
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            let q = q5_bits::x86::unpack_avx2(&w[b].qs, &w[b].qh);
            let yv = load32(i8_bytes(&y[b].qs));
            // sum (q - 16) * y = sum q * y - sum 16 * y, with q (0..=31) the unsigned operand
            // of maddubs: exact for every y (-128 too), pair sums at most 2 * 31 * 128.
            let p = _mm256_sub_epi16(
                _mm256_maddubs_epi16(q, yv),
                _mm256_maddubs_epi16(sixteen, yv),
            );
            *vb = _mm256_madd_epi16(p, ones);
        }
        let isum = hsum8_epi32(v);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_avx2(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    /// Two blocks per 512-bit vector: `vpdpbusd` of q (0..=31, unsigned) with y, minus
    /// `16 * y` the same way (exact in i32).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let sixteen = _mm512_set1_epi8(16);
        let zero = _mm512_setzero_si512();
        let mut z = [zero; BLOCK_LANES / 2];
        for (k, zk) in z.iter_mut().enumerate() {
            let (b0, b1) = (2 * k, 2 * k + 1);
            let q = q5_bits::x86::unpack2_avx512(&w[b0].qs, &w[b0].qh, &w[b1].qs, &w[b1].qh);
            let yv = load32x2(i8_bytes(&y[b0].qs), i8_bytes(&y[b1].qs));
            *zk = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(zero, q, yv),
                _mm512_dpbusd_epi32(zero, sixteen, yv),
            );
        }
        let isum = hsum_pairs_epi32(z);
        let dw = F16::lanes_strided_avx512(bytes_of(w), std::mem::size_of::<Self>());
        let dx = F16::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8_0>());
        *acc += combine(dw, dx, isum);
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8_0]) -> Option<Q4Aux> {
        Some(q4_0::x4_aux(y))
    }

    fn aux_fits(aux: &Q4Aux, y: &[BlockQ8_0]) -> bool {
        q4_0::x4_aux_fits(aux, y)
    }

    /// Q4_0's multi-row driver and activation layout, with the fifth bits added in.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&Q4Aux; N]) -> [f32; N] {
        q4_0::row_xn::<Self, N, false>(w, aux)
    }

    /// [`Family::row_xn_avx2`] with `vpdpbusd`.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&Q4Aux; N]) -> [f32; N] {
        q4_0::row_xn::<Self, N, true>(w, aux)
    }
}

/// One group of 8 blocks against `N` activation rows in Q4_0's layout (`q4_0::x4_aux`):
/// `q5_bits::group_sums_x86` gives `sum(q * y)` per block, `- 16 * sum(y)` (= `2 * s8`)
/// makes it the single-row kernel's exact integer; the float steps are its `combine`.
impl NibbleGroup for BlockQ5_0 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        (yt, dx, s8): GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    ) {
        let qs = std::array::from_fn(|b| &w[b].qs);
        let qh = std::array::from_fn(|b| &w[b].qh);
        let s32 = q5_bits::group_sums_x86::<N, VNNI>(qs, qh, yt);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[LANE_BLOCK[b]].d));
        for n in 0..N {
            let isum = s32[n] - i32x8::splat(2) * i32x8::from_array(*s8[n]);
            acc[n] += combine(dw, f32x8::from_array(*dx[n]), isum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp16::read_f16;
    use crate::quant::tests_util::{
        byte_shims, check_block_dot_paths, check_extreme_blocks, check_multi_row_paths,
        finite_half, known_input,
    };

    byte_shims!(BlockQ5_0, [u8], crate::quant::tests_util::q8s);

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
        // x = j - 8: the largest magnitude is 23 (j = 31), so d = -23/16 and
        // q = trunc(x * -16/23 + 16.5), from 22 (x = -8) down to 0 (x = 23).
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 8.0).collect();
        let b = quantize(&x);
        let d = 23.0f32 / -16.0;
        assert_eq!(
            u16::from_le_bytes([b[0], b[1]]),
            crate::quant::f32_to_f16_bits(d)
        );
        let id = 1.0 / d;
        let q: Vec<u8> = x.iter().map(|v| ((v * id + 16.5) as u8).min(31)).collect();
        assert_eq!(q[31], 0);
        assert_eq!(q[8], 16);
        assert_eq!(q[0], 22);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for (j, &qj) in q.iter().enumerate() {
            assert_eq!((qh >> j) & 1, (qj >> 4) as u32, "qh bit {j}");
        }
        for j in 0..16 {
            assert_eq!(b[6 + j], (q[j] & 15) | ((q[j + 16] & 15) << 4), "byte {j}");
        }
        let y = dequantize(&b);
        let d16 = read_f16(&b);
        for j in 0..32 {
            assert_eq!(y[j], d16 * (q[j] as f32 - 16.0));
            assert!((y[j] - x[j]).abs() <= d.abs() * 0.51 + 0.02, "{j}");
        }
        // One more through the dot product: w = that block, y = all-ones q8_0 with d = 1.
        let mut yb = vec![0u8; 34];
        yb[..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        yb[2..].fill(1);
        let isum: i32 = q.iter().map(|&v| v as i32 - 16).sum();
        assert_eq!(vec_dot_scalar(&b, &yb), d16 * isum as f32);
        assert_eq!(vec_dot(&b, &yb), d16 * isum as f32);
    }

    #[test]
    fn edge_blocks() {
        // Zeros: d = 0 / -16 = -0 (as numpy and C), every q = 16.
        let b = quantize(&[0.0; 32]);
        assert_eq!(&b[..6], &[0x00, 0x80, 0xff, 0xff, 0xff, 0xff]);
        assert!(b[6..].iter().all(|&v| v == 0));
        assert!(dequantize(&quantize(&[0.0; 32])).iter().all(|&v| v == 0.0));
        // All equal: the value is the extreme, q = 0 everywhere, exact back.
        let y = dequantize(&quantize(&[-1.5; 32]));
        assert!(y.iter().all(|&v| v == -1.5), "{y:?}");
        let y = dequantize(&quantize(&[2.0; 32]));
        assert!(y.iter().all(|&v| v == 2.0), "{y:?}");
        for scale in [1e-30f32, 1e-40, 1e30, 4000.0] {
            let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * scale).collect();
            let _ = dequantize(&quantize(&x));
        }
        let mut x = [1.0f32; 32];
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[3] = f32::INFINITY;
        x[4] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
        let x = known_input(1003, 32 * 50);
        let y = dequantize(&quantize(&x));
        assert_eq!(y.len(), x.len());
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ5_0>(|b, rng| b.d = finite_half(rng));
        check_extreme_blocks::<BlockQ5_0>(|b, h| b.d = F16(h.to_le_bytes()));
    }

    #[test]
    fn multi_row_equals_single_row_exactly() {
        check_multi_row_paths::<BlockQ5_0>(|b, rng| b.d = finite_half(rng));
    }
}
