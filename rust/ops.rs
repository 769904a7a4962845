//! The few numeric operations of a LLaMA forward pass, on f32 rows.
//!
//! Matmul is the hot one: parallel over output rows with rayon, each output element reduced
//! by exactly one thread in a fixed order, so results never depend on the thread count.

use crate::quant::{
    has_amx_kernel, has_multi_row_kernel, prepare_activation, prepared_for, vec_dot_rows,
    vec_dot_rows_x16, vec_dot_tiles, vec_dot_tiles_x16, AmxActs, GgmlType, PreparedRow, RowAux,
    TokenTiles, TILE, XN,
};
use rayon::prelude::*;
use std::sync::OnceLock;

/// `x / sqrt(mean(x^2) + eps) * weight`, in place.
pub fn rmsnorm(x: &mut [f32], weight: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

/// Rotary embedding on adjacent pairs `(2i, 2i+1)` of each head (Meta's layout), for the first
/// `n_rot` dimensions of every head, without scaling.
pub fn rope(x: &mut [f32], head_dim: usize, n_rot: usize, pos: usize, freq_base: f32) {
    rope_with(x, head_dim, &Rope::plain(n_rot, freq_base).table(pos));
}

/// The rotary angles of a model: pair `i` of a head at position `pos` turns by
/// `pos * freq_base^(-2i/n_rot) / factors[i] * freq_scale`, as ggml's `rope_ext` computes
/// them without YaRN (`ext_factor` 0, `attn_factor` 1): `factors` are Llama 3.1's
/// `rope_freqs.weight` (ggml's `freq_factors`), `freq_scale` is 1 / the linear scaling factor.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// One divisor per pair (`n_rot / 2`), or empty for none.
    pub factors: Vec<f32>,
}

impl Rope {
    /// Meta's rotary: no scaling, no factors.
    pub fn plain(n_rot: usize, freq_base: f32) -> Rope {
        Rope {
            n_rot,
            freq_base,
            freq_scale: 1.0,
            factors: Vec::new(),
        }
    }

    /// `(sin, cos)` of each pair's angle at `pos` (the same for every head: compute once per
    /// position, apply to q and k of every head with [`rope_with`]).
    pub fn table(&self, pos: usize) -> Vec<(f32, f32)> {
        (0..self.n_rot / 2)
            .map(|k| {
                // Angles in f64: positions times small frequencies lose digits in f32.
                let freq = (self.freq_base as f64).powf(-((2 * k) as f64) / self.n_rot as f64);
                let factor = self.factors.get(k).map_or(1.0, |&f| f as f64);
                let angle = pos as f64 * freq / factor * self.freq_scale as f64;
                let (sin, cos) = angle.sin_cos();
                (sin as f32, cos as f32)
            })
            .collect()
    }
}

/// Rotary embedding with a precomputed [`Rope::table`].
pub fn rope_with(x: &mut [f32], head_dim: usize, table: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (k, &(sin, cos)) in table.iter().enumerate() {
            let i = 2 * k;
            let (a, b) = (head[i], head[i + 1]);
            head[i] = a * cos - b * sin;
            head[i + 1] = a * sin + b * cos;
        }
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// A 2-D weight: `rows` rows of `cols` elements, stored row by row in `ty`'s blocks.
pub trait WeightView: Sync {
    fn ty(&self) -> GgmlType;
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The bytes the kernels read, and whether they are rows repacked 16 at a time
    /// (`quant::x16`) rather than rows: one snapshot, so the two agree while a background
    /// repack publishes the matrix.
    fn bytes(&self) -> (&[u8], bool);
}

/// Activation rows prepared once for weights of one kind (f32, q8_0 or q8_K: the weight type's
/// activation type), with the multi-row kernels' side data. The same preparation serves every
/// weight with the same activation type (q, k and v; gate and up), whatever their block types.
pub struct Prepared {
    rows: Vec<PreparedRow>,
    aux: Vec<RowAux>,
    /// The first `16 * amx.len()` rows in AMX tile layout (types with an AMX kernel, on a CPU
    /// that has it; built at the first weight in the file's row layout that takes them); the
    /// rest take the other kernels.
    amx: OnceLock<Vec<AmxActs>>,
    /// The same groups as the tile kernel over repacked Q4_0 and Q8_0 weights wants them
    /// (built at the first such weight).
    token_tiles: OnceLock<Vec<TokenTiles>>,
}

impl Prepared {
    /// One prepared row per `cols`-element row of `x`, for weights of type `ty`.
    pub fn new(ty: GgmlType, x: &[f32], cols: usize) -> Prepared {
        let rows: Vec<PreparedRow> = if x.len() > cols {
            x.par_chunks(cols)
                .map(|r| prepare_activation(ty, r))
                .collect()
        } else {
            vec![prepare_activation(ty, x)]
        };
        // Side data for the multi-row kernels (Q4_0, Q8_0): one cheap pass over the rows.
        let aux = if has_multi_row_kernel(ty) {
            rows.par_iter().map(|r| RowAux::new(ty, r)).collect()
        } else {
            vec![RowAux::default(); rows.len()]
        };
        Prepared {
            rows,
            aux,
            amx: OnceLock::new(),
            token_tiles: OnceLock::new(),
        }
    }

    /// Every whole group of 16 rows in the layout of `T` (`from` one group), or none: a
    /// group's index is its tokens' place.
    fn groups<'a, T: Send>(
        &'a self,
        cell: &'a OnceLock<Vec<T>>,
        from: impl Fn([&PreparedRow; TILE]) -> Option<T> + Sync,
    ) -> &'a [T] {
        cell.get_or_init(|| {
            (0..self.rows.len() / TILE)
                .into_par_iter()
                .map(|g| from(std::array::from_fn(|t| &self.rows[g * TILE + t])))
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default()
        })
    }

    /// Whether these rows serve weights of type `ty` with the fast kernels.
    pub fn serves(&self, ty: GgmlType) -> bool {
        self.rows
            .iter()
            .zip(&self.aux)
            .all(|(r, a)| prepared_for(ty, r) && a.fits(ty, r))
    }
}

