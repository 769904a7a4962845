//! Q4_0 weights repacked at load, 16 rows at a time (AVX-512 CPUs): the layout the one-token
//! and few-token kernels stream fastest, as llama.cpp repacks for its AVX-512/AMX paths.
//!
//! A chunk of 16 rows of `nb` blocks keeps its 16 x nb x 18 bytes, reordered by block column:
//! block column `b` is 288 bytes at `288 b`, the 16 rows' f16 scales (`2 r`), then four
//! 64-byte parts, part `j` holding bytes `4 j .. 4 j + 4` of each row's nibbles (`32 + 64 j +
//! 4 r`). One 64-byte load is then 16 rows x 8 weights in the dword lanes `vpdpbusd` sums,
//! one row per lane, and the 16 rows' scales are one vector: the float half runs once per
//! block for 16 rows instead of once per row, and no nibbles are transposed.
//!
//! Bits: row `r`'s lane `b % 8` gets `(d_w * d_x) * isum` block after block and the 8 lanes
//! are reduced by `simd::reduce8`'s order, exactly the row kernels' arithmetic (the tests
//! compare every result with `dispatch::dot`).

use super::amx::TILE;
use super::block::{bytes_of, view, Scale};
use super::q4_0::{BlockQ4_0, Q4Aux, LANE_BLOCK, QK};
use super::q8_0::BlockQ8_0;
use super::simd::BLOCK_LANES;

/// Rows per repacked chunk.
pub const ROWS: usize = 16;

/// Set to `0` to keep Q4_0 weights in the file's layout (and their pages shared with other
/// processes that map the file): the repacked copy is private memory of each process.
pub const REPACK_ENV: &str = "LLAMA_RS_REPACK";

/// Whether a `rows`-row weight of type `ty` is repacked at load here: Q4_0 (f16 scales) in
/// whole chunks of 16 rows, on a CPU running the AVX-512 kernels, unless [`REPACK_ENV`] is
/// `0`.
pub fn wanted(ty: super::GgmlType, rows: usize) -> bool {
    use std::sync::OnceLock;
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| {
        std::env::var(REPACK_ENV).map_or(true, |v| v.trim() != "0") && super::simd::has_avx512()
    });
    allowed && ty == super::GgmlType::Q4_0 && rows > 0 && rows.is_multiple_of(ROWS)
}
/// Bytes of one block column of a chunk (16 blocks).
pub const COLUMN: usize = ROWS * std::mem::size_of::<BlockQ4_0>();
/// Offset of part `j` (quant bytes `4 j .. 4 j + 4` of every row) within a column.
const PART: usize = ROWS * 2;

/// Repacks 16 GGUF Q4_0 rows (`src`, `row_blocks` blocks each) into `dst` (same length).
pub fn repack(src: &[u8], row_blocks: usize, dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        ROWS * row_blocks * COLUMN / ROWS,
        "repack: 16 rows"
    );
    assert_eq!(dst.len(), src.len(), "repack: output length");
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx512() && src.len() < i32::MAX as usize {
        // SAFETY: checked just above.
        return unsafe { repack_avx512(src, row_blocks, dst) };
    }
    repack_scalar(src, row_blocks, dst)
}

/// [`repack`], byte by byte.
pub fn repack_scalar(src: &[u8], row_blocks: usize, dst: &mut [u8]) {
    let blocks: &[BlockQ4_0] = view(src);
    assert_eq!(blocks.len(), ROWS * row_blocks, "repack: 16 rows");
    assert_eq!(dst.len(), src.len(), "repack: output length");
    for (b, col) in dst.chunks_exact_mut(COLUMN).enumerate() {
        for r in 0..ROWS {
            let blk = &blocks[r * row_blocks + b];
            col[2 * r..2 * r + 2].copy_from_slice(bytes_of(std::slice::from_ref(&blk.d)));
            for j in 0..4 {
                let o = PART + 64 * j + 4 * r;
                col[o..o + 4].copy_from_slice(&blk.qs[4 * j..4 * j + 4]);
            }
        }
    }
}

