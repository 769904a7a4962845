//! The KV cache and causal attention over it.
//!
//! Layout, chosen so attention streams through memory in the order it computes:
//! - keys, per layer: `kv_dim` rows of `cap` positions (the transpose of one row per position),
//!   so component `i` of eight consecutive positions is one vector load;
//! - values, per layer: one row of `kv_dim` per position, so a probability times a value row is
//!   a run of vector loads.
//!
//! `cap` is the positions the cache holds now (`cells`, at most `n_ctx`) rounded up to 8: a
//! tile of 8 positions never reads past the buffer. Lanes past the current length hold stale
//! or zero values; they are computed and dropped. A batch grows a sequence's cache on demand
//! ([`KvCache::try_resize`]): only the stride `cap` changes, never the order of any sum, so
//! a sequence's bits do not depend on how its cache grew.
//!
//! Numerics (the one-position-at-a-time loops of [`reference`], bit for bit): each score is
//! the plain left-to-right sum `((-0 + q0*k0) + q1*k1) + ...` times `1/sqrt(head_dim)`, as
//! separate f32 multiplies and adds; softmax in f32 with libm's `exp`; each output component is
//! `((+0 + w0*v0) + w1*v1) + ...` over positions in order. With an f16 cache the query and the
//! probabilities are rounded to f16 first, as ggml does. Vectors only run several positions
//! (scores) or components (outputs) side by side, which does not change any sum's order.
//!
//! Query heads that share a KV head (grouped-query attention) are computed together, so each
//! key and value vector loaded serves all of them.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::softmax;
use crate::quant::simd::f16_to_f32_portable;
use crate::quant::{f16_bits_to_f32, f32_to_f16_bits};
use rayon::prelude::*;
use std::simd::prelude::*;

/// How the KV cache stores keys and values. F16 is llama.cpp's default (half the memory, and
/// its attention rounds queries and probabilities to f16 too); F32 keeps full precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Store {
    fn new(ty: KvType, n: usize) -> Store {
        match ty {
            KvType::F32 => Store::F32(vec![0.0; n]),
            KvType::F16 => Store::F16(vec![0; n]),
        }
    }

    /// Make room for `n` values in all, without changing any (false: the allocation failed).
    fn try_reserve_total(&mut self, n: usize) -> bool {
        fn go<T>(b: &mut Vec<T>, n: usize) -> bool {
            b.try_reserve_exact(n.saturating_sub(b.len())).is_ok()
        }
        match self {
            Store::F32(b) => go(b, n),
            Store::F16(b) => go(b, n),
        }
    }

    /// Restride `rows` rows of `keep` values from `old` to `new` values apart and make the
    /// buffer `rows * new` long (room reserved before: no allocation when growing).
    fn restride(&mut self, rows: usize, old: usize, new: usize, keep: usize) {
        fn go<T: Copy + Default>(b: &mut Vec<T>, rows: usize, old: usize, new: usize, keep: usize) {
            if new > old {
                b.resize(rows * new, T::default());
                // Last row first: a row's new place is at or after its old one.
                for r in (1..rows).rev() {
                    b.copy_within(r * old..r * old + keep, r * new);
                }
            } else {
                // First row first: a row's new place is at or before its old one.
                for r in 1..rows {
                    b.copy_within(r * old..r * old + keep, r * new);
                }
                b.truncate(rows * new);
                b.shrink_to_fit();
            }
        }
        match self {
            Store::F32(b) => go(b, rows, old, new, keep),
            Store::F16(b) => go(b, rows, old, new, keep),
        }
    }

    /// Give back room reserved beyond the values held.
    fn release_spare(&mut self) {
        match self {
            Store::F32(b) => b.shrink_to_fit(),
            Store::F16(b) => b.shrink_to_fit(),
        }
    }

    /// The buffer's allocation in bytes.
    fn bytes(&self) -> usize {
        match self {
            Store::F32(b) => b.capacity() * 4,
            Store::F16(b) => b.capacity() * 2,
        }
    }

    fn put(&mut self, values: impl Iterator<Item = (usize, f32)>) {
        match self {
            Store::F32(b) => values.for_each(|(i, x)| b[i] = x),
            Store::F16(b) => values.for_each(|(i, x)| b[i] = f32_to_f16_bits(x)),
        }
    }
}

