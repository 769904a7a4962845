//! Q4_0: 32 weights per 18-byte block: f16 scale `d`, then 16 bytes of nibbles; byte `j`
//! holds weight `j` (low nibble) and weight `j + 16` (high nibble). Value = `(q - 8) * d`.

use super::block::{bytes_of, i8_bytes, zeroed, Family, Pod, Scale};
use super::fp16::F16;
use super::q8_0::BlockQ8_0;
use super::simd::{self, BLOCK_LANES};
use std::simd::prelude::*;

pub(crate) const QK: usize = 32;

/// `S` is the scale type: [`F16`] today, `F32` in pre-GGUF files (`f32_scale.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0<S = F16> {
    pub d: S,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
// SAFETY: byte arrays and a Pod scale (alignment 1), no padding.
unsafe impl<S: Scale> Pod for BlockQ4_0<S> {}

/// The float half of a group, shared by every level so their order cannot drift apart.
#[inline(always)]
pub(crate) fn combine(dw: f32x8, dx: f32x8, isum: i32x8) -> f32x8 {
    (dw * dx) * isum.cast::<f32>()
}

impl<S: Scale> Family for BlockQ4_0<S> {
    const QK: usize = QK;
    type Act = BlockQ8_0;
    type Aux = Q4Aux;
    #[cfg(target_arch = "x86_64")]
    const TILES_AMX: Option<super::block::TilesAmx<Self>> = Some(super::amx::q4_0_tiles::<S>);

