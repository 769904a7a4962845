//! Q5_1: 32 weights per 24-byte block: f16 scale `d`, f16 minimum `m`, the fifth bit plane
//! `qh` (u32 LE), then 16 bytes of nibbles (`q5_bits.rs`). Value = `q * d + m`, `q` in 0..=31.

use super::block::{bytes_of, i8_bytes, Family, Pod, Scale};
use super::fp16::F16;
use super::q4_0::{self, GroupParts, NibbleGroup, Q4Aux, LANE_BLOCK};
use super::q4_1::combine;
use super::q5_bits;
use super::q8_0::BlockQ8_0;
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    pub d: F16,
    pub m: F16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
// SAFETY: byte arrays and Pod scales (alignment 1), no padding.
unsafe impl Pod for BlockQ5_1 {}

impl Family for BlockQ5_1 {
    const QK: usize = QK;
    type Act = BlockQ8_0;
    type Aux = Q4Aux;

    /// gguf's `Q5_1.quantize_blocks`, step by step in f32. It gives llama.cpp's
    /// `quantize_row_q5_1_ref` bytes for every block without NaN (the C min/max skip NaN,
    /// numpy's propagate it).
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK] = x.try_into().unwrap();
        let (min, max) = simd::np_min_max(x);
        let d = (max - min) / 31.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        // trunc((x - min)*id + 0.5), numpy's uint8 cast, clip to 31.
        let q = std::array::from_fn(|k| {
            let v = (f32x8::from_slice(&x[8 * k..]) - f32x8::splat(min)) * f32x8::splat(id)
                + f32x8::splat(0.5);
            simd::np_trunc_u8_x8(v).simd_min(u8x8::splat(31))
        });
        out.d = F16::store(d);
        out.m = F16::store(min);
        (out.qs, out.qh) = q5_bits::pack(q);
    }

    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.get(), self.m.get());
        for (j, o) in y.iter_mut().enumerate().take(QK) {
            *o = d * q5_bits::q5_scalar(&self.qs, &self.qh, j) as f32 + m;
        }
    }

    /// Per block the exact sums `isum = sum q_w * q_x` (|.| <= 32 * 31 * 128) and `ysum =
    /// sum q_x`, then `acc[b % 8] += (d_w * d_x) * isum + m_w * (d_x * ysum)` (Q4_1's
    /// combination), fixed reduction.
    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let (mut isum, mut ysum) = (0i32, 0i32);
            for j in 0..QK {
                let yj = yb.qs[j] as i32;
                isum += q5_bits::q5_scalar(&wb.qs, &wb.qh, j) as i32 * yj;
                ysum += yj;
            }
            let (dw, mw, dx) = (wb.d.get(), wb.m.get(), yb.d.get());
            acc[b % BLOCK_LANES] += (dw * dx) * isum as f32 + mw * (dx * ysum as f32);
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let mut isum = [0i32; BLOCK_LANES];
        let mut ysum = [0i32; BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let q = q5_bits::unpack_portable(&w[b].qs, &w[b].qh).cast::<i16>();
            let yv = i8x32::from_array(y[b].qs).cast::<i16>();
            // |products| <= 31 * 128: exact in i16, summed in i32.
            isum[b] = (q * yv).cast::<i32>().reduce_sum();
            ysum[b] = yv.cast::<i32>().reduce_sum();
        }
        let dw = F16::lanes_portable(std::array::from_fn(|b| w[b].d));
        let mw = F16::lanes_portable(std::array::from_fn(|b| w[b].m));
        let dx = F16::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, mw, dx, i32x8::from_array(isum), i32x8::from_array(ysum));
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let one8 = _mm256_set1_epi8(1);
        let ones = _mm256_set1_epi16(1);
        let mut vq = [_mm256_setzero_si256(); BLOCK_LANES];
        let mut vy = [_mm256_setzero_si256(); BLOCK_LANES];
        for b in 0..BLOCK_LANES {
            let q = q5_bits::x86::unpack_avx2(&w[b].qs, &w[b].qh);
            let yv = load32(i8_bytes(&y[b].qs));
            // q (0..=31) is the unsigned operand: exact for every y, pair sums <= 2 * 31 * 128.
            vq[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yv), ones);
            vy[b] = _mm256_madd_epi16(_mm256_maddubs_epi16(one8, yv), ones);
        }
        let isum = hsum8_epi32(vq);
        let ysum = hsum8_epi32(vy);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let mw = F16::lanes_avx2(std::array::from_fn(|b| w[b].m));
        let dx = F16::lanes_avx2(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, mw, dx, isum, ysum);
    }

    /// Two blocks per 512-bit vector: `vpdpbusd` of q (0..=31, unsigned) with y, and of ones
    /// with y for the activation sums (exact in i32).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let one8 = _mm512_set1_epi8(1);
        let zero = _mm512_setzero_si512();
        let mut zq = [zero; BLOCK_LANES / 2];
        let mut zy = [zero; BLOCK_LANES / 2];
        for k in 0..BLOCK_LANES / 2 {
            let (b0, b1) = (2 * k, 2 * k + 1);
            let q = q5_bits::x86::unpack2_avx512(&w[b0].qs, &w[b0].qh, &w[b1].qs, &w[b1].qh);
            let yv = load32x2(i8_bytes(&y[b0].qs), i8_bytes(&y[b1].qs));
            zq[k] = _mm512_dpbusd_epi32(zero, q, yv);
            zy[k] = _mm512_dpbusd_epi32(zero, one8, yv);
        }
        let isum = hsum_pairs_epi32(zq);
        let ysum = hsum_pairs_epi32(zy);
        let stride = std::mem::size_of::<Self>();
        let dw = F16::lanes_strided_avx512(bytes_of(w), stride);
        let mw = F16::lanes_strided_avx512(&bytes_of(w)[2..], stride);
        let dx = F16::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8_0>());
        *acc += combine(dw, mw, dx, isum, ysum);
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8_0]) -> Option<Q4Aux> {
        Some(q4_0::x4_aux(y))
    }

    fn aux_fits(aux: &Q4Aux, y: &[BlockQ8_0]) -> bool {
        q4_0::x4_aux_fits(aux, y)
    }

    /// Q4_0's multi-row driver and activation layout (`NibbleGroup` below).
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
/// `isum = sum(q * y)` from `q5_bits::group_sums_x86`, `ysum = s8 / 8` (exact: `s8` is
/// `8 * sum(y)`), then the single-row kernel's `combine`.
impl NibbleGroup for BlockQ5_1 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        (yt, dx, s8): GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    ) {
        let qs = std::array::from_fn(|b| &w[b].qs);
        let qh = std::array::from_fn(|b| &w[b].qh);
        let isum = q5_bits::group_sums_x86::<N, VNNI>(qs, qh, yt);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[LANE_BLOCK[b]].d));
        let mw = F16::lanes_avx2(std::array::from_fn(|b| w[LANE_BLOCK[b]].m));
        for n in 0..N {
            let ysum = i32x8::from_array(*s8[n]) / i32x8::splat(8);
            acc[n] += combine(dw, mw, f32x8::from_array(*dx[n]), isum[n], ysum);
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

    byte_shims!(BlockQ5_1, [u8], crate::quant::tests_util::q8s);

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
        // x = 2j - 3: min = -3, max = 59, d = 62/31 = 2, q = trunc((x + 3) / 2 + 0.5) = j.
        let x: Vec<f32> = (0..32).map(|j| 2.0 * j as f32 - 3.0).collect();
        let b = quantize(&x);
        assert_eq!(read_f16(&b), 2.0);
        assert_eq!(read_f16(&b[2..]), -3.0);
        // Bit 4 of j is set for j = 16..32.
        assert_eq!(&b[4..8], &[0x00, 0x00, 0xff, 0xff]);
        for j in 0..16 {
            assert_eq!(b[8 + j], j as u8 | ((j as u8 + 16) & 15) << 4, "byte {j}");
        }
        assert_eq!(dequantize(&b), x);
        // Against an all-ones q8_0 block with d = 1: sum x exactly.
        let mut yb = vec![0u8; 34];
        yb[..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        yb[2..].fill(1);
        let want: f32 = x.iter().sum();
        assert_eq!(vec_dot_scalar(&b, &yb), want);
        assert_eq!(vec_dot(&b, &yb), want);
    }

    #[test]
    fn edge_blocks() {
        assert!(quantize(&[0.0; 32]).iter().all(|&v| v == 0));
        let b = quantize(&[-1.5; 32]);
        assert_eq!(read_f16(&b), 0.0);
        assert!(dequantize(&b).iter().all(|&v| v == -1.5));
        for scale in [1e-30f32, 1e-40, 1e30, 3e38, 1800.0] {
            let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * scale).collect();
            let _ = dequantize(&quantize(&x));
        }
        let mut x = [1.0f32; 32];
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[3] = f32::INFINITY;
        x[4] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
        let x = known_input(1002, 32 * 50);
        assert_eq!(dequantize(&quantize(&x)).len(), x.len());
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ5_1>(|b, rng| {
            (b.d, b.m) = (finite_half(rng), finite_half(rng))
        });
        check_extreme_blocks::<BlockQ5_1>(|b, h| {
            (b.d, b.m) = (F16(h.to_le_bytes()), F16(h.to_le_bytes()));
        });
    }

    #[test]
    fn multi_row_equals_single_row_exactly() {
        check_multi_row_paths::<BlockQ5_1>(|b, rng| {
            (b.d, b.m) = (finite_half(rng), finite_half(rng))
        });
    }
}
