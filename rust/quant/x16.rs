//! Q4_0, Q8_0, the K-quants and IQ4_XS weights repacked after load, 16 rows at a time (AVX-512 CPUs): the
//! layout the one-token and few-token kernels stream fastest, as llama.cpp repacks for its
//! AVX-512/AMX paths. This module holds the layout and the Q4_0 / Q8_0 kernels; the K-quants'
//! are in `x16_q2k`, `x16_q3k`, `x16_k32` (Q4_K, Q5_K), `x16_q6k` and `x16_iq4xs`.
//!
//! A chunk of 16 rows of `nb` blocks keeps its bytes, reordered by block column: block column
//! `b` is `16 x block size` bytes, for Q4_0 and Q8_0 the 16 rows' f16 scales (`2 r`), then
//! `qs / 4` parts of 64 bytes (`qs` = a block's quant bytes: 16 for Q4_0, 32 for Q8_0), part
//! `j` holding bytes `4 j .. 4 j + 4` of each row's quants (`32 + 64 j + 4 r`); see [`Layout`]. One 64-byte load is then 16 rows
//! x 4 bytes in the dword lanes `vpdpbusd` sums, one row per lane, and the 16 rows' scales are
//! one vector: the float half runs once per block for 16 rows instead of once per row, and
//! nothing is transposed. For the AMX tiles the parts are the B operand as they are (Q8_0) or
//! after splitting nibbles (Q4_0).
//!
//! Bits: row `r`'s lane `b % 8` gets `(d_w * d_x) * isum` block after block and the 8 lanes
//! are reduced by `simd::reduce8`'s order, exactly the row kernels' arithmetic (the tests
//! compare every result with `dispatch::dot`).

use super::amx::TILE;
use super::block::Scale;
use super::q4_0::{Q4Aux, LANE_BLOCK, QK};
use super::q8_0::{BlockQ8_0, Q8Aux};
use super::simd::BLOCK_LANES;
use super::GgmlType;

/// Rows per repacked chunk.
pub const ROWS: usize = 16;

/// Set to `0` to keep Q4_0 weights in the file's layout (and their pages shared with other
/// processes that map the file): the repacked copy is private memory of each process.
pub const REPACK_ENV: &str = "LLAMA_RS_REPACK";

/// Whether a `rows`-row weight of type `ty` is repacked here (`weights::RepackPlan`): Q4_0, Q8_0,
/// the K-quants or IQ4_XS in whole chunks of 16 rows, on a CPU running the AVX-512 kernels,
/// unless [`REPACK_ENV`] is `0`. Where AMX runs, the types whose tile kernel reads the file's
/// layout (Q4_K, Q5_K, Q6_K: every tile kernel but Q4_0's and Q8_0's) stay in it.
pub fn wanted(ty: GgmlType, rows: usize) -> bool {
    use std::sync::OnceLock;
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| {
        std::env::var(REPACK_ENV).map_or(true, |v| v.trim() != "0") && super::simd::has_avx512()
    });
    let tiles_read_repacked = matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0);
    let amx_reads_rows = !tiles_read_repacked && super::has_amx_kernel(ty);
    allowed && layout(ty).is_some() && !amx_reads_rows && rows > 0 && rows.is_multiple_of(ROWS)
}

/// How a repacked type's block is cut into the pieces a chunk interleaves: a `head` of 0 or 2
/// bytes at offset `head_at` of the block (an f16 scale: the 16 rows' heads side by side open
/// the column), then the block's other bytes as `words` dwords, word `order[j]` (word `j` if
/// `order` is empty) of the 16 rows side by side in 64 bytes ("part" `j`): the parts in the
/// order the kernel reads them, so that it streams each column front to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub head: usize,
    pub head_at: usize,
    pub words: usize,
    pub order: &'static [u8],
}

impl Layout {
    /// Bytes of one block.
    pub const fn block(self) -> usize {
        self.head + 4 * self.words
    }
    /// Bytes of one block column of a chunk (16 blocks).
    pub const fn column(self) -> usize {
        ROWS * self.block()
    }
    /// Offset of part `j` within a column.
    pub const fn part(self, j: usize) -> usize {
        ROWS * self.head + 64 * j
    }
    /// Offset within a block of the word that part `j` holds (the head skipped).
    pub const fn word(self, j: usize) -> usize {
        let w = if self.order.is_empty() {
            j
        } else {
            self.order[j] as usize
        };
        if 4 * w >= self.head_at {
            4 * w + self.head
        } else {
            4 * w
        }
    }
}