/// [`repack`] with gathers: a block column's five pieces (scales, parts 0..4) are one
/// 16-lane gather each from the 16 rows.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `src.len() < 2^31` (32-bit gather offsets).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
unsafe fn repack_avx512(src: &[u8], row_blocks: usize, dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let bb = std::mem::size_of::<BlockQ4_0>();
    let row_bytes = (row_blocks * bb) as i32;
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes),
    );
    for b in 0..row_blocks {
        // The last block's dword gathers end 2 bytes short of the row's last block: in bounds.
        let base = src.as_ptr().add(b * bb);
        let col = dst.as_mut_ptr().add(b * COLUMN);
        // Scales: the dword at each block's start, its low half kept.
        let d = _mm512_i32gather_epi32::<1>(rows, base.cast());
        _mm256_storeu_si256(col.cast(), _mm512_cvtepi32_epi16(d));
        for j in 0..4 {
            let q = _mm512_i32gather_epi32::<1>(rows, base.add(2 + 4 * j).cast());
            _mm512_storeu_si512(col.add(PART + 64 * j).cast(), q);
        }
    }
}

/// The inverse of [`repack`]: the 16 rows in GGUF order.
pub fn unpack(src: &[u8], row_blocks: usize, dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        ROWS * row_blocks * COLUMN / ROWS,
        "unpack: 16 rows"
    );
    assert_eq!(dst.len(), src.len(), "unpack: output length");
    let bb = std::mem::size_of::<BlockQ4_0>();
    for b in 0..row_blocks {
        let col = &src[b * COLUMN..(b + 1) * COLUMN];
        for r in 0..ROWS {
            let o = (r * row_blocks + b) * bb;
            dst[o..o + 2].copy_from_slice(&col[2 * r..2 * r + 2]);
            for j in 0..4 {
                let s = PART + 64 * j + 4 * r;
                dst[o + 2 + 4 * j..o + 6 + 4 * j].copy_from_slice(&col[s..s + 4]);
            }
        }
    }
}

/// Row `r` (0..16) of a repacked chunk (`nb` blocks per row) in GGUF order, into `dst`.
pub fn row(chunk: &[u8], nb: usize, r: usize, dst: &mut [u8]) {
    let bb = std::mem::size_of::<BlockQ4_0>();
    assert!(
        r < ROWS && chunk.len() == nb * COLUMN && dst.len() == nb * bb,
        "row: shapes"
    );
    for b in 0..nb {
        let col = &chunk[b * COLUMN..(b + 1) * COLUMN];
        let o = &mut dst[b * bb..(b + 1) * bb];
        o[..2].copy_from_slice(&col[2 * r..2 * r + 2]);
        for j in 0..4 {
            let s = PART + 64 * j + 4 * r;
            o[2 + 4 * j..6 + 4 * j].copy_from_slice(&col[s..s + 4]);
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

/// `out[r][n]` = row `r` of a repacked chunk (`nb` blocks per row) against token `n`, for `N`
/// tokens at once (each 64-byte part unpacked once for all of them).
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
    assert_eq!(chunk.len(), nb * COLUMN, "rows_avx512: chunk length");
    assert!(
        xs.iter().all(|x| x.len() == nb),
        "rows_avx512: activation length"
    );
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); BLOCK_LANES]; N];
    for b in 0..nb {
        let col = chunk.as_ptr().add(b * COLUMN);
        super::simd::prefetch_ahead(col, COLUMN);
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
            let isum = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(s8));
            let term = _mm512_mul_ps(
                _mm512_mul_ps(dw, _mm512_set1_ps(dx)),
                _mm512_cvtepi32_ps(isum),
            );
            let lane = &mut acc[n][b % BLOCK_LANES];
            *lane = _mm512_add_ps(*lane, term);
        }
    }
    let mut out = [[0f32; N]; ROWS];
    for (n, a) in acc.iter().enumerate() {
        // simd::reduce8's order, 16 rows at once.
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

/// Tokens for the tile kernel over repacked weights: 16 tokens' q8_0 quants row by row (the
/// A operand: `a[(b * 16 + t) * 32 + k]`), their scales `d[b][t]` and `8 * sum(q)` `s8[b][t]`.
pub struct TokenTiles {
    a: Vec<i8>,
    d: Vec<[f32; TILE]>,
    s8: Vec<[i32; TILE]>,
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
        let mut s8 = vec![[0i32; TILE]; nb];
        for (t, row) in rows.iter().enumerate() {
            for (b, yb) in row.iter().enumerate() {
                a[(b * TILE + t) * QK..][..QK].copy_from_slice(&yb.qs);
                d[b][t] = yb.d.get();
                s8[b][t] = 8 * yb.qs.iter().map(|&q| q as i32).sum::<i32>();
            }
        }
        TokenTiles { a, d, s8 }
    }

    pub fn blocks(&self) -> usize {
        self.d.len()
    }
}

