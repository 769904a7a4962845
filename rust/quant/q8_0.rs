//! Q8_0: 32 values per 34-byte block: f16 scale `d`, then 32 signed bytes. Value = `q * d`.
//! Also the type activations are prepared as for every quantized weight type.

use super::block::{bytes_of, i8_bytes, view, view_mut, Activation, Family, Pod, Scale};
use super::fp16::F16;
use super::q4_0::{self, GroupParts, NibbleGroup, Q4Aux, LANE_BLOCK};
use super::simd::{self, BLOCK_LANES};
use super::PreparedRow;
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;

/// `S` is the scale type: [`F16`] today, `F32` in pre-GGUF files (`f32_scale.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0<S = F16> {
    pub d: S,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
// SAFETY: byte arrays and a Pod scale (alignment 1), no padding.
unsafe impl<S: Scale> Pod for BlockQ8_0<S> {}

/// The activation blocks of quantized matmul (llama.cpp's choice): block `b` of the row is
/// added into lane `b % 8` of one f32x8, then `simd::reduce8`.
impl Activation for BlockQ8_0 {
    const QK: usize = QK;
    const QUANTIZED: bool = true;
    const CHUNK: usize = BLOCK_LANES;
    const ZERO: BlockQ8_0 = BlockQ8_0 {
        d: F16([0; 2]),
        qs: [0; QK],
    };
    type Acc = f32x8;
    #[inline(always)]
    fn acc_zero() -> f32x8 {
        f32x8::splat(0.0)
    }
    #[inline(always)]
    fn finish(acc: f32x8) -> f32 {
        simd::reduce8(acc.to_array())
    }
    fn prepare(x: &[f32]) -> PreparedRow {
        let mut q = vec![0u8; x.len() / QK * std::mem::size_of::<BlockQ8_0>()];
        super::dispatch::quantize::<BlockQ8_0>(x, view_mut(&mut q));
        PreparedRow::Q8_0(q)
    }
    #[inline(always)]
    fn view(p: &PreparedRow) -> Option<&[BlockQ8_0]> {
        match p {
            PreparedRow::Q8_0(q) => Some(view(q)),
            _ => None,
        }
    }
}

/// The float half of a group, shared by every level so their order cannot drift apart.
#[inline(always)]
fn combine(dw: f32x8, dx: f32x8, isum: i32x8) -> f32x8 {
    (dw * dx) * isum.cast::<f32>()
}

impl<S: Scale> Family for BlockQ8_0<S> {
    const QK: usize = QK;
    type Act = BlockQ8_0;
    type Aux = Q8Aux;
    #[cfg(target_arch = "x86_64")]
    const TILES_AMX: Option<super::block::TilesAmx<Self>> = Some(super::amx::q8_0_tiles::<S>);