/// Q4_0: f16 scale, 16 quant bytes.
pub const Q4_0: Layout = Layout {
    head: 2,
    head_at: 0,
    order: &[],
    words: 4,
};
/// Q8_0: f16 scale, 32 quant bytes.
pub const Q8_0: Layout = Layout {
    head: 2,
    head_at: 0,
    order: &[],
    words: 8,
};
/// Q4_K: its 144 bytes as 36 dwords (`d | dmin << 16`, the three words of packed scales,
/// then the 32 words of quants).
pub const Q4_K: Layout = Layout {
    head: 0,
    head_at: 0,
    order: &[],
    words: 36,
};
/// Q5_K: its 176 bytes as 44 dwords (`d | dmin << 16`, the three words of packed scales, 8 of
/// `qh`, 32 of quants) in `x16_k32`'s reading order: the head and scales, then each `qh` word
/// `k` before quant word `k` of chunk 0 (their first use), then chunks 1..4.
pub const Q5_K: Layout = Layout {
    head: 0,
    head_at: 0,
    words: 44,
    order: &Q5_K_ORDER,
};
const Q5_K_ORDER: [u8; 44] = {
    let mut o = [0u8; 44];
    let mut j = 0;
    while j < 44 {
        o[j] = match j {
            0..4 => j,
            4..20 if j % 2 == 0 => 4 + (j - 4) / 2, // qh word k
            4..20 => 12 + (j - 5) / 2,              // chunk 0, quant word k
            _ => j,                                 // chunks 1..4
        } as u8;
        j += 1;
    }
    o
};
/// Q2_K: its 84 bytes as 21 dwords, in `x16_q2k`'s reading order: the last word (`d | dmin <<
/// 16`), then the file's order (4 words of scales, 16 of levels).
pub const Q2_K: Layout = Layout {
    head: 0,
    head_at: 0,
    words: 21,
    order: &Q2_K_ORDER,
};
const Q2_K_ORDER: [u8; 21] = {
    let mut o = [20u8; 21];
    let mut j = 1;
    while j < 21 {
        o[j] = (j - 1) as u8;
        j += 1;
    }
    o
};
/// Q3_K: the f16 `d` at the block's end (byte 108), then 27 dwords (words 0..8 `hmask`, 8..24
/// `qs`, 24..27 the packed scales) in `x16_q3k`'s reading order: the scales, then each `hmask`
/// word `g` before the `qs` word `g` of half 0 (their first use), then half 1's `qs` words.
pub const Q3_K: Layout = Layout {
    head: 2,
    head_at: 108,
    words: 27,
    order: &Q3_K_ORDER,
};
const Q3_K_ORDER: [u8; 27] = {
    let mut o = [0u8; 27];
    let mut j = 0;
    while j < 27 {
        o[j] = match j {
            0..3 => 24 + j,                     // scales
            3..19 if j % 2 == 1 => (j - 3) / 2, // hmask word g
            3..19 => 8 + (j - 4) / 2,           // half 0, qs word g
            _ => 16 + (j - 19),                 // half 1
        } as u8;
        j += 1;
    }
    o
};
/// IQ4_XS: its 136 bytes as 34 dwords in the file's order (`d | scales_h << 16`, `scales_l`,
/// then the 32 words of indices).
pub const IQ4_XS: Layout = Layout {
    head: 0,
    head_at: 0,
    order: &[],
    words: 34,
};
/// Q6_K: the f16 `d` at the block's end (byte 208), then 52 dwords (words 0..32 `ql`, 32..48
/// `qh`, 48..52 the int8 scales) in `x16_q6k`'s reading order: the scales, then per half `h`
/// and 4-weight group `g` the two `ql` words and the `qh` word of those weights.
pub const Q6_K: Layout = Layout {
    head: 2,
    head_at: 208,
    words: 52,
    order: &Q6_K_ORDER,
};
const Q6_K_ORDER: [u8; 52] = {
    let mut o = [
        48, 49, 50, 51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut i = 0;
    while i < 16 {
        let (h, g) = (i / 8, i % 8);
        o[4 + 3 * i] = (16 * h + g) as u8;
        o[5 + 3 * i] = (16 * h + 8 + g) as u8;
        o[6 + 3 * i] = (32 + 8 * h + g) as u8;
        i += 1;
    }
    o
};
const _: () = assert!(
    Q6_K.block() == 210
        && Q5_K.block() == 176
        && Q4_K.block() == 144
        && IQ4_XS.block() == 136
        && Q3_K.block() == 110
        && Q2_K.block() == 84
        && Q4_0.block() == 18
);

/// Offset of part 0 in the Q4_0 and Q8_0 layouts (after the 16 rows' f16 scales).
const PART: usize = Q4_0.part(0);

/// The repacked layout of `ty`, for the types that have one.
pub fn layout(ty: GgmlType) -> Option<Layout> {
    match ty {
        GgmlType::Q4_0 => Some(Q4_0),
        GgmlType::Q8_0 => Some(Q8_0),
        GgmlType::Q4_K => Some(Q4_K),
        GgmlType::Q5_K => Some(Q5_K),
        GgmlType::Q6_K => Some(Q6_K),
        GgmlType::IQ4_XS => Some(IQ4_XS),
        GgmlType::Q2_K => Some(Q2_K),
        GgmlType::Q3_K => Some(Q3_K),
        _ => None,
    }
}

/// Repacks 16 GGUF rows (`src`, `row_blocks` blocks of layout `l` each) into `dst` (same
/// length).
pub fn repack(src: &[u8], row_blocks: usize, l: Layout, dst: &mut [u8]) {
    assert_eq!(src.len(), row_blocks * l.column(), "repack: 16 rows");
    assert_eq!(dst.len(), src.len(), "repack: output length");
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx512() && src.len() < i32::MAX as usize {
        // SAFETY: checked just above.
        return unsafe { repack_avx512(src, row_blocks, l, dst) };
    }
    repack_scalar(src, row_blocks, l, dst)
}

/// [`repack`], byte by byte.
pub fn repack_scalar(src: &[u8], row_blocks: usize, l: Layout, dst: &mut [u8]) {
    let (bb, h, at) = (l.block(), l.head, l.head_at);
    assert_eq!(src.len(), row_blocks * l.column(), "repack: 16 rows");
    assert_eq!(dst.len(), src.len(), "repack: output length");
    for (b, col) in dst.chunks_exact_mut(l.column()).enumerate() {
        for r in 0..ROWS {
            let blk = &src[(r * row_blocks + b) * bb..][..bb];
            col[h * r..h * (r + 1)].copy_from_slice(&blk[at..at + h]);
            for j in 0..l.words {
                let (o, w) = (l.part(j) + 4 * r, l.word(j));
                col[o..o + 4].copy_from_slice(&blk[w..w + 4]);
            }
        }
    }
}

/// [`repack`] with gathers: each piece of a block column (the scales, each part) is one
/// 16-lane gather from the 16 rows.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `src.len() < 2^31` (32-bit gather offsets).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
unsafe fn repack_avx512(src: &[u8], row_blocks: usize, l: Layout, dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let bb = l.block();
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((row_blocks * bb) as i32),
    );
    for b in 0..row_blocks {
        // Every dword read lies within its block.
        let base = src.as_ptr().add(b * bb);
        let col = dst.as_mut_ptr().add(b * l.column());
        if l.head == 2 {
            // Scales: the dword starting at the head (its low half kept) or, for a head at
            // the block's end, the one ending there (its high half).
            let d = if l.head_at == 0 {
                _mm512_i32gather_epi32::<1>(rows, base.cast())
            } else {
                let d = _mm512_i32gather_epi32::<1>(rows, base.add(l.head_at - 2).cast());
                _mm512_srli_epi32::<16>(d)
            };
            _mm256_storeu_si256(col.cast(), _mm512_cvtepi32_epi16(d));
        }
        for j in 0..l.words {
            let q = _mm512_i32gather_epi32::<1>(rows, base.add(l.word(j)).cast());
            _mm512_storeu_si512(col.add(l.part(j)).cast(), q);
        }
    }
}

/// The inverse of [`repack`]: the 16 rows in GGUF order.
pub fn unpack(src: &[u8], row_blocks: usize, l: Layout, dst: &mut [u8]) {
    assert_eq!(src.len(), row_blocks * l.column(), "unpack: 16 rows");
    assert_eq!(dst.len(), src.len(), "unpack: output length");
    let bb = l.block();
    for r in 0..ROWS {
        row(
            src,
            row_blocks,
            l,
            r,
            &mut dst[r * row_blocks * bb..(r + 1) * row_blocks * bb],
        );
    }
}

