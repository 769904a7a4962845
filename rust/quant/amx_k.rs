//! AMX-INT8 tiles for the K-quants against q8_K (Q4_K, Q5_K, Q6_K): 16 weight rows against
//! 16 tokens at a time, every result with the bits of the family's scalar reference.
//!
//! The scalar references reduce a super-block to exact integers, `isum = sum_i w_i y_i` with
//! the weight's integer multiplier `w_i` (Q4_K/Q5_K: `sc_s * q_i`, at most 63 * 31; Q6_K:
//! `sc_j * (q_i - 32)`, within +-4096) and, for the families with minimums, `msum = sum_s m_s
//! * (bsum_2s + bsum_2s+1)`, then one float step per super-block into lane `b % 8`:
//! `(d * d_x) * isum - (dmin * d_x) * msum` (or `(d * d_x) * isum`), and `simd::reduce8`.
//!
//! A tile op multiplies bytes, so each chunk of 16 weight rows is unpacked once (for every
//! token group) into two byte planes, `w = 256 * hi + lo`: `lo` = the low byte (unsigned, for
//! `tdpbusd` against the signed activations), `hi` = the rest (signed, for `tdpbssd`). Four ops
//! of 64 bytes of K each give the exact i32 `C_lo` and `C_hi` of a super-block for all 16 x 16
//! (row, token) pairs (|C_lo| <= 256 * 255 * 128, |C_hi| <= 256 * 16 * 128), and
//! `isum = 256 * C_hi + C_lo` is the reference's integer. `msum` takes AVX-512 `vpdpwssd`
//! on the tokens' sub-block sums (`AmxActs`) against each row's two minimums at a time. The
//! float step is the reference's, vectorized over the 16 tokens.

use super::amx::{reduce_lanes, AmxActs, TileConfig, TILE};
use super::block::Family;
use super::q8_k::{BlockQ8K, QK_K};
use super::simd::BLOCK_LANES;
use std::simd::prelude::*;

/// A K-quant family the tiles serve: its super-blocks as integer multipliers and scales.
pub(crate) trait AmxK: Family<Act = BlockQ8K> {
    /// Whether values subtract `dmin * m_s` per 32-value sub-block (Q4_K, Q5_K).
    const MINS: bool;
    /// The 256 multipliers `w_i` (the scalar reference's `isum = sum_i w_i y_i`, |w| <= 4096),
    /// 32 per vector in weight order.
    fn multipliers(&self) -> [i16x32; 8];
    /// `d` as f32.
    fn scale(&self) -> f32;
    /// `dmin` as f32 and the 8 minimums (families with `MINS`).
    fn mins(&self) -> (f32, [u8; 8]) {
        (0.0, [0; 8])
    }
}

/// 16 weight rows unpacked for the tiles: `lo`/`hi[(b * 16 + r) * 256 + i]` of weight `i` of
/// super-block `b` of row `r` (an A tile is 16 rows of 64 bytes, 256 apart), and per
/// super-block and row `d`, `dmin` and the minimum pairs `m_2p | m_2p+1 << 16`. One per
/// thread, reused chunk after chunk (every byte a chunk reads is rewritten first).
#[derive(Default)]
struct Planes {
    lo: Vec<u8>,
    hi: Vec<i8>,
    d: Vec<[f32; TILE]>,
    dmin: Vec<[f32; TILE]>,
    mins: Vec<[[i32; 4]; TILE]>,
}

thread_local! {
    static PLANES: std::cell::Cell<Planes> = std::cell::Cell::new(Planes::default());
}