/// Keys and values of every position evaluated so far, per layer.
pub struct KvCache {
    /// Positions this cache may ever hold.
    pub n_ctx: usize,
    pub ty: KvType,
    /// Positions it can hold now (at most `n_ctx`): all of them for [`KvCache::new`], grown
    /// on demand from [`KvCache::empty`].
    cells: usize,
    /// Positions per key row: `cells` rounded up to 8.
    cap: usize,
    kv_dim: usize,
    k: Vec<Store>,
    v: Vec<Store>,
}

impl KvCache {
    /// A cache holding all `n_ctx` positions from the start.
    pub fn new(config: &Config, n_ctx: usize, ty: KvType) -> KvCache {
        Self::with_cells(config, n_ctx, ty, n_ctx)
    }

    /// A cache of up to `n_ctx` positions that holds none yet (no memory): grow it with
    /// [`KvCache::try_resize`].
    pub fn empty(config: &Config, n_ctx: usize, ty: KvType) -> KvCache {
        Self::with_cells(config, n_ctx, ty, 0)
    }

    fn with_cells(config: &Config, n_ctx: usize, ty: KvType, cells: usize) -> KvCache {
        let (cap, kv_dim) = (cells.next_multiple_of(8), config.kv_dim());
        let mk = || {
            (0..config.n_layer)
                .map(|_| Store::new(ty, cap * kv_dim))
                .collect()
        };
        KvCache {
            n_ctx,
            ty,
            cells,
            cap,
            kv_dim,
            k: mk(),
            v: mk(),
        }
    }

    /// Positions the cache can hold now.
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// Bytes its buffers hold allocated.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Store::bytes).sum()
    }

    /// Bytes of one position's keys and values over all layers.
    pub fn bytes_per_cell(config: &Config, ty: KvType) -> usize {
        2 * config.n_layer * config.kv_dim() * Self::bytes_per_value(ty)
    }

    /// Hold `cells` positions (at most `n_ctx`), keeping the keys and values of the first
    /// `keep` (at most the cells held before and after). Growing allocates fallibly: on
    /// failure the cache is unchanged and the error says so; shrinking gives memory back.
    pub fn try_resize(&mut self, cells: usize, keep: usize) -> Result<()> {
        assert!(
            cells <= self.n_ctx && keep <= cells.min(self.cells),
            "KV resize: {keep} kept of {} into {cells} of {}",
            self.cells,
            self.n_ctx
        );
        let (old, new) = (self.cap, cells.next_multiple_of(8));
        if new > old {
            let n = new * self.kv_dim;
            // Every buffer's room first, so a failure leaves every layer as it was.
            if !self
                .k
                .iter_mut()
                .chain(&mut self.v)
                .all(|b| b.try_reserve_total(n))
            {
                self.k
                    .iter_mut()
                    .chain(&mut self.v)
                    .for_each(Store::release_spare);
                return Err(Error::Invalid(format!(
                    "out of memory: cannot grow a KV cache to {cells} positions ({} bytes)",
                    n as u128 * 2 * self.k.len() as u128 * Self::bytes_per_value(self.ty) as u128
                )));
            }
        }
        self.restride(cells, keep);
        Ok(())
    }

    /// Hold `cells` positions, fewer than now, keeping the first `keep`; gives memory back.
    pub fn shrink(&mut self, cells: usize, keep: usize) {
        assert!(
            cells <= self.cells && keep <= cells,
            "KV shrink: {keep} kept of {} into {cells}",
            self.cells
        );
        self.restride(cells, keep)
    }

    /// Move to the stride of `cells` positions (room reserved before when growing).
    fn restride(&mut self, cells: usize, keep: usize) {
        let (old, new) = (self.cap, cells.next_multiple_of(8));
        if new != old {
            let kv_dim = self.kv_dim;
            for b in &mut self.k {
                // Transposed keys: `kv_dim` rows of `cap`.
                b.restride(kv_dim, old, new, keep);
            }
            for b in &mut self.v {
                // One row per position: the first `keep` rows stay where they are.
                b.restride(1, old * kv_dim, new * kv_dim, keep * kv_dim);
            }
            self.cap = new;
        }
        self.cells = cells;
    }

    pub fn bytes_per_value(ty: KvType) -> usize {
        match ty {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// Store the keys and values (`n` rows of `kv_dim` each) of positions `pos ..` of `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (cap, kv_dim) = (self.cap, self.kv_dim);
        let n = k.len() / kv_dim;
        assert!(
            k.len() == n * kv_dim && v.len() == k.len() && pos + n <= self.cells,
            "KV write shape"
        );
        self.k[layer].put(elements(k, kv_dim).map(|(t, j, x)| (j * cap + pos + t, x)));
        self.v[layer].put(elements(v, kv_dim).map(|(t, j, x)| ((pos + t) * kv_dim + j, x)));
    }
}