/// Row `r` (0..16) of a repacked chunk (`nb` blocks per row) in GGUF order, into `dst`.
pub fn row(chunk: &[u8], nb: usize, l: Layout, r: usize, dst: &mut [u8]) {
    let (bb, h) = (l.block(), l.head);
    assert!(
        r < ROWS && chunk.len() == nb * l.column() && dst.len() == nb * bb,
        "row: shapes"
    );
    for b in 0..nb {
        let col = &chunk[b * l.column()..(b + 1) * l.column()];
        let o = &mut dst[b * bb..(b + 1) * bb];
        o[l.head_at..l.head_at + h].copy_from_slice(&col[h * r..h * (r + 1)]);
        for j in 0..l.words {
            let (s, w) = (l.part(j) + 4 * r, l.word(j));
            o[w..w + 4].copy_from_slice(&col[s..s + 4]);
        }
    }
}

/// Where block `l` of a group of 8 sits in `Q4Aux`'s `LANE_BLOCK` order.
const AUX_LANE: [usize; BLOCK_LANES] = {
    let mut inv = [0; BLOCK_LANES];
    let mut l = 0;
    while l < BLOCK_LANES {
        inv[LANE_BLOCK[l]] = l;
        l += 1;
    }
    inv
};

/// Token `x`'s f32 scale and `8 * sum(q)` of block `b`, from its multi-row side data.
#[inline(always)]
fn aux_block(aux: &Q4Aux, b: usize) -> (f32, i32) {
    let i = b / BLOCK_LANES * BLOCK_LANES + AUX_LANE[b % BLOCK_LANES];
    aux.block(i)
}

/// `out[r][n]` = row `r` of a repacked Q4_0 chunk (`nb` blocks per row) against token `n`, for
/// `N` tokens at once (each 64-byte part unpacked once for all of them).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI and F16C (`simd::has_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_avx512<const N: usize>(
    chunk: &[u8],
    nb: usize,
    xs: [&[BlockQ8_0]; N],
    aux: [&Q4Aux; N],
) -> [[f32; N]; ROWS] {
    use std::arch::x86_64::*;
    const COLUMN: usize = Q4_0.column();
    assert_eq!(chunk.len(), nb * COLUMN, "rows_avx512: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "rows_avx512: activation length"
    );
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * COLUMN);
        super::simd::prefetch_column(hints, col, COLUMN);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for j in 0..4 {
            let z = _mm512_loadu_si512(col.add(PART + 64 * j).cast());
            lo[j] = _mm512_and_si512(z, low);
            hi[j] = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
        }
        for n in 0..N {
            // Weights j and j + 16 of a row share byte j: the low nibbles meet the token's
            // quants 0..16, the high ones 16..32, four per dword.
            let q = xs[n][b].qs.as_ptr().cast::<i32>();
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for j in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, lo[j], _mm512_set1_epi32(q.add(j).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(
                    s1,
                    hi[j],
                    _mm512_set1_epi32(q.add(4 + j).read_unaligned()),
                );
            }
            let (dx, s8) = aux_block(aux[n], b);
            // The nibbles are q, the weights q - 8: subtract 8 * sum(x), exact in i32.
            add_block(&mut acc[n][b % BLOCK_LANES], dw, dx, s0, s1, s8);
        }
    }
    reduce_rows(&acc)
}

/// One block of 16 rows into their lane: `lane += (d_w * d_x) * (s0 + s1 - correction)`, the
/// row kernels' arithmetic (the integer part exact in i32).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_block(
    lane: &mut std::arch::x86_64::__m512,
    dw: std::arch::x86_64::__m512,
    dx: f32,
    s0: std::arch::x86_64::__m512i,
    s1: std::arch::x86_64::__m512i,
    correction: i32,
) {
    use std::arch::x86_64::*;
    let isum = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(correction));
    let term = _mm512_mul_ps(
        _mm512_mul_ps(dw, _mm512_set1_ps(dx)),
        _mm512_cvtepi32_ps(isum),
    );
    *lane = _mm512_add_ps(*lane, term);
}

/// `lane += (d * dx) * isum`: a super-block's float step, 16 rows at once (`q4_0::combine` and
/// `kquant_qx::combine`, as the row kernels of Q3_K, Q6_K and IQ4_XS take it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn add_scaled(
    lane: &mut std::arch::x86_64::__m512,
    d: std::arch::x86_64::__m512,
    dx: f32,
    isum: std::arch::x86_64::__m512i,
) {
    use std::arch::x86_64::*;
    let dx = _mm512_set1_ps(dx);
    *lane = _mm512_add_ps(
        *lane,
        _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(isum)),
    );
}

/// `lane += (d * dx) * isum - (dmin * dx) * msum`: `kquant_dot::combine` (Q2_K, Q4_K, Q5_K), 16
/// rows at once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn add_scaled_min(
    lane: &mut std::arch::x86_64::__m512,
    (d, dmin): (std::arch::x86_64::__m512, std::arch::x86_64::__m512),
    dx: f32,
    isum: std::arch::x86_64::__m512i,
    msum: std::arch::x86_64::__m512i,
) {
    use std::arch::x86_64::*;
    let dx = _mm512_set1_ps(dx);
    let term = _mm512_sub_ps(
        _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(isum)),
        _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(msum)),
    );
    *lane = _mm512_add_ps(*lane, term);
}

/// `vpshufb` controls that put byte `k` of each dword in that dword, zero-extended.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn byte_of_each_dword() -> [std::arch::x86_64::__m512i; 4] {
    use std::arch::x86_64::*;
    std::array::from_fn(|k| {
        let c = |i: i32| (0x8080_8000u32 as i32) | (4 * i + k as i32);
        _mm512_broadcast_i32x4(_mm_setr_epi32(c(0), c(1), c(2), c(3)))
    })
}

/// [`reduce_rows`] after a super-block kernel's last block: the row driver of the K-quants (and
/// IQ4_XS) pads the last group of 8 blocks with zero blocks, which add `+0.0` to their lanes
/// (which can turn a `-0.0` lane into `+0.0`), so the repacked kernels do too.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn pad_and_reduce_rows<const N: usize>(
    mut acc: [[std::arch::x86_64::__m512; BLOCK_LANES]; N],
    nb: usize,
) -> [[f32; N]; ROWS] {
    use std::arch::x86_64::*;
    for b in nb..nb.div_ceil(BLOCK_LANES) * BLOCK_LANES {
        for a in acc.iter_mut() {
            a[b % BLOCK_LANES] = _mm512_add_ps(a[b % BLOCK_LANES], _mm512_setzero_ps());
        }
    }
    reduce_rows(&acc)
}