    /// gguf's `Q8_0.quantize_blocks`, step by step in f32.
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK] = x.try_into().unwrap();
        // numpy `abs(x).max()`: NaN propagates (we keep the first one).
        let amax = simd::block_abs_max(x)
            .unwrap_or_else(|| x.iter().map(|v| v.abs()).find(|a| a.is_nan()).unwrap());
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.d = S::store(d);
        for k in 0..4 {
            let v = f32x8::from_slice(&x[8 * k..]) * f32x8::splat(id);
            // `astype(np.int8)` keeps the same low byte as the uint8 cast.
            let q = simd::np_trunc_u8_x8(simd::np_roundf_x8(v)).cast::<i8>();
            out.qs[8 * k..8 * k + 8].copy_from_slice(q.as_array());
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        for (o, &q) in y.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    /// Exact integer sum per block, `acc[b % 8] += (d_w * d_x) * isum`, fixed reduction.
    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let mut isum = 0i32;
            for j in 0..QK {
                isum += wb.qs[j] as i32 * yb.qs[j] as i32;
            }
            acc[b % BLOCK_LANES] += (wb.d.get() * yb.d.get()) * isum as f32;
        }
        simd::reduce8(acc)
    }

    #[inline(always)]
    fn chunk_portable(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        // Fixed-size views: one length check here, none per block.
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let isum = i32x8::from_array(std::array::from_fn(|b| {
            // i16 products (|.| <= 128 * 128) summed in i32.
            let p =
                i8x32::from_array(w[b].qs).cast::<i16>() * i8x32::from_array(y[b].qs).cast::<i16>();
            p.cast::<i32>().reduce_sum()
        }));
        let dw = S::lanes_portable(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_portable(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            // Sign-extend to i16 and use madd: exact for every byte pair, -128 * -128
            // included (llama.cpp's abs/sign + maddubs trick is not, for -128).
            let (wq, yq) = (i8_bytes(&w[b].qs), i8_bytes(&y[b].qs));
            let w0 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(wq, 0)));
            let w1 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(wq, 16)));
            let y0 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(yq, 0)));
            let y1 = _mm256_cvtepi8_epi16(load16(simd::arr::<16>(yq, 16)));
            *vb = _mm256_add_epi32(_mm256_madd_epi16(w0, y0), _mm256_madd_epi16(w1, y1));
        }
        let isum = hsum8_epi32(v);
        let dw = S::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_avx2(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    /// Two blocks per 512-bit vector; `vpdpbusd` multiplies unsigned by signed bytes, so the
    /// weights are biased to `w + 128` (0..=255: the sign bit flipped) and `128 * y` taken off
    /// again: `w * y` exactly for every byte pair, -128 on either side included (four products
    /// of at most 255 * 128 per i32 lane, far from overflow).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let bias = _mm512_set1_epi8(-128);
        let zero = _mm512_setzero_si512();
        let mut z = [zero; BLOCK_LANES / 2];
        for (k, zk) in z.iter_mut().enumerate() {
            let (b0, b1) = (2 * k, 2 * k + 1);
            let wv = load32x2(i8_bytes(&w[b0].qs), i8_bytes(&w[b1].qs));
            let yv = load32x2(i8_bytes(&y[b0].qs), i8_bytes(&y[b1].qs));
            let wu = _mm512_xor_si512(wv, bias);
            *zk = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(zero, wu, yv),
                _mm512_dpbusd_epi32(zero, bias, yv),
            );
        }
        let isum = hsum_pairs_epi32(z);
        let dw = S::lanes_strided_avx512(bytes_of(w), std::mem::size_of::<Self>());
        let dx = F16::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8_0>());
        *acc += combine(dw, dx, isum);
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8_0]) -> Option<Q8Aux> {
        Some(rows_aux(y))
    }

    fn aux_fits(aux: &Q8Aux, y: &[BlockQ8_0]) -> bool {
        let groups = y.len().div_ceil(BLOCK_LANES);
        aux.d.len() == groups * BLOCK_LANES && q4_0::x4_aux_fits(&aux.lanes, y)
    }

    /// One weight row against `N` activation rows, in Q4_0's multi-row layout (the driver
    /// and the activations' arrangement are `q4_0`'s): with the sign trick where every
    /// activation quant is above -128 (all that our quantizer writes), else widened to i16.
    /// The AVX-512 build runs this kernel too: there Q8_0 matrices are repacked (`x16.rs`).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&Q8Aux; N]) -> [f32; N] {
        let lanes = aux.map(|a| &a.lanes);
        if aux.iter().all(|a| !a.has_min) {
            q4_0::row_xn::<Self, N, false>(w, lanes)
        } else {
            q4_0::row_xn::<Widened<S>, N, false>(view(bytes_of(w)), lanes)
        }
    }
}

/// Side data of one q8_0 activation row for the multi-row kernels.
pub struct Q8Aux {
    /// Per block: the scale and `128 * sum(q)`, for the repacked kernels (`x16.rs`).
    d: Vec<f32>,
    s128: Vec<i32>,
    /// The quants rearranged for the AVX2 multi-row kernel (`q4_0::x4_aux`).
    lanes: Q4Aux,
    /// Some quant is -128, which the sign trick cannot negate.
    has_min: bool,
}

impl Q8Aux {
    /// Block `b`'s scale and `128 * sum(q)`.
    #[inline(always)]
    pub(crate) fn block(&self, b: usize) -> (f32, i32) {
        (self.d[b], self.s128[b])
    }
}

pub(crate) fn rows_aux(y: &[BlockQ8_0]) -> Q8Aux {
    let padded = y.len().div_ceil(BLOCK_LANES) * BLOCK_LANES;
    let mut d = vec![0f32; padded];
    let mut s128 = vec![0i32; padded];
    for (b, yb) in y.iter().enumerate() {
        d[b] = yb.d.get();
        s128[b] = 128 * yb.qs.iter().map(|&q| q as i32).sum::<i32>();
    }
    let has_min = y.iter().any(|b| b.qs.contains(&i8::MIN));
    Q8Aux {
        d,
        s128,
        lanes: q4_0::x4_aux(y),
        has_min,
    }
}

