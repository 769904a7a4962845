//! The typed-block contract: what a block family is ([`Family`]), what its scales are
//! ([`Scale`]), what it is multiplied with ([`Activation`]), and how blocks are viewed over
//! the mapped bytes ([`Pod`], [`view`]).
//!
//! A block is a `#[repr(C)]` struct of byte arrays (as ggml's `ggml-common.h`): alignment 1,
//! no padding, every bit pattern valid, so a row of any alignment in the memory map is a
//! `&[Block]` without copying. Each family's file asserts its size next to its struct.

use super::simd::{self, FLOAT_LANES};
use super::PreparedRow;
use std::simd::prelude::*;

/// Plain bytes: a `#[repr(C)]` struct of `u8`/`i8` arrays (or of other `Pod` types).
///
/// # Safety
/// Alignment 1, no padding, and every bit pattern a valid value. [`view`] checks the alignment
/// at compile time; the rest is the implementor's promise.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

/// `b` viewed as blocks. Panics unless `b.len()` is a whole number of blocks.
#[inline(always)]
pub fn view<B: Pod>(b: &[u8]) -> &[B] {
    const { assert!(std::mem::align_of::<B>() == 1 && std::mem::size_of::<B>() > 0) };
    let size = std::mem::size_of::<B>();
    assert!(
        b.len().is_multiple_of(size),
        "{} bytes are not whole blocks of {size}",
        b.len()
    );
    // SAFETY: `B` is Pod with alignment 1 (checked above): any `size` bytes are a valid `B`,
    // at any address; the length is exact.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / size) }
}

/// [`view`], mutable.
#[inline(always)]
pub fn view_mut<B: Pod>(b: &mut [u8]) -> &mut [B] {
    const { assert!(std::mem::align_of::<B>() == 1 && std::mem::size_of::<B>() > 0) };
    let size = std::mem::size_of::<B>();
    assert!(
        b.len().is_multiple_of(size),
        "{} bytes are not whole blocks of {size}",
        b.len()
    );
    // SAFETY: as in `view`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len() / size) }
}

/// A block of zero bytes.
#[inline(always)]
pub fn zeroed<B: Pod>() -> B {
    // SAFETY: every bit pattern of a Pod type is valid.
    unsafe { std::mem::zeroed() }
}

/// Signed quants as their bytes (for byte-wise SIMD loads).
#[inline(always)]
pub(crate) fn i8_bytes<const N: usize>(a: &[i8; N]) -> &[u8; N] {
    // SAFETY: i8 and u8 have the same size, alignment and validity.
    unsafe { &*(a as *const [i8; N]).cast::<[u8; N]>() }
}

/// The type of a block's scale: f16 in today's blocks, f32 in pre-GGUF files. Kernels are
/// written once over `S: Scale`; a scale is read to f32 before any arithmetic, so both give
/// the same float operations on the same values.
pub trait Scale: Pod {
    /// The scale's value (exact).
    fn get(self) -> f32;
    /// What a quantizer stores for a computed scale `v`.
    fn store(v: f32) -> Self;
    /// Eight scales as f32 lanes, in plain std::simd.
    fn lanes_portable(s: [Self; 8]) -> f32x8;
    /// [`Scale::lanes_portable`] with the AVX2/F16C instructions.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn lanes_avx2(s: [Self; 8]) -> f32x8 {
        Self::lanes_portable(s)
    }
    /// The scales of 8 blocks of `stride` bytes that start with their scale (`bytes` is the 8
    /// blocks, [`bytes_of`]) as f32 lanes, for the AVX-512 kernels. The default reads them one
    /// by one into [`Scale::lanes_avx2`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn lanes_strided_avx512(bytes: &[u8], stride: usize) -> f32x8 {
        Self::lanes_avx2(read_strided(bytes, stride))
    }
}

/// The 8 values of type `T` at byte `b * stride` of `bytes` (bounds-checked).
#[inline(always)]
pub(crate) fn read_strided<T: Pod>(bytes: &[u8], stride: usize) -> [T; 8] {
    assert!(bytes.len() >= 7 * stride + std::mem::size_of::<T>());
    // SAFETY: in bounds (checked above); `T` is Pod, so any bytes at any address are a `T`.
    std::array::from_fn(|b| unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().add(b * stride).cast())
    })
}

/// The bytes of blocks.
#[inline(always)]
pub(crate) fn bytes_of<B: Pod>(b: &[B]) -> &[u8] {
    // SAFETY: Pod: no padding, alignment 1, so the slice is exactly its `len * size` bytes.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), std::mem::size_of_val(b)) }
}

/// What a family's weight rows are multiplied with, and the accumulation order that goes with
/// it (see `simd.rs`): f32 rows for float weights, q8_0 blocks for quantized ones.
pub trait Activation: Copy + Send + Sync + 'static {
    /// Elements per unit (1 for f32, 32 for a q8_0 block).
    const QK: usize;
    /// Whether weights multiplied with this are "quantized" (`GgmlType::is_quantized`).
    const QUANTIZED: bool;
    /// Units per kernel chunk (the row driver pads the last one with zero units).
    const CHUNK: usize;
    /// A zero unit.
    const ZERO: Self;
    /// The running sums of a row.
    type Acc: Copy;
    fn acc_zero() -> Self::Acc;
    /// The fixed final reduction.
    fn finish(acc: Self::Acc) -> f32;
    /// An f32 row prepared as a row of this type.
    fn prepare(x: &[f32]) -> PreparedRow;
    /// The units of a prepared row, if it was prepared as this type.
    fn view(p: &PreparedRow) -> Option<&[Self]>;
}

