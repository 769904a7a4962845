//! The one choice of instruction set, for every family: the row drivers, generic over a
//! [`Family`] and an instruction-set level, and the run-time selection between the levels.
//!
//! Adding an instruction set: a marker type here with its `Isa` impl, one
//! `#[target_feature]` entry per operation below and one branch in each selector (`dot`,
//! `quantize`, `dot_rows`); a method on [`Family`] (and on `Scale`, for reading 8 scales)
//! whose default is the portable code, which each family overrides with one function where
//! the instruction set has something better. (The AVX-512 methods default to the AVX2 kernel
//! instead, built for AVX-512: the next level down. `quantize` has no AVX-512 branch yet.)

use super::block::{zeroed, Acc, Activation, Family};
use super::simd::{self, has_avx2, has_avx512};

/// An instruction-set level: which of a family's chunk kernels it runs.
pub(crate) trait Isa {
    /// # Safety
    /// The CPU must support the instruction set.
    unsafe fn chunk<B: Family>(acc: &mut Acc<B>, w: &[B], x: &[B::Act]);
}

/// Plain std::simd (any CPU).
pub(crate) struct Portable;
impl Isa for Portable {
    #[inline(always)]
    unsafe fn chunk<B: Family>(acc: &mut Acc<B>, w: &[B], x: &[B::Act]) {
        B::chunk_portable(acc, w, x)
    }
}

/// AVX2 + FMA + F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) struct Avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn chunk<B: Family>(acc: &mut Acc<B>, w: &[B], x: &[B::Act]) {
        B::chunk_avx2(acc, w, x)
    }
}

/// AVX-512 F + BW + VL + VNNI, on top of [`Avx2`]'s features.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) struct Avx512;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl Isa for Avx512 {
    #[inline(always)]
    unsafe fn chunk<B: Family>(acc: &mut Acc<B>, w: &[B], x: &[B::Act]) {
        B::chunk_avx512(acc, w, x)
    }
}

/// Largest `Activation::CHUNK` (the padding buffers of the last chunk).
const MAX_CHUNK: usize = 32;

/// A weight row against an activation row: whole chunks, then the last one padded with zero
/// units (zero scales and quants, or zero floats: they add `+0.0` to their lanes), then the
/// activation type's fixed reduction.
///
/// # Safety
/// `I` must be supported by the CPU.
#[inline(always)]
unsafe fn row<B: Family, I: Isa>(w: &[B], x: &[B::Act]) -> f32 {
    const { assert!(<B::Act as Activation>::CHUNK <= MAX_CHUNK && B::QK == <B::Act as Activation>::QK) };
    let c = <B::Act as Activation>::CHUNK;
    debug_assert_eq!(w.len(), x.len());
    let mut acc = <B::Act as Activation>::acc_zero();
    for (wc, xc) in w.chunks_exact(c).zip(x.chunks_exact(c)) {
        simd::prefetch_ahead(wc.as_ptr().cast(), c * size_of::<B>());
        I::chunk::<B>(&mut acc, wc, xc);
    }
    let full = w.len() / c * c;
    if full < w.len() {
        let rem = w.len() - full;
        let mut wp = [zeroed::<B>(); MAX_CHUNK];
        let mut xp = [<B::Act as Activation>::ZERO; MAX_CHUNK];
        wp[..rem].copy_from_slice(&w[full..]);
        xp[..rem].copy_from_slice(&x[full..full + rem]);
        I::chunk::<B>(&mut acc, &wp[..c], &xp[..c]);
    }
    <B::Act as Activation>::finish(acc)
}

/// Dot product of a weight row with an activation row (same number of units), with the
/// fastest kernel for this CPU; bit-identical to `B::dot_scalar`.
#[inline]
pub fn dot<B: Family>(w: &[B], x: &[B::Act]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "dot: {} blocks against {} activation units",
        w.len(),
        x.len()
    );
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if has_avx512() {
            // SAFETY: checked just above.
            return unsafe { dot_avx512(w, x) };
        }
        if has_avx2() {
            // SAFETY: checked just above.
            return unsafe { dot_avx2(w, x) };
        }
    }
    dot_portable(w, x)
}