/// A group's 8 weight vectors in `q4_0::x4_aux`'s order (vector `2k + h`, lane `l` holds
/// weights `16h + 4k .. 16h + 4k + 4` of block `LANE_BLOCK[l]`) and its scales in lane order.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn transposed<S: Scale>(
    w: &[BlockQ8_0<S>; BLOCK_LANES],
) -> ([simd::x86::__m256i; 8], f32x8) {
    let lo = q4_0::transpose_qs(std::array::from_fn(|b| {
        simd::arr::<16>(i8_bytes(&w[b].qs), 0)
    }));
    let hi = q4_0::transpose_qs(std::array::from_fn(|b| {
        simd::arr::<16>(i8_bytes(&w[b].qs), 16)
    }));
    let t = std::array::from_fn(|v| if v % 2 == 0 { lo[v / 2] } else { hi[v / 2] });
    (
        t,
        S::lanes_avx2(std::array::from_fn(|l| w[LANE_BLOCK[l]].d)),
    )
}

/// One group of 8 weight blocks against `N` activation rows with no -128 quant: each
/// vector of weights meets every row while in a register, `|w|` times `y` with `w`'s sign
/// (`maddubs`: pairs of at most 128 * 127, exact in i16), widened and summed in i32 per lane,
/// so each lane ends with its block's exact integer. The float steps are the single-row
/// kernel's (`combine`), so each lane accumulates the bits it would there. (`VNNI` changes
/// nothing: see `row_xn_avx2`.)
impl<S: Scale> NibbleGroup for BlockQ8_0<S> {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        (yt, dx, _): GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    ) {
        use simd::x86::*;
        let ones = _mm256_set1_epi16(1);
        let (t, dw) = transposed(w);
        let mut s32 = [_mm256_setzero_si256(); N];
        for (v, &wv) in t.iter().enumerate() {
            let wa = _mm256_abs_epi8(wv);
            for n in 0..N {
                let y = load32(simd::arr::<32>(yt[n], 32 * v));
                let p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(y, wv));
                s32[n] = _mm256_add_epi32(s32[n], _mm256_madd_epi16(p, ones));
            }
        }
        for n in 0..N {
            acc[n] += combine(dw, f32x8::from_array(*dx[n]), i32x8::from(s32[n]));
        }
    }
}

/// A Q8_0 block met through the exact i16 path: activation rows with a -128 quant (made by
/// hand: our quantizer never writes one).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Widened<S>(BlockQ8_0<S>);
// SAFETY: a transparent wrapper of a Pod block.
unsafe impl<S: Scale> Pod for Widened<S> {}