impl Planes {
    #[inline(always)]
    fn fill<B: AmxK>(&mut self, w: &[B], nb: usize) {
        self.lo.resize(w.len() * QK_K, 0);
        self.hi.resize(w.len() * QK_K, 0);
        self.d.resize(nb, [0.0; TILE]);
        self.dmin.resize(nb, [0.0; TILE]);
        self.mins.resize(nb, [[0; 4]; TILE]);
        for (r, row) in w.chunks_exact(nb).enumerate() {
            for (b, wb) in row.iter().enumerate() {
                let o = (b * TILE + r) * QK_K;
                for (j, m) in wb.multipliers().into_iter().enumerate() {
                    // The low byte, and the rest with its sign (|w| <= 4096: |hi| <= 16).
                    m.cast::<u8>().copy_to_slice(&mut self.lo[o + 32 * j..]);
                    (m >> 8)
                        .cast::<i8>()
                        .copy_to_slice(&mut self.hi[o + 32 * j..]);
                }
                self.d[b][r] = wb.scale();
                if B::MINS {
                    let (dmin, m) = wb.mins();
                    self.dmin[b][r] = dmin;
                    for q in 0..4 {
                        self.mins[b][r][q] = m[2 * q] as i32 | (m[2 * q + 1] as i32) << 16;
                    }
                }
            }
        }
    }

    /// The A tiles (lo, hi) of K bytes `64 k ..` of super-block `b`.
    #[inline(always)]
    fn a(&self, b: usize, k: usize) -> (*const u8, *const i8) {
        let o = b * TILE * QK_K + 64 * k;
        (self.lo[o..].as_ptr(), self.hi[o..].as_ptr())
    }
}

/// Token groups per pass: two groups' C tiles (lo, hi each), their B tiles and the two A
/// tiles fill the 8 registers; each A tile meets both groups.
const PASS: usize = 2;

/// 0..=3 = C (group 0 lo, hi; group 1 lo, hi), 4, 5 = B (groups 0, 1), 6, 7 = A (lo, hi):
/// all 16 rows of 64 bytes.
const CONFIG: TileConfig = TileConfig::new(&[(16, 64); 8]);

/// `out[g][r][t]` = the dot product of weight row `r` of `w` (16 rows of `row_len`
/// super-blocks) with token `t` of group `g`, with the bits of the family's scalar reference.
///
/// # Safety
/// The CPU must have AMX-INT8 with the tile permission granted (`amx::cpu_has_amx`) and
/// AVX-512 F/BW/VL/VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")]
pub(crate) unsafe fn tiles<B: AmxK>(
    w: &[B],
    row_len: usize,
    groups: &[&AmxActs],
    out: &mut [[[f32; TILE]; TILE]],
) {
    use std::arch::x86_64::*;
    assert_eq!(w.len(), TILE * row_len, "tiles: 16 rows");
    assert_eq!(groups.len(), out.len());
    assert!(
        groups
            .iter()
            .all(|g| g.unit() == QK_K && g.blocks() == row_len),
        "tiles: q8_K activations of the rows' length"
    );
    if row_len == 0 {
        // Empty rows: the reference's sum of nothing.
        out.iter_mut().for_each(|o| *o = [[0.0; TILE]; TILE]);
        return;
    }
    let mut p = PLANES.take();
    p.fill(w, row_len);
    CONFIG.load();
    // C tiles stored here, two super-blocks' worth, so one super-block's float half can run
    // while the next one's tiles are computed.
    let mut c = [[[[0i32; TILE]; TILE]; 2 * PASS]; 2];
    for (gs, os) in groups.chunks(PASS).zip(out.chunks_mut(PASS)) {
        let two = gs.len() == 2;
        let mut acc = [[[f32x16::splat(0.0); TILE]; BLOCK_LANES]; PASS];
        for b in 0..row_len {
            let cb = &mut c[b % 2];
            _tile_zero::<0>();
            _tile_zero::<1>();
            if two {
                _tile_zero::<2>();
                _tile_zero::<3>();
            }
            for k in 0..QK_K / 64 {
                let (lo, hi) = p.a(b, k);
                let k0 = b * QK_K + 64 * k;
                _tile_loadd::<6>(lo.cast(), QK_K);
                _tile_loadd::<7>(hi.cast(), QK_K);
                _tile_loadd::<4>(gs[0].b_tile(k0).cast(), 64);
                _tile_dpbusd::<0, 6, 4>();
                _tile_dpbssd::<1, 7, 4>();
                if two {
                    _tile_loadd::<5>(gs[1].b_tile(k0).cast(), 64);
                    _tile_dpbusd::<2, 6, 5>();
                    _tile_dpbssd::<3, 7, 5>();
                }
            }
            _tile_stored::<0>(cb[0].as_mut_ptr().cast(), 64);
            _tile_stored::<1>(cb[1].as_mut_ptr().cast(), 64);
            if two {
                _tile_stored::<2>(cb[2].as_mut_ptr().cast(), 64);
                _tile_stored::<3>(cb[3].as_mut_ptr().cast(), 64);
            }
            for (g, x) in gs.iter().enumerate() {
                let dx = x.scales(b);
                // (A loop, not a closure: a closure need not get this function's features.)
                let mut sums = [_mm512_setzero_si512(); 4];
                if B::MINS {
                    for (q, s) in sums.iter_mut().enumerate() {
                        *s = _mm512_loadu_si512(x.pair_sums(b, q).as_ptr().cast());
                    }
                }
                let lane = &mut acc[g][b % BLOCK_LANES];
                for r in 0..TILE {
                    let isum = (i32x16::from_array(cb[2 * g + 1][r]) << 8)
                        + i32x16::from_array(cb[2 * g][r]);
                    let mut v = (f32x16::splat(p.d[b][r]) * dx) * isum.cast::<f32>();
                    if B::MINS {
                        let mut m = _mm512_setzero_si512();
                        for (q, s) in sums.iter().enumerate() {
                            m = _mm512_dpwssd_epi32(m, *s, _mm512_set1_epi32(p.mins[b][r][q]));
                        }
                        let msum = i32x16::from(m).cast::<f32>();
                        v -= (f32x16::splat(p.dmin[b][r]) * dx) * msum;
                    }
                    lane[r] += v;
                }
            }
        }
        for (g, o) in os.iter_mut().enumerate() {
            reduce_lanes(&acc[g], o);
        }
    }
    _tile_release();
    PLANES.set(p);
}