/// `out[t][o] = dot(W[o, :], x[t])` for each of the `n` input rows in `x` (n x cols).
/// Runs on the current rayon pool (call inside `pool.install`).
pub fn matmul(w: &dyn WeightView, x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols(), "matmul input shape");
    if n == 0 {
        assert!(out.is_empty(), "matmul output shape");
        return;
    }
    matmul_prepared(w, &Prepared::new(w.ty(), x, w.cols()), out);
}

/// [`matmul`] on activation rows already prepared (see [`Prepared::serves`]); re-prepares
/// them if they were prepared for another kind of weight.
pub fn matmul_with(w: &dyn WeightView, p: &Prepared, x: &[f32], out: &mut [f32]) {
    if p.serves(w.ty()) {
        matmul_prepared(w, p, out);
    } else {
        matmul(w, x, p.rows.len(), out);
    }
}

/// Weight rows per matmul task.
const CHUNK: usize = 16;

fn matmul_prepared(w: &dyn WeightView, p: &Prepared, out: &mut [f32]) {
    let (prepared, aux) = (&p.rows[..], &p.aux[..]);
    let (rows, cols, n) = (w.rows(), w.cols(), prepared.len());
    assert!(
        prepared.iter().all(|p| p.len() == cols),
        "matmul input shape"
    );
    assert_eq!(out.len(), n * rows, "matmul output shape");
    let row_bytes = w
        .ty()
        .row_bytes(cols)
        .expect("weight rows are whole blocks");
    let (data, repacked) = w.bytes();
    let ty = w.ty();
    assert!(
        !repacked || rows % TILE == 0,
        "repacked weights are whole chunks"
    );
    // Tokens in AMX tile layout, for the weight's layout (none without an AMX kernel).
    let (token_tiles, amx): (&[TokenTiles], &[AmxActs]) = match (has_amx_kernel(ty), repacked) {
        (false, _) => (&[], &[]),
        (true, true) => (p.groups(&p.token_tiles, TokenTiles::from_prepared), &[]),
        (true, false) => (&[], p.groups(&p.amx, AmxActs::from_prepared)),
    };
    // Work in output-row chunks so the chunk's weight rows stay in cache while they meet
    // every token. Each task owns a range of output rows (weight rows) for every token, so it
    // writes `out[t * rows + r]` for its own `r` only: disjoint writes through a shared pointer.
    let dst = Disjoint(out.as_mut_ptr(), out.len());
    (0..rows.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
        let dst = &dst;
        let (r0, r1) = (c * CHUNK, rows.min((c + 1) * CHUNK));
        let w_rows = &data[r0 * row_bytes..r1 * row_bytes];
        // AMX first: 16 rows against every whole group of 16 tokens in one call (Q4_0 and
        // K-quant blocks unpacked once per chunk), then the other kernels for the rest.
        let n_groups = if repacked {
            token_tiles.len()
        } else if r1 - r0 == TILE {
            amx.len()
        } else {
            0
        };
        let mut t = 0;
        if n_groups > 0 {
            let mut res = vec![[[0f32; TILE]; TILE]; n_groups];
            if repacked {
                let groups: Vec<&TokenTiles> = token_tiles.iter().collect();
                vec_dot_tiles_x16(ty, w_rows, &groups, &mut res);
            } else {
                let groups: Vec<&AmxActs> = amx.iter().collect();
                vec_dot_tiles(ty, w_rows, &groups, &mut res);
            }
            for (g, tile) in res.iter().enumerate() {
                // SAFETY: rows r0 .. r0 + 16 belong to this task alone.
                unsafe { dst.set_columns(tile, g * TILE, r0, rows) };
            }
            t = n_groups * TILE;
        }
        // Tokens outermost within a chunk: the activation rows of one call and the chunk's
        // weight rows stay in cache together. Eight tokens per call (each weight block
        // unpacked once for eight; four where that kernel is faster), then four, then the
        // last three, two or one; every element gets the bits of the one-row kernel.
        let k = Kernel { ty, repacked };
        while t < n {
            // (2 and 3 matter to a decode batch of two or three sequences.)
            let step = match n - t {
                k_left if k_left >= k.widest() => k.widest(),
                k_left if k_left >= 4 => 4,
                k_left => k_left,
            };
            match step {
                XN => tile::<XN>(k, w_rows, r1 - r0, prepared, aux, t, r0, rows, dst),
                4 => tile::<4>(k, w_rows, r1 - r0, prepared, aux, t, r0, rows, dst),
                3 => tile::<3>(k, w_rows, r1 - r0, prepared, aux, t, r0, rows, dst),
                2 => tile::<2>(k, w_rows, r1 - r0, prepared, aux, t, r0, rows, dst),
                _ => tile::<1>(k, w_rows, r1 - r0, prepared, aux, t, r0, rows, dst),
            }
            t += step;
        }
    });
}