/// `(row, column, value)` of a row-major matrix with `cols` columns.
fn elements(x: &[f32], cols: usize) -> impl Iterator<Item = (usize, usize, f32)> + '_ {
    x.chunks_exact(cols)
        .enumerate()
        .flat_map(|(t, r)| r.iter().enumerate().map(move |(j, &x)| (t, j, x)))
}

/// Causal attention of `q` (`n` rows of `dim`, positions `n_past ..`, already rotated) over
/// the cache of `layer`, which must hold positions `0 .. n_past + n`. Runs on the current
/// rayon pool; see [`attention_rows`].
pub fn attention(
    c: &Config,
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    n_past: usize,
    out: &mut [f32],
) {
    let rows: Vec<(usize, usize)> = (0..q.len() / c.dim).map(|t| (0, n_past + t)).collect();
    attention_rows(c, &[cache], layer, q, &rows, out)
}

/// Causal attention of each row of `q` (`rows.len()` rows of `dim`, already rotated) over its
/// own sequence's cache: row `i` is position `rows[i].1` of the sequence whose cache is
/// `caches[rows[i].0]`, which must hold its positions `0 ..= rows[i].1` in `layer`. Rows of
/// different sequences never see each other's keys: a batch of sequences gets, row by row,
/// the bits each sequence gets alone. Parallel over (row, KV head); each output is computed
/// by one task in a fixed order, so the result does not depend on the thread count.
pub fn attention_rows(
    c: &Config,
    caches: &[&KvCache],
    layer: usize,
    q: &[f32],
    rows: &[(usize, usize)],
    out: &mut [f32],
) {
    let (hd, n_kv) = (c.head_dim(), c.n_head_kv);
    let group = c.n_head / n_kv;
    assert!(
        q.len() == rows.len() * c.dim
            && out.len() == q.len()
            && rows
                .iter()
                .all(|&(s, pos)| s < caches.len() && pos < caches[s].cells),
        "attention shape"
    );
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(i, o)| {
            let (t, kvh) = (i / n_kv, i % n_kv);
            let (seq, pos) = rows[t];
            let cache = caches[seq];
            let geo = Geometry {
                hd,
                cap: cache.cap,
                kv_dim: cache.kv_dim,
                scale,
            };
            let qg = &q[t * c.dim + kvh * group * hd..][..group * hd];
            let len = pos + 1;
            match (&cache.k[layer], &cache.v[layer]) {
                (Store::F32(k), Store::F32(v)) => attend(&geo, k, v, kvh, qg, len, o),
                (Store::F16(k), Store::F16(v)) => attend(&geo, k, v, kvh, qg, len, o),
                _ => unreachable!("keys and values share one type"),
            }
        });
}

struct Geometry {
    hd: usize,
    cap: usize,
    kv_dim: usize,
    scale: f32,
}

/// A cache element type: f32, or f16 bits.
trait Elem: Copy {
    fn to_f32(self) -> f32;
    /// The lanes that run without any CPU feature.
    type Portable: Lanes<E = Self>;
    /// The lanes for AVX2 + F16C machines.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    type Avx2: Lanes<E = Self>;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    type Portable = F32Lanes;
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    type Avx2 = F32Lanes;
}