    /// gguf's `Q4_0.quantize_blocks`, step by step in f32.
    #[inline(always)]
    fn quantize(x: &[f32], out: &mut Self) {
        let x: &[f32; QK] = x.try_into().unwrap();
        let d = x[simd::np_abs_argmax(x)] / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        // trunc(x*id + 8.5), numpy's uint8 cast, clip to 15 (finite input gives 0..=16 here).
        let q = |k: usize| {
            let v = f32x8::from_slice(&x[8 * k..]) * f32x8::splat(id) + f32x8::splat(8.5);
            simd::np_trunc_u8_x8(v).simd_min(u8x8::splat(15))
        };
        out.d = S::store(d);
        // Weights j and j + 16 share byte j.
        for k in 0..2 {
            let packed = q(k) | (q(k + 2) << 4);
            out.qs[8 * k..8 * k + 8].copy_from_slice(packed.as_array());
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.get();
        for j in 0..QK / 2 {
            y[j] = d * ((self.qs[j] & 0x0f) as i32 - 8) as f32;
            y[j + QK / 2] = d * ((self.qs[j] >> 4) as i32 - 8) as f32;
        }
    }

    /// Exact integer sum per block, `acc[b % 8] += (d_w * d_x) * isum`, fixed reduction.
    fn dot_scalar(w: &[Self], y: &[BlockQ8_0]) -> f32 {
        let mut acc = [0f32; BLOCK_LANES];
        for (b, (wb, yb)) in w.iter().zip(y).enumerate() {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                let lo = (wb.qs[j] & 0x0f) as i32 - 8;
                let hi = (wb.qs[j] >> 4) as i32 - 8;
                isum += lo * yb.qs[j] as i32 + hi * yb.qs[QK / 2 + j] as i32;
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
            let qs = u8x16::from_array(w[b].qs);
            let y0 = i8x16::from_slice(&y[b].qs[..16]);
            let y1 = i8x16::from_slice(&y[b].qs[16..]);
            let lo = (qs & u8x16::splat(0x0f)).cast::<i16>() - i16x16::splat(8);
            let hi = (qs >> 4).cast::<i16>() - i16x16::splat(8);
            // |products| <= 8 * 128, so the i16 sums of two cannot overflow.
            (lo * y0.cast::<i16>() + hi * y1.cast::<i16>())
                .cast::<i32>()
                .reduce_sum()
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
        let m4 = _mm_set1_epi8(0x0f);
        let eight = _mm256_set1_epi8(8);
        let ones = _mm256_set1_epi16(1);
        let mut v = [_mm256_setzero_si256(); BLOCK_LANES];
        for (b, vb) in v.iter_mut().enumerate() {
            let qs = load16(&w[b].qs);
            let lo = _mm_and_si128(qs, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
            let nib = _mm256_set_m128i(hi, lo); // weights 0..32 in order, values 0..=15
            let yv = load32(i8_bytes(&y[b].qs));
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
        let dw = S::lanes_avx2(std::array::from_fn(|b| w[b].d));
        let dx = F16::lanes_avx2(std::array::from_fn(|b| y[b].d));
        *acc += combine(dw, dx, isum);
    }

    /// Two blocks per 512-bit vector: the 16 nibble bytes of each block copied to two 128-bit
    /// lanes, the high copy shifted down by 4, masked to 0..=15, then `vpdpbusd` (nibbles
    /// unsigned, activations signed: exact, y = -128 included) minus `8 * y` the same way.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut f32x8, w: &[Self], y: &[BlockQ8_0]) {
        use simd::x86::*;
        let w: &[Self; BLOCK_LANES] = w.try_into().unwrap();
        let y: &[BlockQ8_0; BLOCK_LANES] = y.try_into().unwrap();
        let m4 = _mm512_set1_epi8(0x0f);
        let eight = _mm512_set1_epi8(8);
        let zero = _mm512_setzero_si512();
        let mut z = [zero; BLOCK_LANES / 2];
        for (k, zk) in z.iter_mut().enumerate() {
            let (b0, b1) = (2 * k, 2 * k + 1);
            let q = _mm512_castsi256_si512(_mm256_set_m128i(load16(&w[b1].qs), load16(&w[b0].qs)));
            // 128-bit lanes [q0, q0, q1, q1]; lanes 1 and 3 (16-bit lanes 8..16, 24..32) take
            // the high nibbles: weights 16..32 of each block.
            let x = _mm512_shuffle_i64x2::<0b01_01_00_00>(q, q);
            let nib = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(x, 0xff00_ff00, x), m4);
            let yv = load32x2(i8_bytes(&y[b0].qs), i8_bytes(&y[b1].qs));
            *zk = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(zero, nib, yv),
                _mm512_dpbusd_epi32(zero, eight, yv),
            );
        }
        let isum = hsum_pairs_epi32(z);
        let dw = S::lanes_strided_avx512(bytes_of(w), std::mem::size_of::<Self>());
        let dx = F16::lanes_strided_avx512(bytes_of(y), std::mem::size_of::<BlockQ8_0>());
        *acc += combine(dw, dx, isum);
    }

    const MULTI_ROW: bool = true;

    fn row_aux(y: &[BlockQ8_0]) -> Option<Q4Aux> {
        Some(x4_aux(y))
    }

    fn aux_fits(aux: &Q4Aux, y: &[BlockQ8_0]) -> bool {
        x4_aux_fits(aux, y)
    }

    /// One weight row against `N` activation rows.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(w: &[Self], aux: [&Q4Aux; N]) -> [f32; N] {
        row_xn::<Self, N, false>(w, aux)
    }

    /// [`Family::row_xn_avx2`] with `vpdpbusd` for the nibble products; one activation row
    /// (generation) with VBMI's byte permutes where the CPU has them ([`row_1_vbmi`]).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&Q4Aux; N]) -> [f32; N] {
        #[cfg(target_arch = "x86_64")]
        if N == 1 && std::mem::size_of::<Self>() == BLOCK_BYTES && simd::has_avx512_vbmi() {
            return [row_1_vbmi(bytes_of(w), aux[0]); N];
        }
        row_xn::<Self, N, true>(w, aux)
    }
}

/// Bytes of a GGUF Q4_0 block (f16 scale).
const BLOCK_BYTES: usize = std::mem::size_of::<BlockQ4_0>();