/// The tile registers for [`tiles`]: 1 = B (a block column's nibbles as bytes, 8 rows of 64),
/// 2..=4 = A (three token groups, 16 x 32 bytes), 5..=7 = C (16 x 16 i32).
const CONFIG: super::amx::TileConfig = {
    let (a, b, c) = ((16, QK as u16), ((QK / 4) as u8, 64), (16, 64));
    super::amx::TileConfig::new(&[(0, 0), b, a, a, a, c, c, c])
};

/// Token groups per pass (one C and one A register each).
const GROUPS_PER_PASS: usize = 3;

/// `out[g][r][t]` = row `r` of a repacked chunk against token `t` of group `g`, on AMX tiles:
/// the weights are the B operand (a block column's parts, split into low and high nibbles,
/// are B's 8 rows of 64 bytes as they are), the tokens the A operand, so C is token by row and
/// the float half takes the 16 rows' scales as one vector, as [`rows_avx512`] does.
///
/// # Safety
/// The CPU must have AMX-INT8 with the tile permission granted and AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,amx-tile,amx-int8")]
pub(crate) unsafe fn tiles(
    chunk: &[u8],
    nb: usize,
    groups: &[&TokenTiles],
    out: &mut [[[f32; TILE]; TILE]],
) {
    use std::arch::x86_64::*;
    use std::simd::prelude::*;
    assert_eq!(chunk.len(), nb * COLUMN, "tiles: chunk length");
    assert_eq!(groups.len(), out.len());
    assert!(
        groups.iter().all(|g| g.blocks() == nb),
        "tiles: row lengths differ"
    );
    CONFIG.load();
    let low = _mm512_set1_epi8(0x0f);
    let mut bq = [[0u8; 64]; 8];
    let mut c = [[[0i32; TILE]; TILE]; GROUPS_PER_PASS];
    for (gs, os) in groups
        .chunks(GROUPS_PER_PASS)
        .zip(out.chunks_mut(GROUPS_PER_PASS))
    {
        let ng = gs.len();
        // acc[k][lane][t]: token t of group k, its 16 rows in the vector.
        let mut acc = [[[f32x16::splat(0.0); TILE]; BLOCK_LANES]; GROUPS_PER_PASS];
        for b in 0..nb {
            let col = chunk.as_ptr().add(b * COLUMN);
            // B: rows 0..4 the low nibbles of parts 0..4 (weights 4j ..), rows 4..8 the high
            // ones (weights 16 + 4j ..), as unsigned bytes (the -8 is taken off below).
            for j in 0..4 {
                let z = _mm512_loadu_si512(col.add(PART + 64 * j).cast());
                _mm512_storeu_si512(bq[j].as_mut_ptr().cast(), _mm512_and_si512(z, low));
                let h = _mm512_and_si512(_mm512_srli_epi16::<4>(z), low);
                _mm512_storeu_si512(bq[4 + j].as_mut_ptr().cast(), h);
            }
            _tile_loadd::<1>(bq.as_ptr().cast(), 64);
            macro_rules! product {
                ($k:literal, $at:literal, $ct:literal) => {
                    if $k < ng {
                        _tile_zero::<$ct>();
                        _tile_loadd::<$at>(gs[$k].a[b * TILE * QK..].as_ptr().cast(), QK);
                        _tile_dpbsud::<$ct, $at, 1>();
                        _tile_stored::<$ct>(c[$k].as_mut_ptr().cast(), 64);
                    }
                };
            }
            product!(0, 2, 5);
            product!(1, 3, 6);
            product!(2, 4, 7);
            let dw = f32x16::from(_mm512_cvtph_ps(_mm256_loadu_si256(col.cast())));
            for k in 0..ng {
                let lane = &mut acc[k][b % BLOCK_LANES];
                let (d, s8) = (&gs[k].d[b], &gs[k].s8[b]);
                for t in 0..TILE {
                    let isum = i32x16::from_array(c[k][t]) - i32x16::splat(s8[t]);
                    lane[t] += (dw * f32x16::splat(d[t])) * isum.cast::<f32>();
                }
            }
        }
        for (k, o) in os.iter_mut().enumerate() {
            for t in 0..TILE {
                let v = |l: usize| acc[k][l][t];
                let s = ((v(0) + v(4)) + (v(2) + v(6))) + ((v(1) + v(5)) + (v(3) + v(7)));
                for (r, x) in s.to_array().into_iter().enumerate() {
                    o[r][t] = x;
                }
            }
        }
    }
    _tile_release();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::block::{view_mut, zeroed, Family};
    use crate::quant::fp16::F16;
    use crate::quant::tests_util::{Rng, EXTREME_BYTES, EXTREME_HALVES};
    use crate::quant::{dispatch, simd};

    /// 16 rows of `nb` random (or extreme) raw blocks.
    fn rows(nb: usize, rng: &mut Rng, extreme: bool) -> Vec<u8> {
        let mut w: Vec<u8> = (0..ROWS * nb * 18)
            .map(|_| {
                if extreme {
                    EXTREME_BYTES[(rng.next_u64() % 10) as usize]
                } else {
                    rng.next_u64() as u8
                }
            })
            .collect();
        for blk in view_mut::<BlockQ4_0>(&mut w) {
            let h = if extreme {
                EXTREME_HALVES[(rng.next_u64() % 9) as usize]
            } else {
                0x2000 | (rng.next_u64() as u16 & 0x0fff)
            };
            blk.d = F16(h.to_le_bytes());
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
        for nb in [1, 3, 8, 64] {
            let w = rows(nb, &mut rng, false);
            let mut p = vec![0u8; w.len()];
            repack(&w, nb, &mut p);
            assert_ne!(p, w);
            let mut back = vec![0u8; w.len()];
            unpack(&p, nb, &mut back);
            assert_eq!(back, w, "nb={nb}");
            let mut slow = vec![0u8; w.len()];
            repack_scalar(&w, nb, &mut slow);
            assert_eq!(slow, p, "nb={nb}: the vector repack is the scalar one");
            for r in 0..ROWS {
                let mut one = vec![0u8; nb * 18];
                row(&p, nb, r, &mut one);
                assert_eq!(one, w[r * nb * 18..(r + 1) * nb * 18], "row {r}");
            }
        }
    }

    /// Every kernel over repacked rows gives `dispatch::dot`'s bits for each (row, token).
    #[test]
    fn repacked_kernels_equal_the_row_kernels() {
        let mut rng = Rng::new(10);
        let (mut ran_vnni, mut ran_amx) = (false, false);
        for nb in [1, 2, 7, 8, 9, 17, 64] {
            for extreme in [false, true] {
                let w = rows(nb, &mut rng, extreme);
                let mut p = vec![0u8; w.len()];
                repack(&w, nb, &mut p);
                // Four groups of 16 tokens, each its own.
                let xs: Vec<Vec<BlockQ8_0>> =
                    (0..4).flat_map(|_| tokens(nb, &mut rng, extreme)).collect();
                let blocks: &[BlockQ4_0] = view(&w);
                let want = |r: usize, t: usize| {
                    dispatch::dot::<BlockQ4_0>(&blocks[r * nb..(r + 1) * nb], &xs[t]).to_bits()
                };
                #[cfg(target_arch = "x86_64")]
                if simd::has_avx512() {
                    ran_vnni = true;
                    let aux: Vec<Q4Aux> = xs
                        .iter()
                        .map(|x| BlockQ4_0::<F16>::row_aux(x).unwrap())
                        .collect();
                    // SAFETY: checked just above.
                    let one = unsafe { rows_avx512::<1>(&p, nb, [&xs[3]], [&aux[3]]) };
                    let four = unsafe {
                        rows_avx512::<4>(
                            &p,
                            nb,
                            std::array::from_fn(|k| &xs[k][..]),
                            std::array::from_fn(|k| &aux[k]),
                        )
                    };
                    for (r, (o1, o4)) in one.iter().zip(&four).enumerate() {
                        assert_eq!(o1[0].to_bits(), want(r, 3), "1 token nb={nb} r={r}");
                        for (t, v) in o4.iter().enumerate() {
                            assert_eq!(v.to_bits(), want(r, t), "4 tokens nb={nb} r={r} t={t}");
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
                        unsafe { tiles(&p, nb, &groups, &mut out) };
                        for (k, o) in out.iter().enumerate() {
                            for (r, row) in o.iter().enumerate() {
                                for (t, v) in row.iter().enumerate() {
                                    assert_eq!(
                                        v.to_bits(),
                                        want(r, 16 * k + t),
                                        "tiles nb={nb} g={k} r={r} t={t}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        eprintln!(
            "repacked Q4_0 kernels checked: avx512 {}, amx {}",
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
/// check: `cargo test --release --lib q4_0_x16::bench -- --ignored --nocapture`).
#[cfg(all(test, target_arch = "x86_64"))]
mod bench {
    use super::*;
    use crate::quant::block::{view_mut, Family};
    use crate::quant::tests_util::Rng;
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

    #[test]
    #[ignore]
    fn bench_repacked_q4_0() {
        if !simd::has_avx512() {
            return eprintln!("no AVX-512 here");
        }
        let mut rng = Rng::new(4);
        for (rows, cols) in [(1024, 2048), (32768, 16384)] {
            let nb = cols / QK;
            let mut w: Vec<u8> = (0..rows * nb * 18).map(|_| rng.next_u64() as u8).collect();
            for blk in view_mut::<BlockQ4_0>(&mut w) {
                blk.d = super::super::fp16::F16(
                    (0x2000 | (rng.next_u64() as u16 & 0xfff)).to_le_bytes(),
                );
            }
            let mut p = vec![0u8; w.len()];
            for (d, s) in p.chunks_mut(ROWS * nb * 18).zip(w.chunks(ROWS * nb * 18)) {
                repack(s, nb, d);
            }
            let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
            let mut xq = vec![crate::quant::block::zeroed::<BlockQ8_0>(); nb];
            dispatch::quantize::<BlockQ8_0>(&x, &mut xq);
            let aux = BlockQ4_0::<super::super::fp16::F16>::row_aux(&xq).unwrap();
            let gb = w.len() as f64 / 1e9;
            let mut out = vec![[0f32; 1]; rows];
            let t_rows = best(|| {
                dispatch::dot_rows::<BlockQ4_0, 1>(view(&w), nb, [&xq], Some([&aux]), &mut out)
            });
            let mut sink = 0f32;
            let t_x16 = best(|| {
                for c in p.chunks(ROWS * nb * 18) {
                    // SAFETY: checked above.
                    sink += unsafe { rows_avx512::<1>(c, nb, [&xq], [&aux]) }[0][0];
                }
            });
            let t_x16_4 = best(|| {
                for c in p.chunks(ROWS * nb * 18) {
                    // SAFETY: checked above.
                    sink += unsafe { rows_avx512::<4>(c, nb, [&xq; 4], [&aux; 4]) }[0][0];
                }
            });
            std::hint::black_box(sink);
            eprintln!(
                "{rows} x {cols} ({:.0} MB): rows 1 token {:.1} GB/s, repacked 1 token {:.1} GB/s, repacked 4 tokens {:.1} GB/s per token",
                gb * 1e3,
                gb / t_rows,
                gb / t_x16,
                4.0 * gb / t_x16_4
            );
        }
    }
}