/// Tile kernel speed per family (a report, not a check: `cargo test --release
/// bench_amx_k_tiles -- --ignored --nocapture`): 16 rows x `cols` against 4 and 32 groups of
/// 16 tokens (pp64, pp512), in G multiply-adds per second of this thread's CPU time, best of
/// the passes.
#[cfg(all(test, target_arch = "x86_64"))]
mod bench {
    use super::super::tests_util::best_cpu_secs;
    use super::super::tests_util::Rng;
    use super::super::{prepare_activation, quantize_row, vec_dot_tiles, AmxActs, GgmlType};
    use super::TILE;

    #[test]
    #[ignore]
    fn bench_amx_k_tiles() {
        if !super::super::simd::has_amx() {
            return eprintln!("no AMX here");
        }
        let mut rng = Rng::new(3);
        for ty in [
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Q4_0,
            GgmlType::Q8_0,
        ] {
            for cols in [2048, 8192] {
                let wf: Vec<f32> = (0..TILE * cols).map(|_| rng.normal() * 0.02).collect();
                let mut w = vec![0u8; ty.row_bytes(TILE * cols).unwrap()];
                quantize_row(ty, &wf, &mut w);
                let acts: Vec<AmxActs> = (0..32)
                    .map(|_| {
                        let rows: Vec<_> = (0..TILE)
                            .map(|_| {
                                let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                                prepare_activation(ty, &x)
                            })
                            .collect();
                        AmxActs::from_prepared(std::array::from_fn(|t| &rows[t])).unwrap()
                    })
                    .collect();
                for ng in [4, 32] {
                    let refs: Vec<&AmxActs> = acts[..ng].iter().collect();
                    let mut out = vec![[[0f32; TILE]; TILE]; ng];
                    let reps = 2048 / ng;
                    let best = best_cpu_secs(5, || {
                        for _ in 0..reps {
                            vec_dot_tiles(ty, &w, &refs, &mut out);
                        }
                    });
                    let macs = (reps * ng * TILE * TILE * cols) as f64;
                    eprintln!(
                        "{ty} cols {cols} groups {ng}: {:.0} GMAC/s",
                        macs / best / 1e9
                    );
                }
            }
        }
    }
}