/// Whether `aux` is `x4_aux` of a row of `y`'s length.
pub(crate) fn x4_aux_fits(aux: &Q4Aux, y: &[BlockQ8_0]) -> bool {
    let groups = y.len().div_ceil(BLOCK_LANES);
    aux.d.len() == groups * BLOCK_LANES
        && aux.s8.len() == groups * BLOCK_LANES
        && aux.yt.len() == groups * YT_GROUP
        && aux.y1.len() == groups * YT_GROUP
}

/// One group's slices of each activation row's side data: (quants, scales, 8 * sums).
pub(crate) type GroupParts<'a, const N: usize> = (
    [&'a [u8; YT_GROUP]; N],
    [&'a [f32; BLOCK_LANES]; N],
    [&'a [i32; BLOCK_LANES]; N],
);

/// Weight blocks whose multi-row kernel meets the activations in `x4_aux`'s layout, one group
/// of 8 blocks at a time (Q4_0, Q5_0): [`row_xn`] drives it.
pub(crate) trait NibbleGroup: Pod {
    /// Adds the group's terms into `acc` (lanes in `LANE_BLOCK` order).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (and AVX-512 VNNI + VL if `VNNI`).
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        parts: GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    );
}

impl<S: Scale> NibbleGroup for BlockQ4_0<S> {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn group_xn<const N: usize, const VNNI: bool>(
        w: &[Self; BLOCK_LANES],
        parts: GroupParts<'_, N>,
        acc: &mut [f32x8; N],
    ) {
        group_xn_avx2::<S, N, VNNI>(w, parts, acc)
    }
}

/// The multi-row kernel, with `vpdpbusd` (`VNNI`: the caller enables AVX-512 VNNI + VL) or
/// with AVX2's `maddubs`.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn row_xn<W: NibbleGroup, const N: usize, const VNNI: bool>(
    w: &[W],
    aux: [&Q4Aux; N],
) -> [f32; N] {
    let nb = w.len();
    let groups = nb.div_ceil(BLOCK_LANES);
    for a in aux {
        assert!(
            a.d.len() == groups * BLOCK_LANES
                && a.s8.len() == groups * BLOCK_LANES
                && a.yt.len() == groups * YT_GROUP,
            "vec_dot_xn lengths"
        );
    }
    let mut acc = [f32x8::splat(0.0); N];
    let full = nb / BLOCK_LANES;
    for (g, wg) in w.chunks_exact(BLOCK_LANES).enumerate() {
        simd::prefetch_ahead(wg.as_ptr().cast(), BLOCK_LANES * std::mem::size_of::<W>());
        W::group_xn::<N, VNNI>(wg.try_into().unwrap(), group_parts(aux, g), &mut acc);
    }
    let rem = nb % BLOCK_LANES;
    if rem != 0 {
        // Zero padding as in the row driver: padded lanes add (0 * 0) * 0 = +0.0.
        let mut wp = [zeroed::<W>(); BLOCK_LANES];
        wp[..rem].copy_from_slice(&w[full * BLOCK_LANES..]);
        W::group_xn::<N, VNNI>(&wp, group_parts(aux, full), &mut acc);
    }
    acc.map(|a| {
        let a = a.to_array();
        let mut lanes = [0f32; BLOCK_LANES];
        for (l, &b) in LANE_BLOCK.iter().enumerate() {
            lanes[b] = a[l];
        }
        simd::reduce8(lanes)
    })
}

/// Lane `l` of the multi-row kernels' vectors holds block `LANE_BLOCK[l]` of a group of 8
/// (the order a 4x4 dword transpose within 128-bit halves produces). The float accumulator
/// of lane `l` is the single-row kernel's lane `LANE_BLOCK[l]`; it is put back in place
/// before the fixed reduction.
pub(crate) const LANE_BLOCK: [usize; BLOCK_LANES] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Bytes of one group of 8 activation blocks rearranged for the multi-row kernels: 8 vectors
/// of 32 bytes; vector `2k + h`, lane `l` holds quants `16h + 4k .. 16h + 4k + 4` of block
/// `LANE_BLOCK[l]` (the weights' nibbles land in that layout after a cheap transpose).
pub(crate) const YT_GROUP: usize = BLOCK_LANES * 32;

