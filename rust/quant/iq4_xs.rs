//! IQ4_XS: 256 weights per 136-byte super-block: f16 scale `d`, the 6-bit scales of its eight
//! 32-weight blocks (`scales_h`: bits 4..6 of block `ib` at bits `2 ib` of a u16 LE;
//! `scales_l`: bits 0..4, block `ib` in nibble `ib % 2` of byte `ib / 2`), then 128 bytes of
//! 4-bit indices, each block in Q4_0's nibble layout. Value = `d * (ls - 32) * KVALUES[index]`.
//! Multiplied with Q8_K activations.

use super::block::{i8_bytes, Family, Pod, Scale};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::dispatch;
use super::fp16::F16;
use super::iq4::{self, Iq4Out, KVALUES};
use super::kquant_dot::{k8_aux, k8_aux_fits, K8Aux};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::kquant_dot::{row_xn_k8, GroupK8};
use super::q4_0::combine;
use super::q8_k::{BlockQ8K, QK_K};
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIq4Xs {
    pub d: F16,
    pub scales_h: [u8; 2],
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Xs>() == 136);
// SAFETY: byte arrays and a Pod scale (alignment 1), no padding.
unsafe impl Pod for BlockIq4Xs {}

impl BlockIq4Xs {
    /// The signed scale `ls - 32` (-32..=31) of block `ib`.
    #[inline(always)]
    fn scale(&self, ib: usize) -> i32 {
        let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
        let hi = (u16::from_le_bytes(self.scales_h) >> (2 * ib)) & 3;
        (lo as i32 | (hi as i32) << 4) - 32
    }

    /// The 16 index bytes of block `ib`.
    #[inline(always)]
    fn block_qs(&self, ib: usize) -> &[u8; 16] {
        simd::arr::<16>(&self.qs, 16 * ib)
    }
}

impl Family for BlockIq4Xs {
    const QK: usize = QK_K;
    type Act = BlockQ8K;
    type Aux = K8Aux;

    /// llama.cpp's `quantize_iq4_xs` without importance weights: the impl function on one
    /// super-block.
    fn quantize(x: &[f32], out: &mut Self) {
        iq4::quantize_impl(
            x,
            Iq4Out {
                d: &mut out.d,
                qs: &mut out.qs,
                scales_h: &mut out.scales_h,
                scales_l: &mut out.scales_l,
            },
        );
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        for ib in 0..QK_K / 32 {
            let dl = d * self.scale(ib) as f32;
            let qs = self.block_qs(ib);
            for j in 0..16 {
                y[32 * ib + j] = dl * KVALUES[(qs[j] & 0x0f) as usize] as f32;
                y[32 * ib + 16 + j] = dl * KVALUES[(qs[j] >> 4) as usize] as f32;
            }
        }
    }