/// [`BlockQ8_0`]'s group with both sides sign-extended to i16 (`madd`: exact for every byte
/// pair); each i32 lane sums two bytes' products, so the pairs of lanes are added
/// (`hadd`, then a qword permute back to lane order) once per row at the end.
impl<S: Scale> NibbleGroup for Widened<S> {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        (yt, dx, _): GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    ) {
        use simd::x86::*;
        // SAFETY: `Widened` is a transparent wrapper.
        let w = &*(w as *const [Self; BLOCK_LANES] as *const [BlockQ8_0<S>; BLOCK_LANES]);
        let (t, dw) = transposed(w);
        // lo[n]: lanes 0..4 (two i32 per lane), hi[n]: lanes 4..8.
        let (mut lo, mut hi) = ([_mm256_setzero_si256(); N], [_mm256_setzero_si256(); N]);
        for (v, &wv) in t.iter().enumerate() {
            let w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(wv));
            let w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(wv));
            for n in 0..N {
                let y = load32(simd::arr::<32>(yt[n], 32 * v));
                let y0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(y));
                let y1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(y));
                lo[n] = _mm256_add_epi32(lo[n], _mm256_madd_epi16(w0, y0));
                hi[n] = _mm256_add_epi32(hi[n], _mm256_madd_epi16(w1, y1));
            }
        }
        for n in 0..N {
            // hadd: lanes [0, 1, 4, 5 | 2, 3, 6, 7]; the permute puts them in order.
            let h = _mm256_hadd_epi32(lo[n], hi[n]);
            let isum = _mm256_permute4x64_epi64::<0b11_01_10_00>(h);
            acc[n] += combine(dw, f32x8::from_array(*dx[n]), i32x8::from(isum));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f32_to_f16_bits;
    use crate::quant::fp32::F32;
    use crate::quant::simd::{np_roundf, np_trunc_u8};
    use crate::quant::tests_util::{
        byte_shims, check_block_dot_paths, check_extreme_blocks, finite_half, fnv1a, known_input,
        GGUF_Q8_0,
    };
    use crate::quant::{vec_dot_rows, GgmlType, PreparedRow, RowAux};

    byte_shims!(BlockQ8_0, [u8], crate::quant::tests_util::q8s);

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

    /// Every kernel level (AVX-512 where the CPU has it) against the reference on blocks of
    /// extreme quants (-128 on both sides) and extreme scales, f16 and f32.
    #[test]
    fn extreme_blocks_agree_exactly() {
        check_extreme_blocks::<BlockQ8_0>(|b, h| b.d = F16(h.to_le_bytes()));
        check_extreme_blocks::<crate::quant::f32_scale::BlockQ8_0F32>(|b, h| {
            // f32 scales beyond f16's range too: the products may overflow to infinity.
            let v = F16(h.to_le_bytes()).get() * if h & 1 == 0 { 1.0 } else { 1e30 };
            b.d = F32(v.to_le_bytes())
        });
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ8_0>(|b, rng| b.d = finite_half(rng));
        check_block_dot_paths::<crate::quant::f32_scale::BlockQ8_0F32>(|b, rng| {
            b.d = F32(finite_half(rng).get().to_le_bytes())
        });
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
                        let h = (rng.next_u64() as u16 & 0x83ff)
                            | (((rng.next_u64() % 29) as u16 + 1) << 10);
                        blk[..2].copy_from_slice(&h.to_le_bytes());
                    }
                    b
                };
                let (w, ys): (Vec<u8>, Vec<Vec<u8>>) = if round == 0 {
                    let w = quantize(
                        &(0..rows * n)
                            .map(|_| rng.normal() * 0.02)
                            .collect::<Vec<_>>(),
                    );
                    (
                        w,
                        (0..8)
                            .map(|t| {
                                quantize(
                                    &(0..n)
                                        .map(|_| rng.normal() * (t as f32 + 1.0))
                                        .collect::<Vec<_>>(),
                                )
                            })
                            .collect(),
                    )
                } else {
                    (
                        random(&mut rng, rows * row_bytes),
                        (0..8).map(|_| random(&mut rng, row_bytes)).collect(),
                    )
                };
                let ps: Vec<PreparedRow> =
                    ys.iter().map(|y| PreparedRow::Q8_0(y.clone())).collect();
                let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(GgmlType::Q8_0, p)).collect();
                assert!(ps.iter().zip(&aux).all(|(p, a)| a.fits(GgmlType::Q8_0, p)));
                let want: Vec<[f32; 8]> = (0..rows)
                    .map(|r| {
                        std::array::from_fn(|t| {
                            vec_dot_scalar(&w[r * row_bytes..(r + 1) * row_bytes], &ys[t])
                        })
                    })
                    .collect();
                fn check<const N: usize>(
                    w: &[u8],
                    ps: &[PreparedRow],
                    aux: &[RowAux],
                    t0: usize,
                    want: &[[f32; 8]],
                ) {
                    crate::quant::tests_util::check_multi_row::<N>(want, t0, |out| {
                        vec_dot_rows::<N>(
                            GgmlType::Q8_0,
                            w,
                            std::array::from_fn(|k| &ps[t0 + k]),
                            std::array::from_fn(|k| &aux[t0 + k]),
                            out,
                        )
                    });
                }
                check::<8>(&w, &ps, &aux, 0, &want);
                check::<4>(&w, &ps, &aux, 3, &want);
                check::<1>(&w, &ps, &aux, 7, &want);
                use crate::quant::tests_util::check_rows_levels;
                check_rows_levels::<BlockQ8_0, 8>(&w, &ys, 0, &want);
                check_rows_levels::<BlockQ8_0, 4>(&w, &ys, 3, &want);
                check_rows_levels::<BlockQ8_0, 1>(&w, &ys, 7, &want);
            }
        }
    }
}