/// `out[r][n]`: `simd::reduce8`'s order over each token's 8 lane accumulators, 16 rows at once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn reduce_rows<const N: usize>(
    acc: &[[std::arch::x86_64::__m512; BLOCK_LANES]; N],
) -> [[f32; N]; ROWS] {
    use std::arch::x86_64::*;
    let mut out = [[0f32; N]; ROWS];
    for (n, a) in acc.iter().enumerate() {
        let s = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
            _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
        );
        let mut v = [0f32; ROWS];
        _mm512_storeu_ps(v.as_mut_ptr(), s);
        for (o, x) in out.iter_mut().zip(v) {
            o[n] = x;
        }
    }
    out
}

/// [`rows_avx512`] for a repacked Q8_0 chunk: `vpdpbusd` multiplies unsigned bytes, so each
/// weight goes in as `w + 128` (its sign bit flipped) and `128 * sum(x)` comes off, exactly.
///
/// # Safety
/// As [`rows_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn rows_q8_avx512<const N: usize>(
    chunk: &[u8],
    nb: usize,
    xs: [&[BlockQ8_0]; N],
    aux: [&Q8Aux; N],
) -> [[f32; N]; ROWS] {
    use std::arch::x86_64::*;
    const COLUMN: usize = Q8_0.column();
    assert_eq!(chunk.len(), nb * COLUMN, "rows_q8_avx512: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "rows_q8_avx512: activation length"
    );
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    let hints = super::simd::column_hints::<N>();
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * COLUMN);
        super::simd::prefetch_column(hints, col, PART);
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(col.cast()));
        let u: [__m512i; QK / 4] = std::array::from_fn(|j| {
            super::simd::prefetch_column(hints, col.add(PART + 64 * j), 64);
            _mm512_xor_si512(_mm512_loadu_si512(col.add(PART + 64 * j).cast()), flip)
        });
        for n in 0..N {
            let q = xs[n][b].qs.as_ptr().cast::<i32>();
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for j in (0..QK / 4).step_by(2) {
                s0 = _mm512_dpbusd_epi32(s0, u[j], _mm512_set1_epi32(q.add(j).read_unaligned()));
                let x1 = _mm512_set1_epi32(q.add(j + 1).read_unaligned());
                s1 = _mm512_dpbusd_epi32(s1, u[j + 1], x1);
            }
            let (dx, s128) = aux[n].block(b);
            add_block(&mut acc[n][b % BLOCK_LANES], dw, dx, s0, s1, s128);
        }
    }
    reduce_rows(&acc)
}

/// Tokens for the tile kernel over repacked weights: 16 tokens' q8_0 quants row by row (the
/// A operand: `a[(b * 16 + t) * 32 + k]`) and their scales `d[b][t]`.
pub struct TokenTiles {
    a: Vec<i8>,
    d: Vec<[f32; TILE]>,
}

impl TokenTiles {
    pub fn new(rows: [&[BlockQ8_0]; TILE]) -> TokenTiles {
        let nb = rows[0].len();
        assert!(
            rows.iter().all(|r| r.len() == nb),
            "TokenTiles: rows differ"
        );
        let mut a = vec![0i8; nb * TILE * QK];
        let mut d = vec![[0f32; TILE]; nb];
        for (t, row) in rows.iter().enumerate() {
            for (b, yb) in row.iter().enumerate() {
                a[(b * TILE + t) * QK..][..QK].copy_from_slice(&yb.qs);
                d[b][t] = yb.d.get();
            }
        }
        TokenTiles { a, d }
    }

    pub fn blocks(&self) -> usize {
        self.d.len()
    }
}

/// The tile registers for [`tiles`]: 1 = B (a block column's quants as bytes, 8 rows of 64),
/// 2 = A (a token group's block, 16 x 32 bytes), 5 = C (16 x 16 i32).
const CONFIG: super::amx::TileConfig = {
    let (a, b, c) = ((16, QK as u16), ((QK / 4) as u8, 64), (16, 64));
    super::amx::TileConfig::new(&[(0, 0), b, a, (0, 0), (0, 0), c])
};

thread_local! {
    /// [`tiles`]' Q4_0 B operands for the chunk at hand, one per block column; reused chunk
    /// after chunk (every block a chunk reads is rewritten first).
    static UNPACKED: std::cell::Cell<Vec<[[u8; 64]; 8]>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `out[g][r][t]` = row `r` of a repacked chunk against token `t` of group `g`, on AMX tiles:
/// the weights are the B operand (a Q8_0 column's 8 parts are B's 8 rows of 64 bytes as they
/// are; a Q4_0 column's 4 parts split into low and high nibbles), the tokens the A operand, so
/// C is token by row and the float half takes the 16 rows' scales as one vector, as
/// [`rows_avx512`] does. `Q8`: Q8_0 weights, else Q4_0.
///
/// One group at a time, lane by lane: lane `l` (of the row kernels' 8, `b % 8`) takes blocks
/// `l, l + 8, ...` in order, so its 16 tokens' sums stay in registers; with the sums of
/// every lane in memory instead (all lanes in turn, three groups sharing each B load) the
/// kernel ran 10-40% slower on Q8_0 and no faster on Q4_0 (`bench_repacked_tiles`).
///
/// # Safety
/// The CPU must have AMX-INT8 with the tile permission granted and AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,amx-tile,amx-int8")]
pub(crate) unsafe fn tiles<const Q8: bool>(
    chunk: &[u8],
    nb: usize,
    groups: &[&TokenTiles],
    out: &mut [[[f32; TILE]; TILE]],
) {
    use std::arch::x86_64::*;
    use std::simd::prelude::*;
    let column = if Q8 { Q8_0 } else { Q4_0 }.column();
    assert_eq!(chunk.len(), nb * column, "tiles: chunk length");
    assert_eq!(groups.len(), out.len());
    assert!(
        groups.iter().all(|g| g.blocks() == nb),
        "tiles: row lengths differ"
    );
    let mut unpacked = UNPACKED.with(|c| c.take());
    if !Q8 {
        unpacked.resize(nb, [[0u8; 64]; 8]);
        let (low, eight) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(8));
        for (b, bq) in unpacked.iter_mut().enumerate() {
            let col = chunk.as_ptr().add(b * column);
            for j in 0..4 {
                let z = _mm512_loadu_si512(col.add(PART + 64 * j).cast());
                let lo = _mm512_sub_epi8(_mm512_and_si512(z, low), eight);
                _mm512_storeu_si512(bq[j].as_mut_ptr().cast(), lo);
                let h = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
                _mm512_storeu_si512(bq[4 + j].as_mut_ptr().cast(), _mm512_sub_epi8(h, eight));
            }
        }
    }
    CONFIG.load();
    let mut c = [[0i32; TILE]; TILE];
    for (g, o) in groups.iter().zip(out.iter_mut()) {
        // lanes[t][l]: token t's lane l, its 16 rows in the vector (as `rows_avx512`'s acc).
        let mut lanes = [[_mm512_setzero_ps(); BLOCK_LANES]; TILE];
        for l in 0..BLOCK_LANES {
            let mut acc = [f32x16::splat(0.0); TILE];
            for b in (l..nb).step_by(BLOCK_LANES) {
                let col = chunk.as_ptr().add(b * column);
                if Q8 {
                    _tile_loadd::<1>(col.add(PART).cast(), 64);
                } else {
                    _tile_loadd::<1>(unpacked[b].as_ptr().cast(), 64);
                }
                _tile_zero::<5>();
                _tile_loadd::<2>(g.a[b * TILE * QK..].as_ptr().cast(), QK);
                _tile_dpbssd::<5, 2, 1>();
                _tile_stored::<5>(c.as_mut_ptr().cast(), 64);
                let dw = f32x16::from(_mm512_cvtph_ps(_mm256_loadu_si256(col.cast())));
                let d = &g.d[b];
                for t in 0..TILE {
                    let isum = i32x16::from_array(c[t]).cast::<f32>();
                    acc[t] += (dw * f32x16::splat(d[t])) * isum;
                }
            }
            for (lane, a) in lanes.iter_mut().zip(acc) {
                lane[l] = a.into();
            }
        }
        *o = reduce_rows(&lanes);
    }
    UNPACKED.with(|c| c.set(unpacked));
    _tile_release();
}