    /// Per super-block the exact `isum = sum_ib (ls_ib - 32) * sum_j KVALUES[q_j] * y_j`
    /// (|.| <= 8 * 32 * 32 * 127 * 128 < 2^28), `acc[b % 8] += (d_w * d_x) * isum`, fixed
    /// reduction.
    fn dot_scalar(w: &[Self], y: &[BlockQ8K]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let qs = wb.block_qs(ib);
                let ys = &yb.qs[32 * ib..32 * ib + 32];
                let mut s = 0i32;
                for j in 0..16 {
                    s += KVALUES[(qs[j] & 0x0f) as usize] as i32 * ys[j] as i32;
                    s += KVALUES[(qs[j] >> 4) as usize] as i32 * ys[16 + j] as i32;
                }
                isum += wb.scale(ib) * s;
            }
            acc[b % BLOCK_LANES] += (wb.d.get() * yb.d.get()) * isum as f32;
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| {
            let mut isum = 0i32;
            for ib in 0..QK_K / 32 {
                let wv = iq4::lookup_portable(w[b].block_qs(ib)).cast::<i16>();
                let yv = i8x32::from_slice(&y[b].qs[32 * ib..]).cast::<i16>();
                // |products| <= 127 * 128: exact in i16, summed in i32.
                isum += w[b].scale(ib) * (wv * yv).cast::<i32>().reduce_sum();
            }
            isum
        }));
        let dw = F16::lanes_portable(std::array::from_fn(|b| w[b].d));
        let dx = f32x8::from_array(std::array::from_fn(|b| y[b].d.get()));
        *acc += combine(dw, dx, isum);
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            let ys = i8_bytes(&y[b].qs);
            let mut s = _mm256_setzero_si256();
            for ib in 0..QK_K / 32 {
                let wv = iq4::x86::lookup_avx2(w[b].block_qs(ib));
                let yv = load32(simd::arr::<32>(ys, 32 * ib));
                // Pair sums (< 2^15) times the block scale (|.| <= 32), summed in i32.
                let ls = _mm256_set1_epi16(w[b].scale(ib) as i16);
                let p = _mm256_madd_epi16(iq4::x86::mul_pairs_avx2(wv, yv), ls);
                s = _mm256_add_epi32(s, p);
            }
            *vb = s;
        }
        let isum = hsum8_epi32(v);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dx = f32x8::from_array(std::array::from_fn(|b| y[b].d.get()));
        *acc += combine(dw, dx, isum);
    }

    /// Two blocks per 512-bit vector: the biased table lookup and `vpdpbusd`
    /// (`iq4::x86::dot_biased_avx512`), each 256-bit half times its block scale.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8K]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8K; BLOCK_LANES] = y.try_into().unwrap();
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            let ys = i8_bytes(&y[b].qs);
            let mut s = _mm512_setzero_si512();
            for k in 0..QK_K / 64 {
                let (i0, i1) = (2 * k, 2 * k + 1);
                let wu = iq4::x86::lookup2_biased_avx512(w[b].block_qs(i0), w[b].block_qs(i1));
                let yv = _mm512_loadu_si512(simd::arr::<64>(ys, 64 * k).as_ptr().cast());
                let ls = _mm512_inserti64x4::<1>(
                    _mm512_set1_epi32(w[b].scale(i0)),
                    _mm256_set1_epi32(w[b].scale(i1)),
                );
                let p = iq4::x86::dot_biased_avx512(wu, yv);
                s = _mm512_add_epi32(s, _mm512_mullo_epi32(p, ls));
            }
            *vb = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
        }
        let isum = hsum8_epi32(v);
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dx = f32x8::from_array(std::array::from_fn(|b| y[b].d.get()));
        *acc += combine(dw, dx, isum);
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8K]) -> Option<K8Aux> {
        Some(k8_aux(y))
    }

    fn aux_fits(aux: &K8Aux, y: &[BlockQ8K]) -> bool {
        k8_aux_fits(aux, y)
    }

    /// [`GroupK8::group_xn`]'s kernel for several rows; one row (generation) takes the
    /// single-row kernel, which needs no widening to i16 and is faster alone.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&K8Aux; N]) -> [f32; N] {
        if N == 1 {
            return [dispatch::dot_avx2(w, aux[0].row(w.len())); N];
        }
        row_xn_k8::<Self, N, false>(w, aux)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&K8Aux; N]) -> [f32; N] {
        if N == 1 {
            return [dispatch::dot_avx512(w, aux[0].row(w.len())); N];
        }
        row_xn_k8::<Self, N, true>(w, aux)
    }
}

