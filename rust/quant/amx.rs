//! AMX-INT8 tiles for matrix x matrix products (prompts): 16 weight rows against 16 tokens at
//! a time. This file: what every tile kernel shares (the CPU check, the tokens' tile layout
//! [`AmxActs`], the tile configuration, the final reduction) and the kernel of the families
//! whose blocks are 32 signed bytes against q8_0 (Q8_0, Q4_0); `amx_k.rs` has the K-quants'.
//!
//! Per block `b`, one `tdpbssd` gives the exact i32 block sums of all 16 x 16 (row, token)
//! pairs: A = the 16 weight rows' 32 quants (int8), B = the 16 tokens' 32 quants in the
//! tile layout `B[j][4 t + i] = x_t[4 j + i]` ([`AmxActs`], built once per matmul), C[r][t].
//! The float half is the scalar reference's, vectorized over the 16 tokens:
//! `acc[b % 8][r][t] += (d_w[r] * d_x[t]) * isum[r][t]`, then `simd::reduce8` over the 8
//! lanes: every result has the bits of the one-row kernels.
//!
//! Linux gives a process the tile registers only after `arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`; a refusal (old kernel, a hypervisor without it) leaves AMX off.
//! The intrinsics are unstable in Rust 1.95: `x86_amx_intrinsics` under the crate's
//! `RUSTC_BOOTSTRAP` switch (lib.rs), the only other unstable feature besides `portable_simd`.

use super::block::Scale;
use super::q4_0::BlockQ4_0;
use super::q8_0::{BlockQ8_0, QK};
use super::q8_k::{BlockQ8K, QK_K};
use super::simd::BLOCK_LANES;
use std::simd::prelude::*;

/// Weight rows and tokens per tile.
pub const TILE: usize = 16;