/// [`dot`] with the portable kernel.
pub fn dot_portable<B: Family>(w: &[B], x: &[B::Act]) -> f32 {
    assert_eq!(w.len(), x.len());
    // SAFETY: the portable kernel needs no CPU feature.
    unsafe { row::<B, Portable>(w, x) }
}

/// [`dot`] with the AVX2 kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_avx2<B: Family>(w: &[B], x: &[B::Act]) -> f32 {
    assert_eq!(w.len(), x.len());
    row::<B, Avx2>(w, x)
}

/// [`dot`] with the AVX-512 kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI (`simd::has_avx512`).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_avx512<B: Family>(w: &[B], x: &[B::Act]) -> f32 {
    assert_eq!(w.len(), x.len());
    row::<B, Avx512>(w, x)
}

#[inline(always)]
fn quantize_loop<B: Family>(src: &[f32], dst: &mut [B]) {
    for (x, out) in src.chunks_exact(B::QK).zip(dst) {
        B::quantize(x, out);
    }
}

/// Quantize `src` (`dst.len() * QK` values) into blocks. The same code is built for AVX2
/// (activation rows are quantized on the hot path); lane-wise IEEE operations, so the bytes
/// are the portable build's.
pub fn quantize<B: Family>(src: &[f32], dst: &mut [B]) {
    assert_eq!(
        src.len(),
        dst.len() * B::QK,
        "quantize: {} values into {} blocks",
        src.len(),
        dst.len()
    );
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if has_avx2() {
        // SAFETY: checked just above.
        return unsafe { quantize_avx2(src, dst) };
    }
    quantize_portable(src, dst)
}

/// [`quantize`] built for any CPU.
pub fn quantize_portable<B: Family>(src: &[f32], dst: &mut [B]) {
    quantize_loop(src, dst)
}

/// [`quantize`] built for AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_avx2<B: Family>(src: &[f32], dst: &mut [B]) {
    quantize_loop(src, dst)
}

/// Dequantize blocks into `dst` (`src.len() * QK` values).
pub fn dequantize<B: Family>(src: &[B], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * B::QK,
        "dequantize: {} blocks into {} values",
        src.len(),
        dst.len()
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(B::QK)) {
        b.dequantize(y);
    }
}

/// `out.len()` consecutive weight rows of `row_len` blocks (`w`) against `N` activation rows:
/// `out[r][t]` has the bits of `dot(row r, xs[t])`. With `aux` (the rows' side data, see
/// [`Family::row_aux`]) and a multi-row kernel for this CPU, each weight block is unpacked once
/// for all `N` rows.
pub fn dot_rows<B: Family, const N: usize>(
    w: &[B],
    row_len: usize,
    xs: [&[B::Act]; N],
    aux: Option<[&B::Aux; N]>,
    out: &mut [[f32; N]],
) {
    assert_eq!(w.len(), out.len() * row_len, "dot_rows: weight rows");
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(aux) = aux.filter(|_| B::MULTI_ROW) {
        if has_avx512() {
            // SAFETY: checked just above.
            return unsafe { rows_avx512::<B, N>(w, row_len, aux, out) };
        }
        if has_avx2() {
            // SAFETY: checked just above.
            return unsafe { rows_avx2::<B, N>(w, row_len, aux, out) };
        }
    }
    let _ = aux;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * row_len..(r + 1) * row_len];
        *o = xs.map(|x| dot::<B>(row, x));
    }
}

/// [`dot_rows`] with the AVX2 multi-row kernel (`B::MULTI_ROW` only).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_avx2<B: Family, const N: usize>(
    w: &[B],
    row_len: usize,
    aux: [&B::Aux; N],
    out: &mut [[f32; N]],
) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = B::row_xn_avx2(&w[r * row_len..(r + 1) * row_len], aux);
    }
}

/// [`dot_rows`] with the AVX-512 multi-row kernel (`B::MULTI_ROW` only).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI (`simd::has_avx512`).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn rows_avx512<B: Family, const N: usize>(
    w: &[B],
    row_len: usize,
    aux: [&B::Aux; N],
    out: &mut [[f32; N]],
) {
    assert_eq!(w.len(), out.len() * row_len, "rows_avx512: weight rows");
    for (r, o) in out.iter_mut().enumerate() {
        *o = B::row_xn_avx512(&w[r * row_len..(r + 1) * row_len], aux);
    }
}