/// f32 activations for float weights: 32 lanes, element `i` into lane `i % 32`, then
/// `simd::reduce32`'s order (the four vectors of 8 pairwise, then `reduce8`).
impl Activation for f32 {
    const QK: usize = 1;
    const QUANTIZED: bool = false;
    const CHUNK: usize = FLOAT_LANES;
    const ZERO: f32 = 0.0;
    type Acc = [f32x8; FLOAT_LANES / 8];
    #[inline(always)]
    fn acc_zero() -> Self::Acc {
        [f32x8::splat(0.0); FLOAT_LANES / 8]
    }
    #[inline(always)]
    fn finish(acc: Self::Acc) -> f32 {
        let v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        simd::reduce8(v.to_array())
    }
    fn prepare(x: &[f32]) -> PreparedRow {
        PreparedRow::F32(x.to_vec())
    }
    #[inline(always)]
    fn view(p: &PreparedRow) -> Option<&[f32]> {
        match p {
            PreparedRow::F32(v) => Some(v),
            _ => None,
        }
    }
}

/// A block family: its block struct implements this, once, in its own file; listing it in
/// `families!` (mod.rs) makes it a [`super::GgmlType`] with every row function.
///
/// One block meets one activation unit (`QK == Act::QK`). The kernels come in levels: the
/// scalar reference, the portable std::simd chunk kernel, and one per instruction set, whose
/// default is the portable code compiled for that instruction set. All levels must give the
/// reference's bits (each family's tests check it, `tests_util::check_block_dot_paths`).
pub trait Family: Pod {
    /// Weights per block.
    const QK: usize;
    /// What rows of this family are multiplied with.
    type Act: Activation;
    /// Side data of one activation row for the multi-row kernel (`()` without one).
    type Aux: Send + Sync + 'static;

    /// Quantize `x` (`QK` values) into `out`.
    fn quantize(x: &[f32], out: &mut Self);
    /// Dequantize into `y` (`QK` values).
    fn dequantize(&self, y: &mut [f32]);
    /// The scalar reference dot product of a row with activations (same length in units).
    fn dot_scalar(w: &[Self], x: &[Self::Act]) -> f32;
    /// Add one chunk (`Act::CHUNK` units of each) into `acc`, in the reference's order.
    fn chunk_portable(acc: &mut <Self::Act as Activation>::Acc, w: &[Self], x: &[Self::Act]);
    /// [`Family::chunk_portable`] for AVX2 (inlined into a `#[target_feature]` entry point).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx2(acc: &mut <Self::Act as Activation>::Acc, w: &[Self], x: &[Self::Act]) {
        Self::chunk_portable(acc, w, x)
    }

    /// The chunk kernel for AVX-512 (F, BW, VL, VNNI). The default is the AVX2 kernel, built
    /// for AVX-512 (the next level down, so a family without a kernel of its own loses nothing).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn chunk_avx512(acc: &mut <Self::Act as Activation>::Acc, w: &[Self], x: &[Self::Act]) {
        Self::chunk_avx2(acc, w, x)
    }

    /// The AMX-INT8 tile kernel: the families of 32 signed bytes per block against q8_0
    /// (`amx.rs`) and Q4_K, Q5_K, Q6_K against q8_K (`amx_k.rs`); `None` for the others.
    const TILES_AMX: Option<TilesAmx<Self>> = None;

    /// Whether there is a multi-row kernel (then [`Family::row_aux`] gives side data).
    const MULTI_ROW: bool = false;
    /// Side data of one activation row for [`Family::row_xn_avx2`].
    fn row_aux(_x: &[Self::Act]) -> Option<Self::Aux> {
        None
    }
    /// Whether `aux` is the side data [`Family::row_aux`] makes for an activation row of `x`'s length.
    fn aux_fits(_aux: &Self::Aux, _x: &[Self::Act]) -> bool {
        false
    }
    /// One weight row against `N` activation rows (given by their side data), each result
    /// bit-identical to the single-row kernel. Only called when `MULTI_ROW`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx2<const N: usize>(_w: &[Self], _aux: [&Self::Aux; N]) -> [f32; N] {
        unreachable!("no multi-row kernel")
    }
    /// [`Family::row_xn_avx2`] for AVX-512 (F, BW, VL, VNNI); the default is the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn row_xn_avx512<const N: usize>(w: &[Self], aux: [&Self::Aux; N]) -> [f32; N] {
        Self::row_xn_avx2(w, aux)
    }
}

/// The AMX tile kernel's entry (families with `AMX`): 16 weight rows of `row_len` blocks
/// against groups of 16 tokens, `out[g][r][t]`, bits of [`Family::dot_scalar`].
pub(crate) type TilesAmx<B> =
    unsafe fn(&[B], usize, &[&super::amx::AmxActs], &mut [[[f32; 16]; 16]]);

/// The accumulator type of a family's rows.
pub(crate) type Acc<B> = <<B as Family>::Act as Activation>::Acc;