impl Elem for u16 {
    fn to_f32(self) -> f32 {
        f16_bits_to_f32(self)
    }
    type Portable = F16Portable;
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    type Avx2 = F16Avx2;
}

/// Eight cache values as f32, and the f16 rounding that goes with the cache type.
trait Lanes {
    type E: Elem;
    const F16: bool;
    /// `s[i .. i + 8]` as f32.
    unsafe fn load8(s: &[Self::E], i: usize) -> f32x8;
    /// Round to the nearest f16 (kept as f32), as `f32_to_f16_bits` then back.
    unsafe fn round8(x: f32x8) -> f32x8;
}

struct F32Lanes;
impl Lanes for F32Lanes {
    type E = f32;
    const F16: bool = false;
    #[inline(always)]
    unsafe fn load8(s: &[f32], i: usize) -> f32x8 {
        f32x8::from_slice(&s[i..i + 8])
    }
    #[inline(always)]
    unsafe fn round8(x: f32x8) -> f32x8 {
        x
    }
}

struct F16Portable;
impl Lanes for F16Portable {
    type E = u16;
    const F16: bool = true;
    #[inline(always)]
    unsafe fn load8(s: &[u16], i: usize) -> f32x8 {
        f16_to_f32_portable(u16x8::from_slice(&s[i..i + 8]))
    }
    #[inline(always)]
    unsafe fn round8(x: f32x8) -> f32x8 {
        f32x8::from_array(x.to_array().map(|v| f16_bits_to_f32(f32_to_f16_bits(v))))
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
struct F16Avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl Lanes for F16Avx2 {
    type E = u16;
    const F16: bool = true;
    #[inline(always)]
    unsafe fn load8(s: &[u16], i: usize) -> f32x8 {
        use crate::quant::simd::x86::*;
        let s = &s[i..i + 8];
        f32x8::from(_mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast())))
    }
    #[inline(always)]
    unsafe fn round8(x: f32x8) -> f32x8 {
        // F16C rounds to nearest even like `f32_to_f16_bits` (tested); only NaN payloads differ.
        use crate::quant::simd::x86::*;
        f32x8::from(_mm256_cvtph_ps(
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x.into()),
        ))
    }
}