/// Which row kernels a weight takes: its type's, over rows or over repacked chunks.
#[derive(Clone, Copy)]
struct Kernel {
    ty: GgmlType,
    repacked: bool,
}

impl Kernel {
    /// Most tokens per call. The repacked Q4_0 and Q8_0 kernels keep 8 lane accumulators per
    /// token, and at 8 tokens those 64 registers spill: two calls of 4 ran prompts 1.04-1.16x
    /// faster (BENCHMARKS.md, session 13). The repacked K-quants were slower at 4 (0.92x).
    fn widest(self) -> usize {
        match (self.repacked, self.ty) {
            (true, GgmlType::Q4_0 | GgmlType::Q8_0) => 4,
            _ => XN,
        }
    }
}

/// The `n_rows` weight rows `r0 ..` (`w_rows`) against tokens `t .. t + N`, into `dst`
/// (`n x rows`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const N: usize>(
    k: Kernel,
    w_rows: &[u8],
    n_rows: usize,
    xs: &[PreparedRow],
    aux: &[RowAux],
    t: usize,
    r0: usize,
    rows: usize,
    dst: &Disjoint,
) {
    let mut res = [[0f32; N]; CHUNK];
    let res = &mut res[..n_rows];
    let x = std::array::from_fn(|j| &xs[t + j]);
    let a = std::array::from_fn(|j| &aux[t + j]);
    if k.repacked {
        vec_dot_rows_x16(k.ty, w_rows, x, a, res);
    } else {
        vec_dot_rows(k.ty, w_rows, x, a, res);
    }
    // SAFETY: rows r0 .. r0 + n_rows belong to the calling task alone.
    unsafe { dst.set_columns(res, t, r0, rows) };
}

/// An output buffer that parallel tasks write at disjoint indices.
struct Disjoint(*mut f32, usize);
// SAFETY: only used for writes to indices no other task writes (see `set`'s callers).
unsafe impl Sync for Disjoint {}