/// Side data of one q8_0 activation row for the multi-row kernel, per group of 8 blocks (the
/// last one padded with zero blocks), lanes in `LANE_BLOCK` order: the scales as f32,
/// `8 * sum(q)` of each block, and the quants rearranged (`YT_GROUP` bytes per group).
pub struct Q4Aux {
    d: Vec<f32>,
    s8: Vec<i32>,
    yt: Vec<u8>,
    /// The quants again for [`row_1_vbmi`], per group of 8 blocks: the first 16 of blocks
    /// 0..4, their last 16, the first 16 of blocks 4..8, their last 16 (block order).
    y1: Vec<u8>,
}

impl Q4Aux {
    /// Entry `i` (group `i / 8`, lane `i % 8` in `LANE_BLOCK` order): that block's scale
    /// and `8 * sum(q)`.
    #[inline(always)]
    pub(crate) fn block(&self, i: usize) -> (f32, i32) {
        (self.d[i], self.s8[i])
    }
}

pub(crate) fn x4_aux(y: &[BlockQ8_0]) -> Q4Aux {
    let nb = y.len();
    let groups = nb.div_ceil(BLOCK_LANES);
    let mut d = vec![0f32; groups * BLOCK_LANES];
    let mut s8 = vec![0i32; groups * BLOCK_LANES];
    let mut yt = vec![0u8; groups * YT_GROUP];
    let mut y1 = vec![0u8; groups * YT_GROUP];
    for (b, yb) in y.iter().enumerate() {
        let (g, k) = (b / BLOCK_LANES, b % BLOCK_LANES);
        let at = g * YT_GROUP + (k / 4) * 128 + (k % 4) * 16;
        let qs = i8_bytes(&yb.qs);
        y1[at..at + 16].copy_from_slice(&qs[..16]);
        y1[at + 64..at + 80].copy_from_slice(&qs[16..]);
    }
    for g in 0..groups {
        for (l, &lb) in LANE_BLOCK.iter().enumerate() {
            let b = g * BLOCK_LANES + lb;
            if b >= nb {
                continue;
            }
            let yb = &y[b];
            d[g * BLOCK_LANES + l] = yb.d.get();
            s8[g * BLOCK_LANES + l] = 8 * yb.qs.iter().map(|&q| q as i32).sum::<i32>();
            let qs = i8_bytes(&yb.qs);
            for v in 0..8 {
                let (k, h) = (v / 2, v % 2);
                let src = 16 * h + 4 * k;
                yt[g * YT_GROUP + 32 * v + 4 * l..][..4].copy_from_slice(&qs[src..src + 4]);
            }
        }
    }
    Q4Aux { d, s8, yt, y1 }
}