/// Test helpers the x16 K-quant kernels' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{repack, repack_scalar, unpack, Layout};
    use crate::quant::q8_k::{BlockQ8K, QK_K};
    use crate::quant::tests_util::Rng;

    /// `n` Q8_K activation rows of `nb` super-blocks (scaled 1e-3 .. 1e3 when `extreme`).
    pub(crate) fn q8k_tokens(
        n: usize,
        nb: usize,
        rng: &mut Rng,
        extreme: bool,
    ) -> Vec<Vec<BlockQ8K>> {
        (0..n)
            .map(|t| {
                let scale = if extreme {
                    10f32.powi((t % 7) as i32 - 3)
                } else {
                    1.0
                };
                let x: Vec<f32> = (0..nb * QK_K).map(|_| rng.normal() * scale).collect();
                let mut q = vec![<BlockQ8K as crate::quant::block::Activation>::ZERO; nb];
                crate::quant::q8_k::quantize_row(&x, &mut q);
                q
            })
            .collect()
    }

    /// Asserts that `out`, a repacked K-quant kernel's 16 rows x `N` tokens, has
    /// `dispatch::dot`'s bits for every row of `w` (`nb` super-blocks each) and token of `xs`.
    pub(crate) fn assert_row_kernel_bits<B, const N: usize>(
        out: &[[f32; N]; super::ROWS],
        w: &[B],
        nb: usize,
        xs: &[Vec<BlockQ8K>],
        ctx: &str,
    ) where
        B: crate::quant::block::Family<Act = BlockQ8K>,
    {
        for (r, o) in out.iter().enumerate() {
            for (n, v) in o.iter().enumerate() {
                let want = crate::quant::dispatch::dot::<B>(&w[r * nb..(r + 1) * nb], &xs[n]);
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "{ctx} N={N} r={r} n={n}: {v} vs {want}"
                );
            }
        }
    }

    /// 16 rows (`src`, `nb` blocks each) repacked in layout `l`, after checking that the
    /// vector repack is the scalar one and that unpacking gives `src` back.
    pub(crate) fn repacked_checked(src: &[u8], nb: usize, l: Layout) -> Vec<u8> {
        let mut p = vec![0u8; src.len()];
        repack(src, nb, l, &mut p);
        let mut slow = vec![0u8; p.len()];
        repack_scalar(src, nb, l, &mut slow);
        assert_eq!(slow, p, "nb={nb}: the vector repack is the scalar one");
        let mut back = vec![0u8; p.len()];
        unpack(&p, nb, l, &mut back);
        assert_eq!(back, src, "nb={nb}: unpacked");
        p
    }

    /// A repacked kernel over Q8_K activations, as its tests and its bench see it.
    pub(crate) trait KernelUnderTest {
        type Block: crate::quant::block::Family<Act = BlockQ8K> + crate::quant::block::Pod;
        /// The tokens as the kernel takes them (their blocks, or the blocks and side data).
        type Acts;
        const NAME: &'static str;
        const LAYOUT: Layout;
        /// Byte offsets of the block's f16 scales.
        const HALVES: &'static [usize];
        fn prepare(xs: &[Vec<BlockQ8K>]) -> Self::Acts;
        /// 16 rows x the first `N` tokens of the repacked chunk `p` (`nb` super-blocks per row).
        ///
        /// # Safety
        /// The CPU must have AVX-512 (`simd::has_avx512`).
        #[cfg(target_arch = "x86_64")]
        unsafe fn run<const N: usize>(
            p: &[u8],
            nb: usize,
            acts: &Self::Acts,
        ) -> [[f32; N]; super::ROWS];
    }

    /// The tests of a kernel `$rows::<N>(chunk, nb, [&[BlockQ8K]; N])` over blocks `$block`
    /// (f16 scales at byte offsets `$halves`): [`check_kernel`] as `$check`, and its
    /// [`bench_kernel`] report as the ignored `$bench`.
    macro_rules! q8k_kernel_tests {
        ($block:ty, $name:literal, $layout:expr, $halves:expr, $rows:ident, $seed:literal,
         $check:ident, $bench:ident) => {
            struct Kernel;
            impl $crate::quant::x16::test_support::KernelUnderTest for Kernel {
                type Block = $block;
                type Acts = Vec<Vec<$crate::quant::q8_k::BlockQ8K>>;
                const NAME: &'static str = $name;
                const LAYOUT: $crate::quant::x16::Layout = $layout;
                const HALVES: &'static [usize] = &$halves;
                fn prepare(xs: &[Vec<$crate::quant::q8_k::BlockQ8K>]) -> Self::Acts {
                    xs.to_vec()
                }
                #[cfg(target_arch = "x86_64")]
                unsafe fn run<const N: usize>(
                    p: &[u8],
                    nb: usize,
                    xs: &Self::Acts,
                ) -> [[f32; N]; $crate::quant::x16::ROWS] {
                    $rows::<N>(p, nb, std::array::from_fn(|n| &xs[n][..]))
                }
            }

            #[test]
            fn $check() {
                $crate::quant::x16::test_support::check_kernel::<Kernel>($seed);
            }

            #[test]
            #[ignore]
            #[cfg(target_arch = "x86_64")]
            fn $bench() {
                $crate::quant::x16::test_support::bench_kernel::<Kernel>();
            }
        };
    }
    pub(crate) use q8k_kernel_tests;

    /// A report, not a check (`cargo test --release --lib x16_ -- --ignored --nocapture`): one
    /// thread, the row kernel and kernel `K` at 1, 4 and 8 tokens, in GB/s of weights per
    /// token, on a 1024 x 4096 matrix held in cache and a 32768 x 4096 one streamed from memory.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn bench_kernel<K: KernelUnderTest>() {
        use crate::quant::block::{bytes_of, view, zeroed, Family};
        use crate::quant::dispatch;
        use std::time::Instant;
        if !crate::quant::simd::has_avx512() {
            return eprintln!("no AVX-512 here");
        }
        fn best(mut f: impl FnMut()) -> f64 {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        }
        let mut rng = Rng::new(9);
        for rows in [1024, 32768] {
            let cols = 4096;
            let nb = cols / QK_K;
            let wf: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.02).collect();
            let mut w = vec![zeroed::<K::Block>(); rows * nb];
            dispatch::quantize::<K::Block>(&wf, &mut w);
            let src = bytes_of(&w[..]);
            let chunk = K::LAYOUT.column() * nb;
            let mut p = vec![0u8; src.len()];
            for (d, s) in p.chunks_mut(chunk).zip(src.chunks(chunk)) {
                repack(s, nb, K::LAYOUT, d);
            }
            let xs = q8k_tokens(8, nb, &mut rng, false);
            let aux = K::Block::row_aux(&xs[0]).unwrap();
            let acts = K::prepare(&xs);
            let gb = src.len() as f64 / 1e9;
            let mut out = vec![[0f32; 1]; rows];
            let t_rows = best(|| {
                dispatch::dot_rows::<K::Block, 1>(view(src), nb, [&xs[0]], Some([&aux]), &mut out)
            });
            let mut sink = 0f32;
            let mut pass = |n: usize| {
                best(|| {
                    for c in p.chunks(chunk) {
                        // SAFETY: checked above.
                        sink += unsafe {
                            match n {
                                1 => K::run::<1>(c, nb, &acts)[0][0],
                                4 => K::run::<4>(c, nb, &acts)[0][0],
                                _ => K::run::<8>(c, nb, &acts)[0][0],
                            }
                        };
                    }
                })
            };
            let (t1, t4, t8) = (pass(1), pass(4), pass(8));
            std::hint::black_box(sink);
            eprintln!(
                "{} {rows} x {cols} ({:.0} MB): rows 1 token {:.1} GB/s; repacked 1 token {:.1}, \
                 4 tokens {:.1}, 8 tokens {:.1} GB/s/token",
                K::NAME,
                gb * 1e3,
                gb / t_rows,
                gb / t1,
                4.0 * gb / t4,
                8.0 * gb / t8
            );
        }
    }

    /// `n` random blocks: every byte random (or, when `extreme`, one of `EXTREME_BYTES` half the
    /// time), then each f16 at `halves` finite (or one of `EXTREME_HALVES`).
    pub(crate) fn random_blocks<B: crate::quant::block::Pod>(
        n: usize,
        halves: &[usize],
        rng: &mut Rng,
        extreme: bool,
    ) -> Vec<B> {
        use crate::quant::tests_util::{finite_half, EXTREME_BYTES, EXTREME_HALVES};
        let mut w = vec![crate::quant::block::zeroed::<B>(); n];
        let size = std::mem::size_of::<B>();
        // SAFETY: B is Pod: any bytes are a valid block.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), n * size) };
        for blk in bytes.chunks_exact_mut(size) {
            for v in blk.iter_mut() {
                *v = if extreme && rng.next_u64().is_multiple_of(2) {
                    EXTREME_BYTES[(rng.next_u64() % 10) as usize]
                } else {
                    rng.next_u64() as u8
                };
            }
            for &at in halves {
                let h = if extreme {
                    EXTREME_HALVES[(rng.next_u64() % 9) as usize].to_le_bytes()
                } else {
                    finite_half(rng).0
                };
                blk[at..at + 2].copy_from_slice(&h);
            }
        }
        w
    }

    /// Repacking keeps every row, and kernel `K` gives `dispatch::dot`'s bits for every row and
    /// token, 1, 2, 3, 4 and 8 tokens at once, whole and partial groups of 8 super-blocks,
    /// random and extreme blocks and activations.
    pub(crate) fn check_kernel<K: KernelUnderTest>(seed: u64) {
        let mut rng = Rng::new(seed);
        let rows = |nb: usize, rng: &mut Rng, extreme: bool| {
            random_blocks::<K::Block>(super::ROWS * nb, K::HALVES, rng, extreme)
        };
        for nb in [1, 3, 8, 22] {
            let w = rows(nb, &mut rng, false);
            repacked_checked(crate::quant::block::bytes_of(&w), nb, K::LAYOUT);
        }
        if !crate::quant::simd::has_avx512() {
            return eprintln!("repacked {} kernel: skipped (CPU lacks AVX-512)", K::NAME);
        }
        #[cfg(target_arch = "x86_64")]
        {
            fn check<K: KernelUnderTest, const N: usize>(
                w: &[K::Block],
                p: &[u8],
                nb: usize,
                xs: &[Vec<BlockQ8K>],
                ctx: &str,
            ) {
                // SAFETY: the caller checked simd::has_avx512.
                let out = unsafe { K::run::<N>(p, nb, &K::prepare(xs)) };
                assert_row_kernel_bits(&out, w, nb, xs, ctx);
            }
            for nb in [1, 2, 7, 8, 9, 22] {
                for extreme in [false, true] {
                    let w = rows(nb, &mut rng, extreme);
                    let p = repacked_checked(crate::quant::block::bytes_of(&w), nb, K::LAYOUT);
                    let xs = q8k_tokens(8, nb, &mut rng, extreme);
                    let ctx = format!("{} nb={nb} extreme={extreme}", K::NAME);
                    check::<K, 1>(&w, &p, nb, &xs, &ctx);
                    check::<K, 2>(&w, &p, nb, &xs, &ctx);
                    check::<K, 3>(&w, &p, nb, &xs, &ctx);
                    check::<K, 4>(&w, &p, nb, &xs, &ctx);
                    check::<K, 8>(&w, &p, nb, &xs, &ctx);
                }
            }
            eprintln!("repacked {} kernel checked: avx512 ran", K::NAME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::{view, zeroed, Family};
    use crate::quant::q4_0::BlockQ4_0;
    use crate::quant::tests_util::{Rng, EXTREME_BYTES, EXTREME_HALVES};
    use crate::quant::{dispatch, simd};

    const TYPES: [GgmlType; 2] = [GgmlType::Q4_0, GgmlType::Q8_0];

    /// 16 rows of `nb` random (or extreme) raw blocks of layout `l` (an f16 scale first).
    fn rows(l: Layout, nb: usize, rng: &mut Rng, extreme: bool) -> Vec<u8> {
        let mut w: Vec<u8> = (0..ROWS * nb * l.block())
            .map(|_| {
                if extreme {
                    EXTREME_BYTES[(rng.next_u64() % 10) as usize]
                } else {
                    rng.next_u64() as u8
                }
            })
            .collect();
        for blk in w.chunks_exact_mut(l.block()) {
            let h = if extreme {
                EXTREME_HALVES[(rng.next_u64() % 9) as usize]
            } else {
                0x2000 | (rng.next_u64() as u16 & 0x0fff)
            };
            blk[..2].copy_from_slice(&h.to_le_bytes());
        }
        w
    }

    fn tokens(nb: usize, rng: &mut Rng, extreme: bool) -> Vec<Vec<BlockQ8_0>> {
        (0..TILE)
            .map(|t| {
                let scale = if extreme {
                    10f32.powi((t % 7) as i32 - 3)
                } else {
                    1.0
                };
                let x: Vec<f32> = (0..nb * QK).map(|_| rng.normal() * scale).collect();
                let mut q = vec![zeroed::<BlockQ8_0>(); nb];
                dispatch::quantize::<BlockQ8_0>(&x, &mut q);
                if extreme && t % 3 == 0 {
                    q[nb - 1].qs[5] = -128;
                }
                q
            })
            .collect()
    }

    #[test]
    fn repack_and_unpack_are_inverse() {
        let mut rng = Rng::new(9);
        for ty in TYPES {
            let l = layout(ty).unwrap();
            for nb in [1, 3, 8, 64] {
                let w = rows(l, nb, &mut rng, false);
                let mut p = vec![0u8; w.len()];
                repack(&w, nb, l, &mut p);
                assert_ne!(p, w);
                let mut back = vec![0u8; w.len()];
                unpack(&p, nb, l, &mut back);
                assert_eq!(back, w, "{ty} nb={nb}");
                let mut slow = vec![0u8; w.len()];
                repack_scalar(&w, nb, l, &mut slow);
                assert_eq!(slow, p, "{ty} nb={nb}: the vector repack is the scalar one");
            }
        }
    }

    /// Row `r` against token `t` by the row kernel of `ty`'s family.
    fn row_dot(ty: GgmlType, w: &[u8], nb: usize, r: usize, x: &[BlockQ8_0]) -> u32 {
        let bytes = &w[r * nb * layout(ty).unwrap().block()..][..nb * layout(ty).unwrap().block()];
        match ty {
            GgmlType::Q4_0 => dispatch::dot::<BlockQ4_0>(view(bytes), x).to_bits(),
            _ => dispatch::dot::<BlockQ8_0>(view(bytes), x).to_bits(),
        }
    }

    /// `N` tokens through the type's repacked row kernel.
    #[cfg(target_arch = "x86_64")]
    fn rows_n<const N: usize>(
        ty: GgmlType,
        p: &[u8],
        nb: usize,
        xs: [&[BlockQ8_0]; N],
    ) -> [[f32; N]; ROWS] {
        // SAFETY: the callers check simd::has_avx512.
        unsafe {
            match ty {
                GgmlType::Q4_0 => {
                    let aux: Vec<Q4Aux> = xs
                        .iter()
                        .map(|x| <BlockQ4_0>::row_aux(x).unwrap())
                        .collect();
                    rows_avx512::<N>(p, nb, xs, std::array::from_fn(|n| &aux[n]))
                }
                _ => {
                    let aux: Vec<Q8Aux> = xs
                        .iter()
                        .map(|x| <BlockQ8_0>::row_aux(x).unwrap())
                        .collect();
                    rows_q8_avx512::<N>(p, nb, xs, std::array::from_fn(|n| &aux[n]))
                }
            }
        }
    }

    /// Every kernel over repacked rows gives `dispatch::dot`'s bits for each (row, token).
    #[test]
    fn repacked_kernels_equal_the_row_kernels() {
        let mut rng = Rng::new(10);
        let (mut ran_vnni, mut ran_amx) = (false, false);
        for ty in TYPES {
            let l = layout(ty).unwrap();
            for nb in [1, 2, 7, 8, 9, 17, 64] {
                for extreme in [false, true] {
                    let w = rows(l, nb, &mut rng, extreme);
                    let mut p = vec![0u8; w.len()];
                    repack(&w, nb, l, &mut p);
                    // Four groups of 16 tokens, each its own.
                    let xs: Vec<Vec<BlockQ8_0>> =
                        (0..4).flat_map(|_| tokens(nb, &mut rng, extreme)).collect();
                    let want = |r: usize, t: usize| row_dot(ty, &w, nb, r, &xs[t]);
                    #[cfg(target_arch = "x86_64")]
                    if simd::has_avx512() {
                        ran_vnni = true;
                        let one = rows_n::<1>(ty, &p, nb, [&xs[3]]);
                        let four = rows_n::<4>(ty, &p, nb, std::array::from_fn(|k| &xs[k][..]));
                        for (r, (o1, o4)) in one.iter().zip(&four).enumerate() {
                            assert_eq!(o1[0].to_bits(), want(r, 3), "{ty} 1 token nb={nb} r={r}");
                            for (t, v) in o4.iter().enumerate() {
                                assert_eq!(
                                    v.to_bits(),
                                    want(r, t),
                                    "{ty} 4 tokens nb={nb} r={r} t={t}"
                                );
                            }
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    if simd::has_amx() {
                        ran_amx = true;
                        let g: Vec<TokenTiles> = (0..4)
                            .map(|k| TokenTiles::new(std::array::from_fn(|t| &xs[16 * k + t][..])))
                            .collect();
                        // A pass of three groups and a lone one; a lone group.
                        for n_groups in [4, 1] {
                            let groups: Vec<&TokenTiles> = g[..n_groups].iter().collect();
                            let mut out = vec![[[0f32; TILE]; TILE]; n_groups];
                            // SAFETY: checked just above.
                            unsafe {
                                if ty == GgmlType::Q8_0 {
                                    tiles::<true>(&p, nb, &groups, &mut out)
                                } else {
                                    tiles::<false>(&p, nb, &groups, &mut out)
                                }
                            };
                            for (k, o) in out.iter().enumerate() {
                                for (r, row) in o.iter().enumerate() {
                                    for (t, v) in row.iter().enumerate() {
                                        assert_eq!(
                                            v.to_bits(),
                                            want(r, 16 * k + t),
                                            "{ty} tiles nb={nb} g={k} r={r} t={t}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        eprintln!(
            "repacked Q4_0 / Q8_0 kernels checked: avx512 {}, amx {}",
            if ran_vnni {
                "ran"
            } else {
                "skipped (CPU lacks it)"
            },
            if ran_amx {
                "ran"
            } else {
                "skipped (CPU lacks it)"
            }
        );
    }
}

/// Repacked against row kernels, one thread, weights streamed from memory (a report, not a
/// check: `cargo test --release --lib x16::bench -- --ignored --nocapture`).
#[cfg(all(test, target_arch = "x86_64"))]
mod bench {
    use super::*;
    use crate::quant::block::{view, zeroed, Family};
    use crate::quant::q4_0::BlockQ4_0;
    use crate::quant::tests_util::{best_cpu_secs, Rng};
    use crate::quant::{dispatch, simd};
    use std::time::Instant;

    fn best(mut f: impl FnMut()) -> f64 {
        (0..4)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    }

    fn run<B: Family<Act = BlockQ8_0>>(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) {
        let (nb, l) = (cols / QK, layout(ty).unwrap());
        let mut w: Vec<u8> = (0..rows * nb * l.block())
            .map(|_| rng.next_u64() as u8)
            .collect();
        for blk in w.chunks_exact_mut(l.block()) {
            blk[..2].copy_from_slice(&(0x2000 | (rng.next_u64() as u16 & 0xfff)).to_le_bytes());
        }
        let chunk = ROWS * nb * l.block();
        let mut p = vec![0u8; w.len()];
        for (d, s) in p.chunks_mut(chunk).zip(w.chunks(chunk)) {
            repack(s, nb, l, d);
        }
        let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
        let mut xq = vec![zeroed::<BlockQ8_0>(); nb];
        dispatch::quantize::<BlockQ8_0>(&x, &mut xq);
        let aux = B::row_aux(&xq).unwrap();
        let (a4, a8) = (
            <BlockQ4_0>::row_aux(&xq).unwrap(),
            <BlockQ8_0>::row_aux(&xq).unwrap(),
        );
        let gb = w.len() as f64 / 1e9;
        let mut out = vec![[0f32; 1]; rows];
        let t_rows =
            best(|| dispatch::dot_rows::<B, 1>(view(&w), nb, [&xq], Some([&aux]), &mut out));
        let mut sink = 0f32;
        fn pass<const N: usize>(
            ty: GgmlType,
            p: &[u8],
            chunk: usize,
            nb: usize,
            xq: &[BlockQ8_0],
            a4: &Q4Aux,
            a8: &Q8Aux,
        ) -> f32 {
            let mut sink = 0f32;
            for c in p.chunks(chunk) {
                // SAFETY: the caller checks simd::has_avx512.
                sink += unsafe {
                    if ty == GgmlType::Q4_0 {
                        rows_avx512::<N>(c, nb, [xq; N], [a4; N])[0][0]
                    } else {
                        rows_q8_avx512::<N>(c, nb, [xq; N], [a8; N])[0][0]
                    }
                };
            }
            sink
        }
        let t1 = best(|| sink += pass::<1>(ty, &p, chunk, nb, &xq, &a4, &a8));
        let t4 = best(|| sink += pass::<4>(ty, &p, chunk, nb, &xq, &a4, &a8));
        let t8 = best(|| sink += pass::<8>(ty, &p, chunk, nb, &xq, &a4, &a8));
        std::hint::black_box(sink);
        eprintln!(
            "{ty} {rows} x {cols} ({:.0} MB): rows 1 token {:.1} GB/s, repacked 1 token {:.1} GB/s, \
             4 tokens {:.1}, 8 tokens {:.1} GB/s per token",
            gb * 1e3,
            gb / t_rows,
            gb / t1,
            4.0 * gb / t4,
            8.0 * gb / t8
        );
    }

    /// The tile kernel on one chunk of 16 rows x `cols` held in cache, against 4 and 32
    /// groups of 16 tokens (pp64, pp512), in G multiply-adds per second of this thread's CPU
    /// time (best of 5 passes).
    fn run_tiles(ty: GgmlType, cols: usize, rng: &mut Rng) {
        let (nb, l) = (cols / QK, layout(ty).unwrap());
        let mut w: Vec<u8> = (0..ROWS * nb * l.block())
            .map(|_| rng.next_u64() as u8)
            .collect();
        for blk in w.chunks_exact_mut(l.block()) {
            blk[..2].copy_from_slice(&(0x2000 | (rng.next_u64() as u16 & 0xfff)).to_le_bytes());
        }
        let mut chunk = vec![0u8; w.len()];
        repack(&w, nb, l, &mut chunk);
        let groups: Vec<TokenTiles> = (0..32)
            .map(|_| {
                let toks: Vec<Vec<BlockQ8_0>> = (0..TILE)
                    .map(|_| {
                        let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                        let mut xq = vec![zeroed::<BlockQ8_0>(); nb];
                        dispatch::quantize::<BlockQ8_0>(&x, &mut xq);
                        xq
                    })
                    .collect();
                TokenTiles::new(std::array::from_fn(|t| &toks[t][..]))
            })
            .collect();
        for ng in [4, 32] {
            let refs: Vec<&TokenTiles> = groups[..ng].iter().collect();
            let mut out = vec![[[0f32; TILE]; TILE]; ng];
            let reps = 16384 / ng;
            let best = best_cpu_secs(7, || {
                for _ in 0..reps {
                    crate::quant::vec_dot_tiles_x16(ty, &chunk, &refs, &mut out);
                }
            });
            let macs = (reps * ng * TILE * ROWS * cols) as f64;
            eprintln!(
                "repacked {ty} tiles, cols {cols}, groups {ng}: {:.0} GMAC/s",
                macs / best / 1e9
            );
        }
    }

    #[test]
    #[ignore]
    fn bench_repacked_tiles() {
        if !simd::has_amx() {
            return eprintln!("no AMX here");
        }
        let mut rng = Rng::new(5);
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            for cols in [2048, 8192] {
                run_tiles(ty, cols, &mut rng);
            }
        }
    }

    #[test]
    #[ignore]
    fn bench_repacked() {
        if !simd::has_avx512() {
            return eprintln!("no AVX-512 here");
        }
        let mut rng = Rng::new(4);
        for (rows, cols) in [(1024, 2048), (32768, 16384)] {
            run::<BlockQ4_0>(GgmlType::Q4_0, rows, cols, &mut rng);
            run::<BlockQ8_0>(GgmlType::Q8_0, rows, cols / 2, &mut rng);
        }
    }
}