impl Disjoint {
    /// `res[j][k]` (weight row `r0 + j`, token `t + k`) into `out[(t + k) * rows + r0 + j]`:
    /// token by token, each token's rows contiguous.
    ///
    /// # Safety
    /// No other thread may access those indices during the parallel section.
    unsafe fn set_columns<const N: usize>(
        &self,
        res: &[[f32; N]],
        t: usize,
        r0: usize,
        rows: usize,
    ) {
        if res.is_empty() || N == 0 {
            return;
        }
        assert!(
            r0 + res.len() <= rows && (t + N - 1) * rows + r0 + res.len() <= self.1,
            "matmul output index"
        );
        for k in 0..N {
            let o = self.0.add((t + k) * rows + r0);
            for (j, r) in res.iter().enumerate() {
                *o.add(j) = r[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    struct Owned {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    }
    impl WeightView for Owned {
        fn ty(&self) -> GgmlType {
            self.ty
        }
        fn rows(&self) -> usize {
            self.rows
        }
        fn cols(&self) -> usize {
            self.cols
        }
        fn bytes(&self) -> (&[u8], bool) {
            (&self.data, false)
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_same_with_one_and_two_threads() {
        let mut s = 7u64;
        // 13 tokens: one call of 8, one of 4, one of 1; 6 and 7: 4 then 2 or 3. 45 tokens: two
        // AMX groups of 16 where the CPU has AMX (rows 0..48 in chunks of 16; the last 5 rows
        // take the other kernels), then 8, 4 and 1. 32 tokens of 2304 columns: one pass of
        // two groups over 9 super-blocks (every accumulation lane, one twice) for the K-quants.
        let shapes = [
            (37, 64, 13),
            (21, 64, 6),
            (21, 64, 7),
            (53, 256, 45),
            (34, 2304, 32),
        ];
        eprintln!(
            "matmul: AMX tiles {}",
            if crate::quant::simd::has_amx() {
                "on"
            } else {
                "off"
            }
        );
        for (ty, (rows, cols, n)) in GgmlType::ALL
            .into_iter()
            .flat_map(|t| shapes.map(|s| (t, s)))
            .filter(|(t, (_, cols, _))| t.row_bytes(*cols).is_some())
        {
            let vals: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let rb = ty.row_bytes(cols).unwrap();
            let mut data = vec![0u8; rb * rows];
            for r in 0..rows {
                quantize_row(
                    ty,
                    &vals[r * cols..(r + 1) * cols],
                    &mut data[r * rb..(r + 1) * rb],
                );
            }
            let w = Owned {
                ty,
                rows,
                cols,
                data,
            };
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut s)).collect();
            let run = |threads: usize, n: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![0.0; n * rows];
                pool.install(|| matmul(&w, &x[..n * cols], n, &mut out));
                out
            };
            let a = run(1, n);
            assert_eq!(a, run(2, n), "{ty:?}");
            // The batched path equals the one-token path, token by token.
            for t in 0..n {
                let mut one = vec![0.0; rows];
                matmul(&w, &x[t * cols..(t + 1) * cols], 1, &mut one);
                assert_eq!(&a[t * rows..(t + 1) * rows], &one[..], "{ty:?} token {t}");
            }
        }
    }

    #[test]
    fn shared_preparation_equals_own() {
        let mut s = 11u64;
        let (rows, cols, n) = (19, 96, 6);
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut s)).collect();
        let weight = |ty: GgmlType, s: &mut u64| {
            let rb = ty.row_bytes(cols).unwrap();
            let mut data = vec![0u8; rb * rows];
            for r in 0..rows {
                let vals: Vec<f32> = (0..cols).map(|_| lcg(s)).collect();
                quantize_row(ty, &vals, &mut data[r * rb..(r + 1) * rb]);
            }
            Owned {
                ty,
                rows,
                cols,
                data,
            }
        };
        let all = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ];
        for m in [n, 1] {
            let x = &x[..m * cols];
            for pt in all {
                let p = Prepared::new(pt, x, cols);
                for wt in all {
                    let w = weight(wt, &mut s);
                    let mut own = vec![0.0; m * rows];
                    matmul(&w, x, m, &mut own);
                    let mut shared = vec![0.0; m * rows];
                    matmul_with(&w, &p, x, &mut shared);
                    assert_eq!(own, shared, "prepared for {pt:?}, weights {wt:?}, n {m}");
                }
            }
        }
    }

    #[test]
    fn rope_rotates_pairs() {
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        rope(&mut x, 4, 4, 1, 10000.0);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let f = 10000f64.powf(-0.5);
        assert!((x[2] as f64 + f.sin()).abs() < 1e-6 && (x[3] as f64 - f.cos()).abs() < 1e-6);
    }

    #[test]
    fn rope_factors_divide_and_scale_multiplies_the_angle() {
        let plain = Rope::plain(8, 500000.0);
        let scaled = Rope {
            freq_scale: 0.25,
            factors: vec![1.0, 2.0, 8.0, 3.5],
            ..plain.clone()
        };
        let (a, b) = (plain.table(7), scaled.table(7));
        for k in 0..4 {
            let theta = 7.0 * 500000f64.powf(-((2 * k) as f64) / 8.0);
            let want = theta / scaled.factors[k] as f64 * 0.25;
            assert!((a[k].0 as f64 - theta.sin()).abs() < 1e-7, "pair {k}");
            assert!((b[k].0 as f64 - want.sin()).abs() < 1e-7, "pair {k}");
            assert!((b[k].1 as f64 - want.cos()).abs() < 1e-7, "pair {k}");
        }
        // Position 0 never turns; factors of 1 change nothing.
        assert!(scaled.table(0).iter().all(|&(s, c)| s == 0.0 && c == 1.0));
        let ones = Rope {
            factors: vec![1.0; 4],
            ..plain.clone()
        };
        assert_eq!(ones.table(123), plain.table(123));
    }
}