/// Whether the CPU has AMX-INT8 and the kernel lets this process use the tile data (asked
/// once; a refusal is quiet: the AVX-512 kernels run instead).
#[cfg(target_arch = "x86_64")]
pub(crate) fn cpu_has_amx() -> bool {
    use std::sync::OnceLock;
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        is_x86_feature_detected!("amx-tile")
            && is_x86_feature_detected!("amx-int8")
            && request_tile_permission()
    })
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn cpu_has_amx() -> bool {
    false
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0` (Linux; elsewhere no AMX).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with two integer arguments; it reads no memory.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// 16 tokens' quantized activation rows (q8_0 or q8_K) in the B-tile layout, with their
/// scales: token `t`'s quant `k` at `tiles[64 (k / 4) + 4 t + k % 4]`, so the 32 (q8_0) or
/// 64 (q8_K) bytes of K of one tile op are one contiguous B tile of 64-byte rows.
pub struct AmxActs {
    tiles: Vec<i8>,
    /// `d[u * 16 + t]`: token `t`'s scale of unit `u` (a q8_0 block, a q8_K super-block).
    d: Vec<f32>,
    /// q8_K only: per super-block `u` and pair `p` of 32-value sub-blocks, 32 words
    /// `sums[(4 u + p) * 32 + 2 t + h] = bsum_{4p + 2h} + bsum_{4p + 2h + 1}` of token `t`
    /// (sub-block `2p + h`'s sum from `bsums`, as the scalar reference takes it), the
    /// word pairs `vpdpwssd` multiplies by a row's two minimums.
    sums: Vec<i16>,
    /// Values per unit: 32 (q8_0) or 256 (q8_K).
    unit: usize,
}

impl AmxActs {
    /// Token `t`'s quants `x` from element `k0` on (`k0`, `x.len()` multiples of 4).
    fn interleave(tiles: &mut [i8], t: usize, k0: usize, x: &[i8]) {
        for (j, q) in x.chunks_exact(4).enumerate() {
            let o = 64 * (k0 / 4 + j) + 4 * t;
            tiles[o..o + 4].copy_from_slice(q);
        }
    }

    /// The tile layout of 16 q8_0 rows of equal length.
    pub fn from_q8_0(rows: [&[BlockQ8_0]; TILE]) -> AmxActs {
        let nb = rows[0].len();
        assert!(rows.iter().all(|r| r.len() == nb), "AmxActs: rows differ");
        let mut tiles = vec![0i8; nb * QK * TILE];
        let mut d = vec![0f32; nb * TILE];
        for (t, row) in rows.iter().enumerate() {
            for (b, yb) in row.iter().enumerate() {
                d[b * TILE + t] = yb.d.get();
                Self::interleave(&mut tiles, t, b * QK, &yb.qs);
            }
        }
        AmxActs {
            tiles,
            d,
            sums: Vec::new(),
            unit: QK,
        }
    }

    /// The tile layout of 16 q8_K rows of equal length, with their sub-block sums.
    pub fn from_q8_k(rows: [&[BlockQ8K]; TILE]) -> AmxActs {
        let nb = rows[0].len();
        assert!(rows.iter().all(|r| r.len() == nb), "AmxActs: rows differ");
        let mut tiles = vec![0i8; nb * QK_K * TILE];
        let mut d = vec![0f32; nb * TILE];
        let mut sums = vec![0i16; nb * 4 * 2 * TILE];
        for (t, row) in rows.iter().enumerate() {
            for (b, yb) in row.iter().enumerate() {
                d[b * TILE + t] = yb.d.get();
                Self::interleave(&mut tiles, t, b * QK_K, &yb.qs);
                for s in 0..QK_K / 32 {
                    // |bsum| <= 16 * 128: the pair fits an i16.
                    let v = yb.bsum(2 * s) + yb.bsum(2 * s + 1);
                    sums[(4 * b + s / 2) * 2 * TILE + 2 * t + s % 2] = v;
                }
            }
        }
        AmxActs {
            tiles,
            d,
            sums,
            unit: QK_K,
        }
    }

    /// Units (q8_0 blocks or q8_K super-blocks) per row.
    pub fn blocks(&self) -> usize {
        self.d.len() / TILE
    }

    /// Values per unit: the activation type's block size.
    pub fn unit(&self) -> usize {
        self.unit
    }

    /// Values per row.
    pub fn len(&self) -> usize {
        self.blocks() * self.unit
    }

    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }

    /// The B tile of K bytes `k0 ..` (rows 64 bytes apart).
    pub(crate) fn b_tile(&self, k0: usize) -> *const i8 {
        self.tiles[64 * (k0 / 4)..].as_ptr()
    }

    /// The 16 tokens' scales of unit `u`.
    pub(crate) fn scales(&self, u: usize) -> f32x16 {
        f32x16::from_slice(&self.d[u * TILE..(u + 1) * TILE])
    }

    /// Super-block `u`'s sums of sub-block pair `p` (see the field); q8_K only.
    pub(crate) fn pair_sums(&self, u: usize, p: usize) -> &[i16] {
        &self.sums[(4 * u + p) * 2 * TILE..(4 * u + p + 1) * 2 * TILE]
    }
}

/// `ldtilecfg`'s 64-byte operand (palette 1).
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Tile register `i` as `shapes[i]` = (rows, bytes per row); the rest unused.
    pub(crate) const fn new(shapes: &[(u8, u16)]) -> TileConfig {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        let mut i = 0;
        while i < shapes.len() {
            c.rows[i] = shapes[i].0;
            c.colsb[i] = shapes[i].1;
            i += 1;
        }
        c
    }

    /// Loads this configuration.
    ///
    /// # Safety
    /// As [`tiles`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "amx-tile")]
    pub(crate) unsafe fn load(&self) {
        std::arch::x86_64::_tile_loadconfig((self as *const TileConfig).cast());
    }
}

/// Per group and row, `simd::reduce8` over the 8 block lanes, for 16 tokens at once.
#[inline(always)]
pub(crate) fn reduce_lanes(acc: &[[f32x16; TILE]; BLOCK_LANES], out: &mut [[f32; TILE]; TILE]) {
    for (r, o) in out.iter_mut().enumerate() {
        let v = |l: usize| acc[l][r];
        let (a0, a1, a2, a3) = (v(0) + v(4), v(1) + v(5), v(2) + v(6), v(3) + v(7));
        *o = ((a0 + a2) + (a1 + a3)).to_array();
    }
}

/// Token groups per pass: the tile registers hold one A (the weights' block), and a B and a C
/// per group (1 + 2 * 3 of the 8), so three independent `tdpbssd` overlap their latency.
const GROUPS_PER_PASS: usize = 3;

/// The tile registers: 1 = A (16 rows x 32 bytes), 2..=4 = B (8 rows x 64 bytes),
/// 5..=7 = C (16 x 16 i32).
const CONFIG: TileConfig = {
    let (a, b, c) = ((16, QK as u16), ((QK / 4) as u8, 64), (16, 64));
    TileConfig::new(&[(0, 0), a, b, b, b, c, c, c])
};

/// One weight chunk's view for [`tiles`]: where row `r`'s 32 quants of block `b` start, and
/// its scale there.
pub(crate) trait AmxWeights {
    /// Blocks per row.
    fn blocks(&self) -> usize;
    /// Pointer to 16 rows of 32 int8 quants of block `b`, rows `stride` bytes apart.
    fn quants(&self, b: usize) -> (*const i8, usize);
    /// The 16 rows' scales of block `b` as f32.
    fn scales(&self, b: usize) -> &[f32; TILE];
}

/// What a chunk's weights are converted into before the tiles run: Q4_0's quants unpacked to
/// bytes, and every family's scales as f32 (`d[b][r]`). One per thread, reused chunk after
/// chunk (every value a chunk reads is rewritten first).
#[derive(Default)]
pub(crate) struct Scratch {
    q: Vec<i8>,
    d: Vec<[f32; TILE]>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// `f` with this thread's [`Scratch`].
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| {
        let mut s = c.take();
        let r = f(&mut s);
        c.set(s);
        r
    })
}

/// `out[g][r][t]` = the dot product of weight row `r` with token `t` of group `g`, for the 16
/// rows of `w` against every group; each with the bits of the family's scalar reference.
///
/// # Safety
/// The CPU must have AMX-INT8 with the tile permission granted ([`cpu_has_amx`]) and AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,amx-tile,amx-int8")]
pub(crate) unsafe fn tiles<W: AmxWeights>(
    w: &W,
    groups: &[&AmxActs],
    out: &mut [[[f32; TILE]; TILE]],
) {
    use std::arch::x86_64::*;
    assert_eq!(groups.len(), out.len());
    let nb = w.blocks();
    assert!(
        groups.iter().all(|g| g.blocks() == nb),
        "tiles: row lengths differ"
    );
    assert!(
        groups.iter().all(|g| g.unit() == QK),
        "tiles: q8_0 activations"
    );
    CONFIG.load();
    // C tiles stored here, two blocks' worth: block `b`'s float half runs while block
    // `b + 1`'s tile products are computed, and reads tiles stored a whole block earlier
    // (a load right after `tilestored` waits for the store to reach the cache).
    let mut c = [[[[0i32; TILE]; TILE]; GROUPS_PER_PASS]; 2];
    for (gs, os) in groups
        .chunks(GROUPS_PER_PASS)
        .zip(out.chunks_mut(GROUPS_PER_PASS))
    {
        let ng = gs.len();
        let mut acc = [[[f32x16::splat(0.0); TILE]; BLOCK_LANES]; GROUPS_PER_PASS];
        // The scalar reference's float half of block `b`, 16 tokens at a time.
        let float_half = |acc: &mut [[[f32x16; TILE]; BLOCK_LANES]; GROUPS_PER_PASS],
                          cb: &[[[i32; TILE]; TILE]; GROUPS_PER_PASS],
                          b: usize| {
            let dw = w.scales(b);
            for k in 0..ng {
                let dx = gs[k].scales(b);
                let lane = &mut acc[k][b % BLOCK_LANES];
                for r in 0..TILE {
                    let isum = i32x16::from_array(cb[k][r]).cast::<f32>();
                    lane[r] += (f32x16::splat(dw[r]) * dx) * isum;
                }
            }
        };
        for b in 0..nb {
            let (a, stride) = w.quants(b);
            _tile_loadd::<1>(a.cast(), stride);
            // One group per (B, C) pair of tiles; the constant tile numbers need one line each.
            macro_rules! product {
                ($k:literal, $bt:literal, $ct:literal) => {
                    if $k < ng {
                        _tile_zero::<$ct>();
                        _tile_loadd::<$bt>(gs[$k].b_tile(b * QK).cast(), 64);
                        _tile_dpbssd::<$ct, 1, $bt>();
                    }
                };
            }
            product!(0, 2, 5);
            product!(1, 3, 6);
            product!(2, 4, 7);
            if b > 0 {
                float_half(&mut acc, &c[(b - 1) % 2], b - 1);
            }
            let cb = &mut c[b % 2];
            macro_rules! store {
                ($k:literal, $ct:literal) => {
                    if $k < ng {
                        _tile_stored::<$ct>(cb[$k].as_mut_ptr().cast(), 64);
                    }
                };
            }
            store!(0, 5);
            store!(1, 6);
            store!(2, 7);
        }
        if nb > 0 {
            float_half(&mut acc, &c[(nb - 1) % 2], nb - 1);
        }
        for (k, o) in os.iter_mut().enumerate() {
            reduce_lanes(&acc[k], o);
        }
    }
    _tile_release();
}

/// Q8_0 weight rows as they are in the file: A loads their quants in place.
pub(crate) struct Q8Rows<'a, S: Scale> {
    w: &'a [BlockQ8_0<S>],
    row_len: usize,
    d: &'a [[f32; TILE]],
}

impl<'a, S: Scale> Q8Rows<'a, S> {
    pub(crate) fn new(w: &'a [BlockQ8_0<S>], row_len: usize, scratch: &'a mut Scratch) -> Self {
        assert_eq!(w.len(), TILE * row_len, "Q8Rows: 16 rows");
        scratch.d.resize(row_len, [0.0; TILE]);
        for (r, row) in w.chunks_exact(row_len).enumerate() {
            for (d, wb) in scratch.d.iter_mut().zip(row) {
                d[r] = wb.d.get();
            }
        }
        Q8Rows {
            w,
            row_len,
            d: &scratch.d,
        }
    }
}

impl<S: Scale> AmxWeights for Q8Rows<'_, S> {
    fn blocks(&self) -> usize {
        self.row_len
    }
    fn quants(&self, b: usize) -> (*const i8, usize) {
        (
            self.w[b].qs.as_ptr(),
            self.row_len * std::mem::size_of::<BlockQ8_0<S>>(),
        )
    }
    fn scales(&self, b: usize) -> &[f32; TILE] {
        &self.d[b]
    }
}

/// Q4_0 weight rows unpacked once per chunk to int8 `q - 8` (AMX has no 4-bit operand):
/// `q[(b * 16 + r) * 32 + k]`, and their scales `d[b][r]`.
pub(crate) struct Q4Unpacked<'a> {
    q: &'a [i8],
    d: &'a [[f32; TILE]],
}

impl<'a> Q4Unpacked<'a> {
    pub(crate) fn new<S: Scale>(
        w: &[BlockQ4_0<S>],
        row_len: usize,
        scratch: &'a mut Scratch,
    ) -> Self {
        assert_eq!(w.len(), TILE * row_len, "Q4Unpacked: 16 rows");
        scratch.q.resize(w.len() * QK, 0);
        scratch.d.resize(row_len, [0.0; TILE]);
        let (low, eight) = (u8x16::splat(0x0f), i8x16::splat(8));
        for (r, row) in w.chunks_exact(row_len).enumerate() {
            for (b, wb) in row.iter().enumerate() {
                let o = &mut scratch.q[(b * TILE + r) * QK..(b * TILE + r + 1) * QK];
                let qs = u8x16::from_array(wb.qs);
                ((qs & low).cast::<i8>() - eight).copy_to_slice(&mut o[..QK / 2]);
                ((qs >> 4).cast::<i8>() - eight).copy_to_slice(&mut o[QK / 2..]);
                scratch.d[b][r] = wb.d.get();
            }
        }
        Q4Unpacked {
            q: &scratch.q,
            d: &scratch.d,
        }
    }
}

impl AmxWeights for Q4Unpacked<'_> {
    fn blocks(&self) -> usize {
        self.d.len()
    }
    fn quants(&self, b: usize) -> (*const i8, usize) {
        (self.q[b * TILE * QK..].as_ptr(), QK)
    }
    fn scales(&self, b: usize) -> &[f32; TILE] {
        &self.d[b]
    }
}

/// [`tiles`] for Q8_0 weights (`Family::TILES_AMX`).
///
/// # Safety
/// As [`tiles`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,amx-tile,amx-int8")]
pub(crate) unsafe fn q8_0_tiles<S: Scale>(
    w: &[BlockQ8_0<S>],
    row_len: usize,
    groups: &[&AmxActs],
    out: &mut [[[f32; TILE]; TILE]],
) {
    with_scratch(|s| tiles(&Q8Rows::new(w, row_len, s), groups, out))
}

/// [`tiles`] for Q4_0 weights (`Family::TILES_AMX`).
///
/// # Safety
/// As [`tiles`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,amx-tile,amx-int8")]
pub(crate) unsafe fn q4_0_tiles<S: Scale>(
    w: &[BlockQ4_0<S>],
    row_len: usize,
    groups: &[&AmxActs],
    out: &mut [[[f32; TILE]; TILE]],
) {
    with_scratch(|s| tiles(&Q4Unpacked::new(w, row_len, s), groups, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::{Rng, EXTREME_BYTES, EXTREME_HALVES};
    use crate::quant::view_mut;
    use crate::quant::{
        has_amx_kernel, prepare_activation, quantize_row, vec_dot_scalar, vec_dot_tiles, GgmlType,
        PreparedRow,
    };

    /// The families with tile kernels.
    const TYPES: [GgmlType; 7] = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q8_0F32,
        GgmlType::Q4_0F32,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// Writes a raw block's scale(s): the f16 `d` (and `dmin`) where each family keeps them;
    /// the f32-scale twins get the f16's value.
    fn set_scales(ty: GgmlType, blk: &mut [u8], rng: &mut Rng) {
        let mut h = || EXTREME_HALVES[(rng.next_u64() % 9) as usize].to_le_bytes();
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 => blk[..2].copy_from_slice(&h()),
            GgmlType::Q8_0F32 | GgmlType::Q4_0F32 => {
                let v = crate::quant::f16_bits_to_f32(u16::from_le_bytes(h()));
                blk[..4].copy_from_slice(&v.to_le_bytes());
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                blk[..2].copy_from_slice(&h());
                blk[2..4].copy_from_slice(&h());
            }
            GgmlType::Q6_K => blk[208..210].copy_from_slice(&h()),
            _ => unreachable!("{ty}"),
        }
    }

    /// 16 random rows, or rows of the extreme bytes and scales (raw blocks: any nibble,
    /// int8, packed 6-bit scale or minimum).
    fn weights(ty: GgmlType, nb: usize, rng: &mut Rng, extreme: bool) -> Vec<u8> {
        let n = nb * ty.block_size();
        if !extreme {
            let wf: Vec<f32> = (0..TILE * n).map(|_| rng.normal() * 0.05).collect();
            let mut w = vec![0u8; ty.row_bytes(TILE * n).unwrap()];
            quantize_row(ty, &wf, &mut w);
            return w;
        }
        let bb = ty.type_size();
        let mut w: Vec<u8> = (0..TILE * nb * bb)
            .map(|_| EXTREME_BYTES[(rng.next_u64() % 10) as usize])
            .collect();
        for blk in w.chunks_exact_mut(bb) {
            set_scales(ty, blk, rng);
        }
        w
    }

    /// 16 tokens' rows prepared for `ty`; extreme: scales 1e-3 .. 1e3, runs of equal values,
    /// and a -128 quant (which no quantizer makes; q8_K's `bsums` kept true) in every third.
    fn tokens(ty: GgmlType, nb: usize, rng: &mut Rng, extreme: bool) -> Vec<PreparedRow> {
        (0..TILE)
            .map(|t| {
                let scale = if extreme {
                    10f32.powi((t % 7) as i32 - 3)
                } else {
                    1.0
                };
                let x: Vec<f32> = (0..nb * ty.block_size())
                    .map(|i| {
                        if extreme && i % 5 == 0 {
                            -scale
                        } else {
                            rng.normal() * scale
                        }
                    })
                    .collect();
                let mut p = prepare_activation(ty, &x);
                if extreme && t % 3 == 0 {
                    match &mut p {
                        PreparedRow::Q8_0(q) => view_mut::<BlockQ8_0>(q)[nb - 1].qs[7] = -128,
                        PreparedRow::Q8K(q) => {
                            let y = &mut view_mut::<BlockQ8K>(q)[nb - 1];
                            let old = y.qs[37] as i16;
                            y.qs[37] = -128;
                            y.bsums[2] = (y.bsum(2) - old - 128).to_le_bytes();
                        }
                        PreparedRow::F32(_) => unreachable!(),
                    }
                }
                p
            })
            .collect()
    }

    #[test]
    fn tiles_equal_the_scalar_reference() {
        if !crate::quant::simd::has_amx() {
            eprintln!(
                "note: AMX-INT8 not available here (or not permitted); tile kernels not checked"
            );
            return;
        }
        let mut rng = Rng::new(77);
        for ty in TYPES {
            assert!(has_amx_kernel(ty), "{ty}");
            let sizes: &[usize] = if ty.block_size() == QK_K {
                &[1, 2, 7, 8, 9, 17]
            } else {
                &[1, 2, 7, 8, 9, 17, 40, 128]
            };
            for &nb in sizes {
                for extreme in [false, true] {
                    let w = weights(ty, nb, &mut rng, extreme);
                    // Three groups: a pass of two (K-quants) or three, and a lone one.
                    let g: Vec<Vec<PreparedRow>> =
                        (0..3).map(|_| tokens(ty, nb, &mut rng, extreme)).collect();
                    let acts: Vec<AmxActs> = g
                        .iter()
                        .map(|rows| {
                            AmxActs::from_prepared(std::array::from_fn(|t| &rows[t])).unwrap()
                        })
                        .collect();
                    for n_groups in [3, 1] {
                        let refs: Vec<&AmxActs> = acts[..n_groups].iter().collect();
                        let mut out = vec![[[0f32; TILE]; TILE]; n_groups];
                        vec_dot_tiles(ty, &w, &refs, &mut out);
                        let rb = w.len() / TILE;
                        for (gi, rows) in g[..n_groups].iter().enumerate() {
                            for r in 0..TILE {
                                for (t, x) in rows.iter().enumerate() {
                                    let want = vec_dot_scalar(ty, &w[r * rb..(r + 1) * rb], x);
                                    assert_eq!(
                                        out[gi][r][t].to_bits(),
                                        want.to_bits(),
                                        "{ty} nb={nb} extreme={extreme} g={gi} r={r} t={t}: {} vs {want}",
                                        out[gi][r][t]
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q8_0_tiles_do_not_serve_k_quants() {
        if !crate::quant::simd::has_amx() {
            eprintln!("note: AMX-INT8 not available here; activation kind check not run");
            return;
        }
        // 256 values: as q8_0, 8 blocks, the length in values of one q8_K block.
        let rows: Vec<PreparedRow> = (0..TILE)
            .map(|_| prepare_activation(GgmlType::Q8_0, &[0.5; 256]))
            .collect();
        let acts = AmxActs::from_prepared(std::array::from_fn(|t| &rows[t])).unwrap();
        let w = vec![0u8; TILE * 144];
        let err = std::panic::catch_unwind(|| {
            vec_dot_tiles(GgmlType::Q4_K, &w, &[&acts], &mut [[[0f32; TILE]; TILE]])
        })
        .unwrap_err();
        let msg = err.downcast_ref::<&str>().map(|s| s.to_string());
        let msg = msg
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap();
        assert!(msg.contains("not prepared for these weights"), "{msg}");
    }

    #[test]
    fn only_quantized_rows_of_one_kind_and_length_make_tiles() {
        for (ty, n) in [(GgmlType::Q8_0, 64), (GgmlType::Q4_K, 512)] {
            let q: Vec<PreparedRow> = (0..TILE)
                .map(|_| prepare_activation(ty, &vec![0.5; n]))
                .collect();
            let a = AmxActs::from_prepared(std::array::from_fn(|t| &q[t])).unwrap();
            assert_eq!(a.len(), n);
            let mut mixed = q.clone();
            mixed[3] = prepare_activation(ty, &vec![0.5; n / 2]);
            assert!(AmxActs::from_prepared(std::array::from_fn(|t| &mixed[t])).is_none());
        }
        let mut kinds: Vec<PreparedRow> = (0..TILE)
            .map(|_| prepare_activation(GgmlType::Q8_0, &[0.5; 256]))
            .collect();
        kinds[5] = prepare_activation(GgmlType::Q4_K, &[0.5; 256]);
        assert!(AmxActs::from_prepared(std::array::from_fn(|t| &kinds[t])).is_none());
        let f: Vec<PreparedRow> = (0..TILE)
            .map(|_| prepare_activation(GgmlType::F32, &[0.5; 64]))
            .collect();
        assert!(AmxActs::from_prepared(std::array::from_fn(|t| &f[t])).is_none());
    }
}