/// [`attend_group`] with the fastest lanes this CPU has.
fn attend<E: Elem>(
    g: &Geometry,
    k: &[E],
    v: &[E],
    kvh: usize,
    q: &[f32],
    len: usize,
    out: &mut [f32],
) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if crate::quant::simd::has_avx2() {
        // SAFETY: checked just above.
        return unsafe { attend_avx2::<E::Avx2>(g, k, v, kvh, q, len, out) };
    }
    // SAFETY: the portable lanes need no CPU feature.
    unsafe { attend_group::<E::Portable>(g, k, v, kvh, q, len, out) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<L: Lanes>(
    g: &Geometry,
    k: &[L::E],
    v: &[L::E],
    kvh: usize,
    q: &[f32],
    len: usize,
    out: &mut [f32],
) {
    attend_group::<L>(g, k, v, kvh, q, len, out)
}

/// How many heads of a group the next tile takes (8, 4, 2 or 1): about eight accumulators
/// per tile, enough to hide the add latency without spilling registers.
fn heads_per_tile(left: usize) -> usize {
    match left {
        8.. => 8,
        4..=7 => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

/// The query heads `q` (`group * hd`) of KV head `kvh` at one position, over positions
/// `0..len`; writes `out` (`group * hd`).
#[inline(always)]
unsafe fn attend_group<L: Lanes>(
    g: &Geometry,
    k: &[L::E],
    v: &[L::E],
    kvh: usize,
    q: &[f32],
    len: usize,
    out: &mut [f32],
) {
    let hd = g.hd;
    let heads = q.len() / hd;
    let len8 = len.next_multiple_of(8);
    let mut q = q.to_vec();
    if L::F16 {
        q.iter_mut()
            .for_each(|x| *x = f16_bits_to_f32(f32_to_f16_bits(*x)));
    }
    // This KV head's keys: row i (component i of every position) at i * cap.
    let kt = &k[kvh * hd * g.cap..(kvh + 1) * hd * g.cap];
    let mut probs = vec![0f32; heads * len8];
    let mut h0 = 0;
    while h0 < heads {
        let hn = heads_per_tile(heads - h0);
        let (qs, ps) = (
            &q[h0 * hd..(h0 + hn) * hd],
            &mut probs[h0 * len8..(h0 + hn) * len8],
        );
        match hn {
            8 => scores::<L, 8, 1>(g, kt, qs, len8, ps),
            4 => scores::<L, 4, 2>(g, kt, qs, len8, ps),
            2 => scores::<L, 2, 4>(g, kt, qs, len8, ps),
            _ => scores::<L, 1, 4>(g, kt, qs, len8, ps),
        }
        h0 += hn;
    }
    for p in probs.chunks_exact_mut(len8) {
        let p = &mut p[..len];
        softmax(p);
        if L::F16 {
            let (chunks, rest) = p.as_chunks_mut::<8>();
            for c in chunks {
                *c = L::round8(f32x8::from_array(*c)).to_array();
            }
            rest.iter_mut()
                .for_each(|x| *x = f16_bits_to_f32(f32_to_f16_bits(*x)));
        }
    }
    let vh = &v[kvh * hd..];
    let mut h0 = 0;
    while h0 < heads {
        let hn = heads_per_tile(heads - h0);
        let (ps, os) = (
            &probs[h0 * len8..(h0 + hn) * len8],
            &mut out[h0 * hd..(h0 + hn) * hd],
        );
        match hn {
            8 => values::<L, 8, 1>(g, vh, ps, len, len8, os),
            4 => values::<L, 4, 2>(g, vh, ps, len, len8, os),
            2 => values::<L, 2, 4>(g, vh, ps, len, len8, os),
            _ => values::<L, 1, 4>(g, vh, ps, len, len8, os),
        }
        h0 += hn;
    }
}

/// Scores of `H` heads (`q`: `H * hd`) against positions `0..len8` of the transposed keys
/// `kt`, into `probs` (`H` rows of `len8`). Tiles of `H` heads x `P` vectors of 8 positions.
#[inline(always)]
unsafe fn scores<L: Lanes, const H: usize, const P: usize>(
    g: &Geometry,
    kt: &[L::E],
    q: &[f32],
    len8: usize,
    probs: &mut [f32],
) {
    let mut p0 = 0;
    while p0 + 8 * P <= len8 {
        scores_tile::<L, H, P>(g, kt, q, p0, len8, probs);
        p0 += 8 * P;
    }
    while p0 < len8 {
        scores_tile::<L, H, 1>(g, kt, q, p0, len8, probs);
        p0 += 8;
    }
}

#[inline(always)]
unsafe fn scores_tile<L: Lanes, const H: usize, const P: usize>(
    g: &Geometry,
    kt: &[L::E],
    q: &[f32],
    p0: usize,
    len8: usize,
    probs: &mut [f32],
) {
    let hd = g.hd;
    let mut acc = [[f32x8::splat(-0.0); P]; H];
    for i in 0..hd {
        let row = i * g.cap + p0;
        let kv: [f32x8; P] = std::array::from_fn(|j| L::load8(kt, row + 8 * j));
        for h in 0..H {
            let qb = f32x8::splat(q[h * hd + i]);
            for j in 0..P {
                acc[h][j] += qb * kv[j];
            }
        }
    }
    let scale = f32x8::splat(g.scale);
    for h in 0..H {
        for j in 0..P {
            (acc[h][j] * scale).copy_to_slice(&mut probs[h * len8 + p0 + 8 * j..][..8]);
        }
    }
}

/// Outputs of `H` heads: probabilities (`H` rows of `len8`, first `len` used) times the value
/// rows of positions `0..len` (`vh`: this KV head's first component, rows `kv_dim` apart).
/// Tiles of `H` heads x `D` vectors of 8 components; components past the last whole 8 one by
/// one, in the same order.
#[inline(always)]
unsafe fn values<L: Lanes, const H: usize, const D: usize>(
    g: &Geometry,
    vh: &[L::E],
    probs: &[f32],
    len: usize,
    len8: usize,
    out: &mut [f32],
) {
    let (hd, kv_dim) = (g.hd, g.kv_dim);
    let mut d0 = 0;
    while d0 + 8 * D <= hd {
        values_tile::<L, H, D>(g, vh, probs, len, len8, d0, out);
        d0 += 8 * D;
    }
    while d0 + 8 <= hd {
        values_tile::<L, H, 1>(g, vh, probs, len, len8, d0, out);
        d0 += 8;
    }
    for d in d0..hd {
        for h in 0..H {
            let mut acc = 0.0f32;
            for p in 0..len {
                acc += probs[h * len8 + p] * vh[p * kv_dim + d].to_f32();
            }
            out[h * hd + d] = acc;
        }
    }
}

#[inline(always)]
unsafe fn values_tile<L: Lanes, const H: usize, const D: usize>(
    g: &Geometry,
    vh: &[L::E],
    probs: &[f32],
    len: usize,
    len8: usize,
    d0: usize,
    out: &mut [f32],
) {
    let mut acc = [[f32x8::splat(0.0); D]; H];
    for p in 0..len {
        let row = p * g.kv_dim + d0;
        let vv: [f32x8; D] = std::array::from_fn(|j| L::load8(vh, row + 8 * j));
        for h in 0..H {
            let w = f32x8::splat(probs[h * len8 + p]);
            for j in 0..D {
                acc[h][j] += w * vv[j];
            }
        }
    }
    for h in 0..H {
        for j in 0..D {
            acc[h][j].copy_to_slice(&mut out[h * g.hd + d0 + 8 * j..][..8]);
        }
    }
}

/// The definition, one (position, head) at a time on an f32 row-per-position cache: what
/// [`attention`] must equal bit for bit.
#[cfg(test)]
pub(crate) fn reference(
    c: &Config,
    k: &[f32],
    v: &[f32],
    q: &[f32],
    n_past: usize,
    f16: bool,
    out: &mut [f32],
) {
    let (hd, kv_dim) = (c.head_dim(), c.kv_dim());
    let group = c.n_head / c.n_head_kv;
    let round = |x: f32| {
        if f16 {
            f16_bits_to_f32(f32_to_f16_bits(x))
        } else {
            x
        }
    };
    for (i, o) in out.chunks_mut(hd).enumerate() {
        let (t, h) = (i / c.n_head, i % c.n_head);
        let qh: Vec<f32> = q[t * c.dim + h * hd..][..hd]
            .iter()
            .map(|&x| round(x))
            .collect();
        let kvh = h / group;
        let len = n_past + t + 1;
        let mut s: Vec<f32> = (0..len)
            .map(|p| {
                qh.iter()
                    .zip(&k[p * kv_dim + kvh * hd..][..hd])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    * (1.0 / (hd as f32).sqrt())
            })
            .collect();
        softmax(&mut s);
        s.iter_mut().for_each(|x| *x = round(*x));
        for (d, od) in o.iter_mut().enumerate() {
            *od = s
                .iter()
                .enumerate()
                .fold(0.0f32, |acc, (p, w)| acc + w * v[p * kv_dim + kvh * hd + d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dim: usize, n_head: usize, n_head_kv: usize) -> Config {
        Config {
            dim,
            n_layer: 1,
            n_head,
            n_head_kv,
            ffn_dim: 4,
            n_vocab: 4,
            train_ctx: 64,
            n_rot: dim / n_head,
            rms_eps: 1e-5,
            freq_base: 1e4,
            freq_scale: 1.0,
        }
    }

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }

    /// Random keys, values and queries through the cache and through [`reference`], for every
    /// way heads split into tiles, head sizes with and without a ragged last 8, and both types.
    /// The values as the cache holds them (rounded through f16 for an f16 cache).
    fn as_stored(x: &[f32], f16: bool) -> Vec<f32> {
        x.iter()
            .map(|&a| {
                if f16 {
                    f16_bits_to_f32(f32_to_f16_bits(a))
                } else {
                    a
                }
            })
            .collect()
    }

    #[test]
    fn equals_reference_bit_for_bit() {
        let mut s = 5u64;
        let shapes = [
            (64, 4, 4),
            (128, 4, 1),
            (96, 8, 2),
            (48, 12, 1),
            (40, 5, 5),
            (64, 8, 8),
            (256, 32, 2),
            (24, 3, 1),
        ];
        for (dim, n_head, n_head_kv) in shapes {
            let c = config(dim, n_head, n_head_kv);
            let kv_dim = c.kv_dim();
            for ty in [KvType::F32, KvType::F16] {
                for (n_ctx, n_past, n) in [
                    (1, 0, 1),
                    (29, 0, 29),
                    (40, 17, 5),
                    (70, 69, 1),
                    (33, 3, 30),
                ] {
                    let mut cache = KvCache::new(&c, n_ctx, ty);
                    let total = n_past + n;
                    let k: Vec<f32> = (0..total * kv_dim).map(|_| lcg(&mut s)).collect();
                    let v: Vec<f32> = (0..total * kv_dim).map(|_| lcg(&mut s)).collect();
                    let q: Vec<f32> = (0..n * dim).map(|_| lcg(&mut s)).collect();
                    cache.write(0, 0, &k[..n_past * kv_dim], &v[..n_past * kv_dim]);
                    cache.write(0, n_past, &k[n_past * kv_dim..], &v[n_past * kv_dim..]);
                    let f16 = ty == KvType::F16;
                    let stored = |x: &[f32]| as_stored(x, f16);
                    let mut want = vec![0f32; n * dim];
                    reference(&c, &stored(&k), &stored(&v), &q, n_past, f16, &mut want);
                    for threads in [1, 2] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let mut got = vec![0f32; n * dim];
                        pool.install(|| attention(&c, &cache, 0, &q, n_past, &mut got));
                        let bits = |x: &[f32]| x.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "dim {dim} heads {n_head}/{n_head_kv} {ty:?} n_past {n_past} n {n}"
                        );
                    }
                }
            }
        }
    }

    /// A cache grown (and shrunk) on demand, with the keys and values written between
    /// resizes, attends with the bits of a cache that held every position from the start.
    #[test]
    fn resized_cache_equals_full_cache() {
        let mut s = 13u64;
        let c = config(96, 8, 2);
        let kv_dim = c.kv_dim();
        let n_ctx = 70;
        for ty in [KvType::F32, KvType::F16] {
            let k: Vec<f32> = (0..n_ctx * kv_dim).map(|_| lcg(&mut s)).collect();
            let v: Vec<f32> = (0..n_ctx * kv_dim).map(|_| lcg(&mut s)).collect();
            let mut full = KvCache::new(&c, n_ctx, ty);
            full.write(0, 0, &k, &v);
            let mut grown = KvCache::empty(&c, n_ctx, ty);
            assert_eq!((grown.cells(), grown.bytes()), (0, 0));
            // (cells to hold, positions kept, positions held after writing)
            let mut held = 0;
            for (cells, keep, upto) in [
                (3, 0, 3),
                (11, 3, 9),
                (40, 9, 33),
                (20, 17, 20),
                (70, 20, 70),
            ] {
                grown.try_resize(cells, keep).unwrap();
                assert_eq!(grown.cells(), cells);
                assert!(grown.bytes() >= cells * KvCache::bytes_per_cell(&c, ty));
                held = held.min(keep);
                let r = held * kv_dim..upto * kv_dim;
                grown.write(0, held, &k[r.clone()], &v[r]);
                held = upto;
                let q: Vec<f32> = (0..c.dim).map(|_| lcg(&mut s)).collect();
                let (mut want, mut got) = (vec![0f32; c.dim], vec![0f32; c.dim]);
                attention(&c, &full, 0, &q, held - 1, &mut want);
                attention(&c, &grown, 0, &q, held - 1, &mut got);
                let bits = |x: &[f32]| x.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{ty:?} at {cells} cells");
            }
            grown.try_resize(0, 0).unwrap();
            assert_eq!(grown.bytes(), 0, "an emptied cache gives its memory back");
        }
    }

    /// An allocation that cannot succeed is an error, and the cache is left as it was.
    #[test]
    fn impossible_growth_is_an_error() {
        let mut c = config(64, 4, 4);
        c.n_layer = 2;
        let mut cache = KvCache::empty(&c, usize::MAX / 64, KvType::F16);
        cache.try_resize(5, 0).unwrap();
        let err = cache.try_resize(usize::MAX / 128, 5).unwrap_err();
        assert!(err.to_string().contains("out of memory"), "{err}");
        assert_eq!(cache.cells(), 5);
        assert_eq!(cache.bytes(), 8 * c.kv_dim() * 2 * 2 * 2);
    }

    /// The portable kernels (what runs without AVX2) equal the reference too.
    #[test]
    fn portable_equals_reference() {
        let mut s = 9u64;
        let c = config(96, 8, 2);
        let (kv_dim, n_ctx) = (c.kv_dim(), 21);
        for ty in [KvType::F32, KvType::F16] {
            let mut cache = KvCache::new(&c, n_ctx, ty);
            let k: Vec<f32> = (0..n_ctx * kv_dim).map(|_| lcg(&mut s)).collect();
            let v: Vec<f32> = (0..n_ctx * kv_dim).map(|_| lcg(&mut s)).collect();
            let q: Vec<f32> = (0..c.dim).map(|_| lcg(&mut s)).collect();
            cache.write(0, 0, &k, &v);
            let f16 = ty == KvType::F16;
            let stored = |x: &[f32]| as_stored(x, f16);
            let mut want = vec![0f32; c.dim];
            // The last position only: n_past = n_ctx - 1.
            let mut k_all = stored(&k);
            k_all.truncate(n_ctx * kv_dim);
            reference(&c, &k_all, &stored(&v), &q, n_ctx - 1, f16, &mut want);
            let geo = Geometry {
                hd: c.head_dim(),
                cap: cache.cap,
                kv_dim,
                scale: 1.0 / (c.head_dim() as f32).sqrt(),
            };
            let group = c.n_head / c.n_head_kv;
            let mut got = vec![0f32; c.dim];
            for (kvh, o) in got.chunks_mut(group * c.head_dim()).enumerate() {
                let qg = &q[kvh * group * c.head_dim()..][..group * c.head_dim()];
                // SAFETY: portable lanes need no CPU feature.
                unsafe {
                    match (&cache.k[0], &cache.v[0]) {
                        (Store::F32(k), Store::F32(v)) => {
                            attend_group::<F32Lanes>(&geo, k, v, kvh, qg, n_ctx, o)
                        }
                        (Store::F16(k), Store::F16(v)) => {
                            attend_group::<F16Portable>(&geo, k, v, kvh, qg, n_ctx, o)
                        }
                        _ => unreachable!(),
                    }
                }
            }
            assert_eq!(
                got.iter().map(|a| a.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|a| a.to_bits()).collect::<Vec<_>>(),
                "{ty:?}"
            );
        }
    }

    /// The F16C rounding equals `f32_to_f16_bits` (round to nearest even, subnormals, overflow)
    /// on a spread of bit patterns; NaN stays NaN.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[test]
    fn hardware_f16_rounding_equals_software() {
        if !crate::quant::simd::has_avx2() {
            return;
        }
        let mut bits = 0u32;
        for _ in 0..2_000_000 {
            let xs: [f32; 8] =
                std::array::from_fn(|j| f32::from_bits(bits.wrapping_add(j as u32 * 0x1000)));
            bits = bits.wrapping_add(2147);
            // SAFETY: AVX2 and F16C checked above.
            let hw = unsafe { F16Avx2::round8(f32x8::from_array(xs)) }.to_array();
            for (x, h) in xs.iter().zip(hw) {
                let sw = f16_bits_to_f32(f32_to_f16_bits(*x));
                assert!(
                    sw.to_bits() == h.to_bits() || (sw.is_nan() && h.is_nan()),
                    "{x:e}: {sw:e} vs {h:e}"
                );
            }
        }
    }
}