/// A GGUF Q4_0 weight row (`w`: 18-byte blocks) against one activation row, eight blocks per
/// step, for generation. The multi-row kernel transposes each group's nibbles with a dozen
/// shuffles, which one token cannot amortize; here three VBMI byte permutes over the group's
/// 144 bytes pick the 8 scales (in `LANE_BLOCK` order) and the quants of blocks 0..4 and 4..8,
/// one block per 128-bit lane, to meet `aux.y1`. `vpdpbusd` leaves four partial sums per block;
/// two unpack-adds and a shuffle-add finish each block's exact integer, and a dword permute puts
/// them in `LANE_BLOCK` order. From there the float steps are [`group_xn_avx2`]'s, so every lane
/// accumulates the bits of the single-row reference.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI and VBMI; `aux` must be `x4_aux` of a row of
/// `w.len() / 18` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn row_1_vbmi(w: &[u8], aux: &Q4Aux) -> f32 {
    let nb = w.len() / BLOCK_BYTES;
    let groups = nb.div_ceil(BLOCK_LANES);
    assert!(
        w.len() == nb * BLOCK_BYTES
            && aux.d.len() == groups * BLOCK_LANES
            && aux.s8.len() == groups * BLOCK_LANES
            && aux.y1.len() == groups * YT_GROUP,
        "row_1_vbmi lengths"
    );
    let k = Vbmi1::new();
    let mut acc = f32x8::splat(0.0);
    let full = nb / BLOCK_LANES;
    for g in 0..full {
        let p = w.as_ptr().add(g * VBMI_GROUP);
        simd::prefetch_ahead(p, VBMI_GROUP);
        acc += k.group(p, aux, g);
    }
    if full < groups {
        // Zero blocks pad the last group, as in `row_xn`: they add (0 * 0) * 0 = +0.0.
        let mut pad = [0u8; VBMI_GROUP];
        pad[..w.len() - full * VBMI_GROUP].copy_from_slice(&w[full * VBMI_GROUP..]);
        acc += k.group(pad.as_ptr(), aux, full);
    }
    let a = acc.to_array();
    let mut lanes = [0f32; BLOCK_LANES];
    for (l, &b) in LANE_BLOCK.iter().enumerate() {
        lanes[b] = a[l];
    }
    simd::reduce8(lanes)
}

/// Bytes of one group of 8 blocks.
const VBMI_GROUP: usize = BLOCK_LANES * BLOCK_BYTES;

/// [`row_1_vbmi`]'s permutes, as constants (built once, not per row): byte indices into a pair
/// of 64-byte registers (bit 6 picks the second).
const fn vbmi_table(kind: u8) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        t[k] = match kind {
            // Quants of blocks 0..4 from bytes 0..128; of blocks 4..8 from bytes 64..192.
            0 => BLOCK_BYTES * (k / 16) + 2 + k % 16,
            1 => BLOCK_BYTES * (4 + k / 16) + 2 + k % 16 - 64,
            // Scale bytes in LANE_BLOCK order, in the low 16 bytes.
            _ if k < 16 => BLOCK_BYTES * LANE_BLOCK[k / 2] + k % 2,
            _ => 0,
        } as u8;
        k += 1;
    }
    t
}
const VBMI_IDX_A: [u8; 64] = vbmi_table(0);
const VBMI_IDX_B: [u8; 64] = vbmi_table(1);
const VBMI_IDX_S: [u8; 64] = vbmi_table(2);
/// Dword permute: after the reduction dword 4j holds block j's sum, dword 4j + 1 block j + 4's;
/// lane l takes block LANE_BLOCK[l % 8]'s.
const VBMI_IDX_D: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut l = 0;
    while l < 16 {
        let b = LANE_BLOCK[l % 8];
        t[4 * l] = if b < 4 { 4 * b } else { 4 * (b - 4) + 1 } as u8;
        l += 1;
    }
    t
};