/// The multi-row kernel's group: per weight block and 32-weight sub-block, the table values
/// times the sub-block scale as i16 (at most 127 * 32 = 4064: exact), made once and met by
/// every activation row's quants widened to i16, `madd` (AVX2) or `vpdpwssd` (AVX-512) into
/// i32 (pairs at most 2 * 4064 * 128; the whole `isum` within [`Family::dot_scalar`]'s
/// bound). Same integer, same float step as the single-row kernels.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl GroupK8 for BlockIq4Xs {
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const WIDE: bool>(
        w: &[Self; BLOCK_LANES],
        ys: [&[BlockQ8K; BLOCK_LANES]; N],
        acc: &mut [f32x8; N],
    ) {
        use simd::x86::*;
        let mut v = [[_mm256_setzero_si256(); BLOCK_LANES]; N];
        // Plain loops, no closures: a closure is not built with the caller's target features
        // unless inlined.
        for b in 0..BLOCK_LANES {
            simd::prefetch_block(&w[b]);
            if WIDE {
                let mut s = [_mm512_setzero_si512(); N];
                for ib in 0..QK_K / 32 {
                    let wv = iq4::x86::lookup_avx2(w[b].block_qs(ib));
                    let ls = _mm512_set1_epi16(w[b].scale(ib) as i16);
                    let wv = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(wv), ls);
                    for n in 0..N {
                        let y = load32(simd::arr(i8_bytes(&ys[n][b].qs), 32 * ib));
                        s[n] = _mm512_dpwssd_epi32(s[n], wv, _mm512_cvtepi8_epi16(y));
                    }
                }
                for n in 0..N {
                    v[n][b] = _mm256_add_epi32(
                        _mm512_castsi512_si256(s[n]),
                        _mm512_extracti64x4_epi64::<1>(s[n]),
                    );
                }
            } else {
                let mut s = [_mm256_setzero_si256(); N];
                for ib in 0..QK_K / 32 {
                    let wv = iq4::x86::lookup_avx2(w[b].block_qs(ib));
                    let ls = _mm256_set1_epi16(w[b].scale(ib) as i16);
                    let lo =
                        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv)), ls);
                    let hi = _mm256_mullo_epi16(
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(wv)),
                        ls,
                    );
                    for n in 0..N {
                        let y = i8_bytes(&ys[n][b].qs);
                        let y0 = _mm256_cvtepi8_epi16(load16(simd::arr(y, 32 * ib)));
                        let y1 = _mm256_cvtepi8_epi16(load16(simd::arr(y, 32 * ib + 16)));
                        let p =
                            _mm256_add_epi32(_mm256_madd_epi16(lo, y0), _mm256_madd_epi16(hi, y1));
                        s[n] = _mm256_add_epi32(s[n], p);
                    }
                }
                for n in 0..N {
                    v[n][b] = s[n];
                }
            }
        }
        let dw = F16::lanes_avx2(std::array::from_fn(|b| w[b].d));
        for n in 0..N {
            let dx = f32x8::from_array(std::array::from_fn(|b| ys[n][b].d.get()));
            acc[n] += combine(dw, dx, hsum8_epi32(v[n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp16::read_f16;
    use crate::quant::tests_util::{
        check_block_dot_paths, check_extreme_blocks, finite_half, known_input,
    };
    use crate::quant::{dispatch, view, view_mut};

    fn quantize(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK_K * 136];
        dispatch::quantize::<BlockIq4Xs>(x, view_mut(&mut out));
        out
    }

    fn dequantize(b: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; b.len() / 136 * QK_K];
        dispatch::dequantize::<BlockIq4Xs>(view(b), &mut out);
        out
    }

    #[test]
    fn scales_unpack_as_ggml() {
        let mut b = BlockIq4Xs {
            d: F16([0; 2]),
            scales_h: 0b11_10_01_00_11_10_01_00u16.to_le_bytes(),
            scales_l: [0x10, 0x32, 0x54, 0xf6],
            qs: [0; 128],
        };
        let want = [0, 17, 34, 51, 4, 21, 38, 63].map(|ls: i32| ls - 32);
        let got: Vec<i32> = (0..8).map(|ib| b.scale(ib)).collect();
        assert_eq!(got, want);
        b.scales_h = [0xff, 0xff];
        b.scales_l = [0xff; 4];
        assert!((0..8).all(|ib| b.scale(ib) == 31));
    }

    #[test]
    fn table_values_come_back_exactly() {
        // Block ib holds table values times 2^-(ib % 4) / 8, -127 among them: each block's
        // fit is exact, the super-block scale is -1/256 and the block scales -32 .. -4 (all
        // exact), so every value comes back, and the dot product with all-ones activations
        // (d = 1) is their sum.
        let idx = |i: usize| (i * 5 + i / 32) % 16;
        let x: Vec<f32> = (0..256)
            .map(|i| KVALUES[idx(i)] as f32 * 2f32.powi(-((i / 32 % 4) as i32)) / 8.0)
            .collect();
        let b = quantize(&x);
        assert_eq!(read_f16(&b), -1.0 / 256.0);
        assert_eq!(dequantize(&b), x);
        let ones = BlockQ8K {
            d: crate::quant::fp32::F32(1f32.to_le_bytes()),
            qs: [1; 256],
            bsums: [16i16.to_le_bytes(); 16],
        };
        let wb: &[BlockIq4Xs] = view(&b);
        let want: f32 = x.iter().sum();
        assert_eq!(BlockIq4Xs::dot_scalar(wb, &[ones]), want);
        assert_eq!(dispatch::dot(wb, &[ones]), want);
    }

    #[test]
    fn edge_blocks() {
        let b = quantize(&[0.0; 256]);
        // d = -0/32 = -0; every block scale 0 (ls = 32), indices 8.
        assert_eq!(&b[..2], &[0x00, 0x80]);
        assert_eq!(&b[2..8], &[0xaa, 0xaa, 0, 0, 0, 0]);
        assert!(b[8..].iter().all(|&q| q == 0x88));
        assert!(dequantize(&b).iter().all(|&v| v == 0.0));
        let y = dequantize(&quantize(&[-1.5; 256]));
        assert!(y.iter().all(|&v| (v + 1.5).abs() < 0.05), "{y:?}");
        for scale in [1e-30f32, 1e-40, 1e30, 3e38, 4000.0] {
            let x: Vec<f32> = (0..256).map(|i| (i as f32 - 127.5) * scale).collect();
            let _ = dequantize(&quantize(&x));
        }
        let mut x = [1.0f32; 256];
        x[3] = f32::NAN;
        let _ = dequantize(&quantize(&x));
        x[3] = f32::INFINITY;
        x[4] = f32::NEG_INFINITY;
        let _ = dequantize(&quantize(&x));
        let x = known_input(1001, 256 * 16);
        assert!(dequantize(&quantize(&x)).iter().all(|v| !v.is_nan()));
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockIq4Xs>(|b, rng| b.d = finite_half(rng));
        check_extreme_blocks::<BlockIq4Xs>(|b, h| b.d = F16(h.to_le_bytes()));
    }

    #[test]
    fn multi_row_equals_single_row_exactly() {
        crate::quant::kquant_dot::check_multi_row_q8k::<BlockIq4Xs>(
            crate::quant::GgmlType::IQ4_XS,
            |b, rng| b.d = finite_half(rng),
        );
    }
}