/// [`row_1_vbmi`]'s constant registers.
#[cfg(target_arch = "x86_64")]
struct Vbmi1 {
    idx_a: simd::x86::__m512i,
    idx_b: simd::x86::__m512i,
    idx_s: simd::x86::__m512i,
    idx_d: simd::x86::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl Vbmi1 {
    #[inline(always)]
    unsafe fn new() -> Vbmi1 {
        use std::arch::x86_64::*;
        let load = |t: &[u8; 64]| _mm512_loadu_si512(t.as_ptr().cast());
        Vbmi1 {
            idx_a: load(&VBMI_IDX_A),
            idx_b: load(&VBMI_IDX_B),
            idx_s: load(&VBMI_IDX_S),
            idx_d: load(&VBMI_IDX_D),
        }
    }

    /// The float terms of group `g` (its 144 bytes at `p`), lanes in `LANE_BLOCK` order.
    #[inline(always)]
    unsafe fn group(&self, p: *const u8, aux: &Q4Aux, g: usize) -> f32x8 {
        use std::arch::x86_64::*;
        let w0 = _mm512_loadu_si512(p.cast());
        let w1 = _mm512_loadu_si512(p.add(64).cast());
        // Only the group's last 16 bytes: nothing past the row (or the mapping) is read.
        let w2 = _mm512_maskz_loadu_epi8(0xffff, p.add(128).cast());
        let qa = _mm512_permutex2var_epi8(w0, self.idx_a, w1);
        let qb = _mm512_permutex2var_epi8(w1, self.idx_b, w2);
        let y = aux.y1[g * YT_GROUP..][..YT_GROUP].as_ptr();
        let (sa, sb) = (nibble_dot(qa, y), nibble_dot(qb, y.add(128)));
        let t = _mm512_add_epi32(_mm512_unpacklo_epi32(sa, sb), _mm512_unpackhi_epi32(sa, sb));
        let t = _mm512_add_epi32(t, _mm512_shuffle_epi32::<0b01_00_11_10>(t));
        let isum = i32x8::from(_mm512_castsi512_si256(_mm512_permutexvar_epi32(
            self.idx_d, t,
        )));
        let isum = isum - i32x8::from_slice(&aux.s8[g * BLOCK_LANES..][..BLOCK_LANES]);
        let sc = _mm512_permutex2var_epi8(w0, self.idx_s, w1);
        let dw = f32x8::from(_mm256_cvtph_ps(_mm512_castsi512_si128(sc)));
        let dx = f32x8::from_slice(&aux.d[g * BLOCK_LANES..][..BLOCK_LANES]);
        combine(dw, dx, isum)
    }
}

/// Four blocks' quants (one per 128-bit lane) against their activations (`y`: the 64 first
/// halves, then the 64 second halves): four dword partial sums per block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn nibble_dot(q: simd::x86::__m512i, y: *const u8) -> simd::x86::__m512i {
    use std::arch::x86_64::*;
    let m4 = _mm512_set1_epi8(0x0f);
    let lo = _mm512_and_si512(q, m4);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
    let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(y.cast()));
    _mm512_dpbusd_epi32(s, hi, _mm512_loadu_si512(y.add(64).cast()))
}

/// Group `g`'s slices of each activation row's side data: (quants, scales, 8 * sums).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn group_parts<const N: usize>(
    aux: [&Q4Aux; N],
    g: usize,
) -> (
    [&[u8; YT_GROUP]; N],
    [&[f32; BLOCK_LANES]; N],
    [&[i32; BLOCK_LANES]; N],
) {
    (
        std::array::from_fn(|t| simd::arr::<YT_GROUP>(&aux[t].yt, g * YT_GROUP)),
        std::array::from_fn(|t| {
            aux[t].d[g * BLOCK_LANES..][..BLOCK_LANES]
                .try_into()
                .unwrap()
        }),
        std::array::from_fn(|t| {
            aux[t].s8[g * BLOCK_LANES..][..BLOCK_LANES]
                .try_into()
                .unwrap()
        }),
    )
}

/// The 16 nibble bytes of 8 blocks transposed for the multi-row kernels: `t[k]` lane `l` is
/// dword `k` (bytes `4k .. 4k + 4`) of block `LANE_BLOCK[l]`.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
pub(crate) unsafe fn transpose_qs(qs: [&[u8; 16]; BLOCK_LANES]) -> [simd::x86::__m256i; 4] {
    use simd::x86::*;
    // r[i] = [quants of block 2i | quants of block 2i + 1].
    let r = [
        _mm256_set_m128i(load16(qs[1]), load16(qs[0])),
        _mm256_set_m128i(load16(qs[3]), load16(qs[2])),
        _mm256_set_m128i(load16(qs[5]), load16(qs[4])),
        _mm256_set_m128i(load16(qs[7]), load16(qs[6])),
    ];
    // 4x4 dword transpose within each half.
    let a0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let a1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let a2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let a3 = _mm256_unpackhi_epi32(r[2], r[3]);
    [
        _mm256_unpacklo_epi64(a0, a2),
        _mm256_unpackhi_epi64(a0, a2),
        _mm256_unpacklo_epi64(a1, a3),
        _mm256_unpackhi_epi64(a1, a3),
    ]
}

/// One group of 8 blocks of a weight row against the same group of `N` activation rows.
/// The weight nibbles are unpacked and transposed once (lane = block, 4 weights per lane per
/// vector) to meet the activations, rearranged the same way once per matmul (`x4_aux`). Per
/// activation row, the integer sum of each block is `sum(nib * y) - 8 * sum(y)`: the
/// single-row kernel's integer, by exact integer arithmetic (each i16 lane sums 16 products
/// of at most 15 * 128, so no i16 overflows). The float steps are the single-row kernel's
/// (`combine`, with the same scales), so each lane accumulates the bits it would there.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn group_xn_avx2<S: Scale, const N: usize, const VNNI: bool>(
    w: &[BlockQ4_0<S>; BLOCK_LANES],
    (yt, dx, s8): (
        [&[u8; YT_GROUP]; N],
        [&[f32; BLOCK_LANES]; N],
        [&[i32; BLOCK_LANES]; N],
    ),
    acc: &mut [f32x8; N],
) {
    use simd::x86::*;
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let t = transpose_qs(std::array::from_fn(|b| &w[b].qs));
    let dw = S::lanes_avx2(std::array::from_fn(|l| w[LANE_BLOCK[l]].d));
    // Nibble vector v by v, each meeting every activation row while it is in a register:
    // nib(2k) = weights 4k..4k+4 (low nibbles), nib(2k + 1) = weights 16 + 4k.. (high).
    // AVX2: i16 sums (maddubs), widened at the end; VNNI: i32 sums straight away (vpdpbusd,
    // 32 products of at most 15 * 128 per lane). The same exact integers either way.
    let mut s16 = [_mm256_setzero_si256(); N];
    for v in 0..8 {
        let tk = t[v / 2];
        let nib = if v % 2 == 0 {
            _mm256_and_si256(tk, m4)
        } else {
            _mm256_and_si256(_mm256_srli_epi16(tk, 4), m4)
        };
        for n in 0..N {
            let y = load32(simd::arr::<32>(yt[n], 32 * v));
            s16[n] = if VNNI {
                _mm256_dpbusd_epi32(s16[n], nib, y)
            } else {
                _mm256_add_epi16(s16[n], _mm256_maddubs_epi16(nib, y))
            };
        }
    }
    for n in 0..N {
        let s32 = if VNNI {
            s16[n]
        } else {
            _mm256_madd_epi16(s16[n], ones)
        };
        let isum = i32x8::from(s32) - i32x8::from_array(*s8[n]);
        acc[n] += combine(dw, f32x8::from_array(*dx[n]), isum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp16::read_f16;
    use crate::quant::fp32::F32;
    use crate::quant::tests_util::{
        byte_shims, check_block_dot_paths, check_extreme_blocks, finite_half, fnv1a, known_input,
        GGUF_Q4_0,
    };
    use crate::quant::{vec_dot_rows, GgmlType, PreparedRow, RowAux};

    byte_shims!(BlockQ4_0, [u8], crate::quant::tests_util::q8s);
    const Q8_BYTES: usize = 34;

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

    /// Every kernel level (AVX-512 where the CPU has it) against the reference on blocks of
    /// extreme quants (-128 on both sides) and extreme scales, f16 and f32.
    #[test]
    fn extreme_blocks_agree_exactly() {
        check_extreme_blocks::<BlockQ4_0>(|b, h| b.d = F16(h.to_le_bytes()));
        check_extreme_blocks::<crate::quant::f32_scale::BlockQ4_0F32>(|b, h| {
            // f32 scales beyond f16's range too: the products may overflow to infinity.
            let v = F16(h.to_le_bytes()).get() * if h & 1 == 0 { 1.0 } else { 1e30 };
            b.d = F32(v.to_le_bytes())
        });
    }

    #[test]
    fn dot_paths_agree_exactly() {
        check_block_dot_paths::<BlockQ4_0>(|b, rng| b.d = finite_half(rng));
        check_block_dot_paths::<crate::quant::f32_scale::BlockQ4_0F32>(|b, rng| {
            b.d = F32(finite_half(rng).get().to_le_bytes())
        });
    }

    /// Several weight rows against 8, 4 and 1 activation rows at once equal the single-row
    /// reference exactly, for ragged and whole groups, quantized and random weight bytes, and
    /// an activation of -128.
    #[test]
    fn multi_row_equals_single_row_exactly() {
        let mut rng = crate::quant::tests_util::Rng::new(77);
        for nb in (0..=20).chain([63, 64, 65, 128]) {
            for round in 0..4 {
                let n = nb * QK;
                let rows = 3;
                let w: Vec<u8> = if round % 2 == 0 {
                    quantize(
                        &(0..rows * n)
                            .map(|_| rng.normal() * 0.02)
                            .collect::<Vec<_>>(),
                    )
                } else {
                    // Random nibbles, finite random scales.
                    let mut w: Vec<u8> = (0..rows * nb * BLOCK_BYTES)
                        .map(|_| rng.next_u64() as u8)
                        .collect();
                    for b in 0..rows * nb {
                        let h = (rng.next_u64() as u16 & 0x83ff)
                            | (((rng.next_u64() % 29) as u16 + 1) << 10);
                        w[b * BLOCK_BYTES..][..2].copy_from_slice(&h.to_le_bytes());
                    }
                    w
                };
                let row_bytes = nb * BLOCK_BYTES;
                let ys: Vec<Vec<u8>> = (0..8)
                    .map(|t| {
                        let xf: Vec<f32> =
                            (0..n).map(|_| rng.normal() * (t as f32 + 1.0)).collect();
                        let mut y = vec![0u8; nb * Q8_BYTES];
                        crate::quant::quantize_row(GgmlType::Q8_0, &xf, &mut y);
                        if round == 3 && nb > 0 {
                            y[2] = 0x80; // a -128 activation
                        }
                        y
                    })
                    .collect();
                let ps: Vec<PreparedRow> =
                    ys.iter().map(|y| PreparedRow::Q8_0(y.clone())).collect();
                let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(GgmlType::Q4_0, p)).collect();
                assert!(ps.iter().zip(&aux).all(|(p, a)| a.fits(GgmlType::Q4_0, p)));
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
                            GgmlType::Q4_0,
                            w,
                            std::array::from_fn(|k| &ps[t0 + k]),
                            std::array::from_fn(|k| &aux[t0 + k]),
                            out,
                        )
                    });
                }
                check::<8>(&w, &ps, &aux, 0, &want);
                check::<4>(&w, &ps, &aux, 4, &want);
                check::<1>(&w, &ps, &aux, 6, &want);
                use crate::quant::tests_util::check_rows_levels;
                check_rows_levels::<BlockQ4_0, 8>(&w, &ys, 0, &want);
                check_rows_levels::<BlockQ4_0, 4>(&w, &ys, 4, &want);
                check_rows_levels::<BlockQ4_0, 1>(&w, &ys, 6, &want);
                for (r, wr) in want.iter().enumerate() {
                    for t in 0..8 {
                        assert_eq!(
                            vec_dot(&w[r * row_bytes..(r + 1) * row_bytes], &ys[t]).to_bits(),
                            wr[t].to_bits()
                        );
                    }
                }
                let one =
                    crate::quant::vec_dot_xn(GgmlType::Q4_0, &w[..row_bytes], [&ps[5]], [&aux[5]]);
                assert_eq!(
                    one[0].to_bits(),
                    want.first().map_or(0.0f32, |w| w[5]).to_bits()
                );
            }
        }
    }
}
