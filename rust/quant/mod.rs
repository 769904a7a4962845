//! Block types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS, and the pre-GGUF
//! f32-scale blocks): quantize, dequantize and dot kernels.
//!
//! One file per block family: a `#[repr(C)]` block struct viewed over the mapped bytes and its
//! [`Family`] impl (quantize, dequantize, the scalar reference and the SIMD kernels).
//! `block.rs` holds the traits, `dispatch.rs` the one run-time choice of instruction set,
//! `simd.rs` the shared vector helpers and accumulation orders. This file lists the families
//! (`families!`, one line each) and turns a [`GgmlType`] and bytes into calls on them.
//!
//! Numerics follow the `gguf` Python package byte for byte (see each format's file), and the
//! dot kernels follow llama.cpp: quantized weights are multiplied with activations quantized to
//! q8_0, block by block, in exact integer arithmetic; float weights with f32 activations.
//! `simd.rs` fixes the float accumulation order, so the SIMD kernels equal the scalar
//! references (`vec_dot_scalar`) bit for bit on every CPU.

pub mod amx;
mod amx_k;
pub mod bf16;
pub mod block;
pub mod dispatch;
pub mod f32_scale;
mod iq4;
pub mod iq4_nl;
pub mod iq4_xs;
// Named `fp16` / `fp32`: a module called `f32` would shadow the primitive type.
#[path = "f16.rs"]
pub mod fp16;
#[path = "f32.rs"]
pub mod fp32;
pub(crate) mod kquant_dot;
pub(crate) mod kquant_qx;
pub(crate) mod kquant_scales;
pub(crate) mod kquant_search;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
mod q5_bits;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_k;
pub(crate) mod simd;
pub mod x16;
mod x16_iq4xs;
mod x16_k32;
mod x16_q2k;
mod x16_q3k;
mod x16_q6k;

#[cfg(test)]
mod bench_dot;
#[cfg(test)]
mod tests_family;
#[cfg(test)]
mod tests_util;

pub use block::{view, view_mut, Activation, Family, Pod, Scale};
pub use fp16::{f16_bits_to_f32, f32_to_f16_bits};
pub use simd::{prefetch_hints, prefetch_requested, Level, ISA_ENV, PREFETCH_ENV};

use std::any::Any;
use std::sync::Arc;

/// Something to do with the family of a [`GgmlType`] ([`GgmlType::visit`] calls it with the
/// family's block type).
pub trait Visit {
    type Out;
    fn visit<B: Family>(self) -> Self::Out;
}

/// The one list of block families: `Variant = ggml id, name, stored in GGUF => block type`.
macro_rules! families {
    ($($(#[$doc:meta])* $v:ident = $id:literal, $name:literal, $gguf:literal => $t:ty;)*) => {
        /// A tensor element type, with ggml's numbering (and ggml's names: `Q4_K`).
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($(#[$doc])* $v,)*
        }

        impl GgmlType {
            const LISTED: &[GgmlType] = &[$(GgmlType::$v),*];

            pub fn id(self) -> u32 {
                match self {
                    $(GgmlType::$v => $id,)*
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$v => $name,)*
                }
            }

            /// Whether this type can be stored in a GGUF file.
            pub const fn is_gguf(self) -> bool {
                match self {
                    $(GgmlType::$v => $gguf,)*
                }
            }

            /// Elements per block.
            pub fn block_size(self) -> usize {
                match self {
                    $(GgmlType::$v => <$t as Family>::QK,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self {
                    $(GgmlType::$v => std::mem::size_of::<$t>(),)*
                }
            }

            pub fn is_quantized(self) -> bool {
                match self {
                    $(GgmlType::$v => <<$t as Family>::Act as Activation>::QUANTIZED,)*
                }
            }

            /// Runs `v` with this type's block type.
            #[inline(always)]
            pub fn visit<V: Visit>(self, v: V) -> V::Out {
                match self {
                    $(GgmlType::$v => v.visit::<$t>(),)*
                }
            }
        }
    };
}

families! {
    F32 = 0, "F32", true => fp32::F32;
    F16 = 1, "F16", true => fp16::F16;
    Q4_0 = 2, "Q4_0", true => q4_0::BlockQ4_0;
    Q4_1 = 3, "Q4_1", true => q4_1::BlockQ4_1;
    Q5_0 = 6, "Q5_0", true => q5_0::BlockQ5_0;
    Q5_1 = 7, "Q5_1", true => q5_1::BlockQ5_1;
    Q8_0 = 8, "Q8_0", true => q8_0::BlockQ8_0;
    Q2_K = 10, "Q2_K", true => q2_k::BlockQ2K;
    Q3_K = 11, "Q3_K", true => q3_k::BlockQ3K;
    Q4_K = 12, "Q4_K", true => q4_k::BlockQ4K;
    Q5_K = 13, "Q5_K", true => q5_k::BlockQ5K;
    Q6_K = 14, "Q6_K", true => q6_k::BlockQ6K;
    IQ4_NL = 20, "IQ4_NL", true => iq4_nl::BlockIq4Nl;
    IQ4_XS = 23, "IQ4_XS", true => iq4_xs::BlockIq4Xs;
    BF16 = 30, "BF16", true => bf16::BF16;
    /// Pre-GGUF blocks with f32 scales (ggml, ggmf, ggjt v1-v2), nibbles in today's order.
    /// Only ever built in memory by the legacy loader; their ids are no file's.
    Q4_0F32 = 1002, "Q4_0 (f32 scales)", false => f32_scale::BlockQ4_0F32;
    Q4_1F32 = 1003, "Q4_1 (f32 scales)", false => f32_scale::BlockQ4_1F32;
    Q8_0F32 = 1008, "Q8_0 (f32 scales)", false => f32_scale::BlockQ8_0F32;
}

const N_GGUF: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < GgmlType::LISTED.len() {
        if GgmlType::LISTED[i].is_gguf() {
            n += 1;
        }
        i += 1;
    }
    n
};

impl GgmlType {
    /// All types a GGUF file can hold, in id order.
    pub const ALL: [GgmlType; N_GGUF] = {
        let mut all = [GgmlType::LISTED[0]; N_GGUF];
        let (mut i, mut n) = (0, 0);
        while i < GgmlType::LISTED.len() {
            if GgmlType::LISTED[i].is_gguf() {
                all[n] = GgmlType::LISTED[i];
                n += 1;
            }
            i += 1;
        }
        all
    };

    /// The type with this ggml id (F32=0, F16=1, Q4_0=2, Q4_1=3, Q8_0=8), if GGUF stores it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Bytes of a row of `n` elements; `None` if `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// Today's type with the same block layout (the type itself for GGUF types).
    pub fn with_f16_scales(self) -> GgmlType {
        match self {
            GgmlType::Q4_0F32 => GgmlType::Q4_0,
            GgmlType::Q4_1F32 => GgmlType::Q4_1,
            GgmlType::Q8_0F32 => GgmlType::Q8_0,
            t => t,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Quantize a row: `src.len()` a multiple of the block size, `dst.len() == row_bytes(src.len())`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(
        ty.row_bytes(src.len()),
        Some(dst.len()),
        "quantize_row {ty}"
    );
    struct Q<'a>(&'a [f32], &'a mut [u8]);
    impl Visit for Q<'_> {
        type Out = ();
        fn visit<B: Family>(self) {
            dispatch::quantize::<B>(self.0, view_mut(self.1))
        }
    }
    ty.visit(Q(src, dst))
}

/// Dequantize a row: `src.len() == row_bytes(dst.len())`. `src` may be unaligned.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(
        ty.row_bytes(dst.len()),
        Some(src.len()),
        "dequantize_row {ty}"
    );
    struct D<'a>(&'a [u8], &'a mut [f32]);
    impl Visit for D<'_> {
        type Out = ();
        fn visit<B: Family>(self) {
            dispatch::dequantize::<B>(view(self.0), self.1)
        }
    }
    ty.visit(D(src, dst))
}

/// Activations prepared once per input row for a given weight type (as llama.cpp does): f32
/// for float weights, q8_0 bytes for the 32-weight quantized types, q8_K bytes for the
/// 256-weight super-block types.
#[derive(Clone, Debug, PartialEq)]
pub enum PreparedRow {
    F32(Vec<f32>),
    Q8_0(Vec<u8>),
    Q8K(Vec<u8>),
}

/// Prepare `x` for dot products with rows of `weight_type`. For quantized weights `x.len()`
/// must be a multiple of the type's block size.
pub fn prepare_activation(weight_type: GgmlType, x: &[f32]) -> PreparedRow {
    struct P<'a>(&'a [f32]);
    impl Visit for P<'_> {
        type Out = PreparedRow;
        fn visit<B: Family>(self) -> PreparedRow {
            B::Act::prepare(self.0)
        }
    }
    weight_type.visit(P(x))
}

/// Whether `p` was prepared for weights of `weight_type` (its activation type: f32, q8_0 or
/// q8_K), so one preparation can serve several matrices of a mixed file.
pub fn prepared_for(weight_type: GgmlType, p: &PreparedRow) -> bool {
    struct K<'a>(&'a PreparedRow);
    impl Visit for K<'_> {
        type Out = bool;
        fn visit<B: Family>(self) -> bool {
            B::Act::view(self.0).is_some()
        }
    }
    weight_type.visit(K(p))
}

#[cold]
fn mismatch(weight_type: GgmlType) -> ! {
    panic!("vec_dot: activation not prepared for {weight_type} weights")
}

/// Row lengths must agree (a silent partial sum would be worse than a panic; the check is one
/// compare per row).
#[inline(always)]
fn check_lengths(weight_type: GgmlType, w_len: usize, x_elems: usize) {
    if weight_type.row_bytes(x_elems) != Some(w_len) {
        length_mismatch(weight_type, w_len, x_elems)
    }
}

#[cold]
fn length_mismatch(weight_type: GgmlType, w_len: usize, x_elems: usize) -> ! {
    panic!("vec_dot: {w_len} bytes of {weight_type} weights against {x_elems} activations")
}

impl PreparedRow {
    /// Number of activation elements in the row.
    pub fn len(&self) -> usize {
        match self {
            PreparedRow::F32(v) => v.len(),
            PreparedRow::Q8_0(q) => q.len() / std::mem::size_of::<q8_0::BlockQ8_0>() * q8_0::QK,
            PreparedRow::Q8K(q) => q.len() / std::mem::size_of::<q8_k::BlockQ8K>() * q8_k::QK_K,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The activation units of `x` for family `B`, or the mismatch panic.
#[inline(always)]
fn act<B: Family>(weight_type: GgmlType, x: &PreparedRow) -> &[B::Act] {
    match B::Act::view(x) {
        Some(a) => a,
        None => mismatch(weight_type),
    }
}

/// Dot product of one weight row (raw little-endian bytes as stored in the file, any
/// alignment) with an activation row prepared for `weight_type`. Fastest kernel for this CPU;
/// bit-identical to [`vec_dot_scalar`].
#[inline]
pub fn vec_dot(weight_type: GgmlType, w_row: &[u8], x: &PreparedRow) -> f32 {
    check_lengths(weight_type, w_row.len(), x.len());
    struct V<'a>(GgmlType, &'a [u8], &'a PreparedRow);
    impl Visit for V<'_> {
        type Out = f32;
        #[inline(always)]
        fn visit<B: Family>(self) -> f32 {
            dispatch::dot::<B>(view(self.1), act::<B>(self.0, self.2))
        }
    }
    weight_type.visit(V(weight_type, w_row, x))
}

/// The plain scalar reference for [`vec_dot`] (same accumulation order, no SIMD).
pub fn vec_dot_scalar(weight_type: GgmlType, w_row: &[u8], x: &PreparedRow) -> f32 {
    check_lengths(weight_type, w_row.len(), x.len());
    struct V<'a>(GgmlType, &'a [u8], &'a PreparedRow);
    impl Visit for V<'_> {
        type Out = f32;
        fn visit<B: Family>(self) -> f32 {
            B::dot_scalar(view(self.1), act::<B>(self.0, self.2))
        }
    }
    weight_type.visit(V(weight_type, w_row, x))
}

/// Whether matmuls with weights of `weight_type` take the AMX tile kernel on this machine
/// ([`vec_dot_tiles`]).
pub fn has_amx_kernel(weight_type: GgmlType) -> bool {
    struct A;
    impl Visit for A {
        type Out = bool;
        fn visit<B: Family>(self) -> bool {
            B::TILES_AMX.is_some()
        }
    }
    simd::has_amx() && weight_type.visit(A)
}

pub use amx::{AmxActs, TILE};

impl AmxActs {
    /// 16 prepared rows in the tile layout, if they are quantized rows of one kind (q8_0 or
    /// q8_K) and one length.
    pub fn from_prepared(rows: [&PreparedRow; TILE]) -> Option<AmxActs> {
        fn all<'a, A: Activation>(rows: &[&'a PreparedRow; TILE]) -> Option<[&'a [A]; TILE]> {
            let q: Vec<&[A]> = rows.iter().map(|r| A::view(r)).collect::<Option<_>>()?;
            if q.iter().any(|r| r.len() != q[0].len()) {
                return None;
            }
            Some(std::array::from_fn(|t| q[t]))
        }
        match rows[0] {
            PreparedRow::Q8_0(_) => all(&rows).map(AmxActs::from_q8_0),
            PreparedRow::Q8K(_) => all(&rows).map(AmxActs::from_q8_k),
            PreparedRow::F32(_) => None,
        }
    }
}

/// 16 consecutive weight rows (`w_rows`) against groups of 16 tokens: `out[g][r][t]` has the
/// bits of `vec_dot(row r, token t of group g)`. Only where [`has_amx_kernel`] says so.
pub fn vec_dot_tiles(
    weight_type: GgmlType,
    w_rows: &[u8],
    groups: &[&AmxActs],
    out: &mut [[[f32; TILE]; TILE]],
) {
    assert!(
        has_amx_kernel(weight_type),
        "vec_dot_tiles: no AMX kernel for {weight_type}"
    );
    let row_bytes = w_rows.len() / TILE;
    assert_eq!(row_bytes * TILE, w_rows.len(), "vec_dot_tiles: 16 rows");
    for g in groups {
        check_lengths(weight_type, row_bytes, g.len());
    }
    struct T<'a, 'o>(&'a [u8], &'a [&'a AmxActs], &'o mut [[[f32; TILE]; TILE]]);
    impl Visit for T<'_, '_> {
        type Out = ();
        fn visit<B: Family>(self) {
            let w = view::<B>(self.0);
            assert!(
                self.1
                    .iter()
                    .all(|g| g.unit() == <B::Act as Activation>::QK),
                "vec_dot_tiles: activations not prepared for these weights"
            );
            let f = B::TILES_AMX.expect("checked by has_amx_kernel");
            // SAFETY: has_amx_kernel checked that the CPU has AMX (and AVX-512) with the
            // tile permission.
            unsafe { f(w, w.len() / TILE, self.1, self.2) }
        }
    }
    weight_type.visit(T(w_rows, groups, out))
}

/// Activation rows per [`vec_dot_rows`] call in prompts (then 4, then 1 for the rest).
pub const XN: usize = 8;

/// Side data of one prepared activation row for a weight type's multi-row kernel
/// ([`vec_dot_rows`]), computed once per matmul: the family's `Family::Aux`, or nothing.
#[derive(Clone, Default)]
pub struct RowAux(Option<Arc<dyn Any + Send + Sync>>);

impl std::fmt::Debug for RowAux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "RowAux(..)"
        } else {
            "RowAux(None)"
        })
    }
}

impl RowAux {
    pub fn new(weight_type: GgmlType, x: &PreparedRow) -> RowAux {
        struct N<'a>(&'a PreparedRow);
        impl Visit for N<'_> {
            type Out = RowAux;
            fn visit<B: Family>(self) -> RowAux {
                match B::Act::view(self.0) {
                    Some(a) if B::MULTI_ROW => {
                        RowAux(B::row_aux(a).map(|v| Arc::new(v) as Arc<dyn Any + Send + Sync>))
                    }
                    _ => RowAux(None),
                }
            }
        }
        weight_type.visit(N(x))
    }

    /// The side data for family `B`, if that is what this holds.
    fn get<B: Family>(&self) -> Option<&B::Aux> {
        self.0.as_ref()?.downcast_ref::<B::Aux>()
    }

    /// Whether this is the side data `RowAux::new(weight_type, x)` would make (same kind,
    /// whole groups of 8 blocks for `x`'s length); always true for types without a
    /// multi-row kernel, which ignore it.
    pub fn fits(&self, weight_type: GgmlType, x: &PreparedRow) -> bool {
        struct F<'a>(&'a RowAux, &'a PreparedRow);
        impl Visit for F<'_> {
            type Out = bool;
            fn visit<B: Family>(self) -> bool {
                if !B::MULTI_ROW {
                    return true;
                }
                match (self.0.get::<B>(), B::Act::view(self.1)) {
                    (Some(aux), Some(a)) => B::aux_fits(aux, a),
                    _ => false,
                }
            }
        }
        weight_type.visit(F(self, x))
    }
}

/// Whether [`vec_dot_rows`] has a multi-row kernel for this weight type (else it runs
/// [`vec_dot`] per pair, and [`RowAux`] is not worth computing).
pub fn has_multi_row_kernel(weight_type: GgmlType) -> bool {
    struct M;
    impl Visit for M {
        type Out = bool;
        fn visit<B: Family>(self) -> bool {
            B::MULTI_ROW
        }
    }
    weight_type.visit(M)
}

pub use x16::TokenTiles;

impl TokenTiles {
    /// 16 prepared q8_0 rows of one length, for the tile kernel over repacked Q4_0 weights.
    pub fn from_prepared(rows: [&PreparedRow; TILE]) -> Option<TokenTiles> {
        let q: Vec<&[q8_0::BlockQ8_0]> = rows
            .iter()
            .map(|r| q8_0::BlockQ8_0::view(r))
            .collect::<Option<_>>()?;
        if q.iter().any(|r| r.len() != q[0].len()) {
            return None;
        }
        Some(TokenTiles::new(std::array::from_fn(|t| q[t])))
    }
}

/// [`vec_dot_rows`] for a chunk of 16 rows repacked by `x16::repack` (Q4_0, Q8_0, the
/// K-quants, IQ4_XS):
/// `out[r][n]` with the bits of the row kernels. Needs the AVX-512 level (where weights are
/// repacked).
pub fn vec_dot_rows_x16<const N: usize>(
    weight_type: GgmlType,
    chunk: &[u8],
    xs: [&PreparedRow; N],
    aux: [&RowAux; N],
    out: &mut [[f32; N]],
) {
    assert_eq!(out.len(), x16::ROWS, "vec_dot_rows_x16: 16 rows");
    assert!(
        simd::has_avx512(),
        "vec_dot_rows_x16: repacked weights need AVX-512"
    );
    fn side<'a, B: Family>(aux: &'a RowAux, x: &[B::Act]) -> &'a B::Aux {
        aux.get::<B>()
            .filter(|a| B::aux_fits(a, x))
            .expect("vec_dot_rows_x16: side data not prepared for these weights")
    }
    #[cfg(target_arch = "x86_64")]
    {
        let r = match weight_type {
            GgmlType::Q4_0 | GgmlType::Q8_0 => {
                let x: [&[q8_0::BlockQ8_0]; N] = xs.map(|x| {
                    q8_0::BlockQ8_0::view(x).expect("vec_dot_rows_x16: activations are not q8_0")
                });
                let nb = x.first().map_or(0, |x| x.len());
                if weight_type == GgmlType::Q4_0 {
                    let a = std::array::from_fn(|n| side::<q4_0::BlockQ4_0>(aux[n], x[n]));
                    // SAFETY: checked above.
                    unsafe { x16::rows_avx512::<N>(chunk, nb, x, a) }
                } else {
                    let a = std::array::from_fn(|n| side::<q8_0::BlockQ8_0>(aux[n], x[n]));
                    // SAFETY: checked above.
                    unsafe { x16::rows_q8_avx512::<N>(chunk, nb, x, a) }
                }
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let x: [&[q8_k::BlockQ8K]; N] = xs.map(|x| {
                    q8_k::BlockQ8K::view(x).expect("vec_dot_rows_x16: activations are not q8_K")
                });
                fn run<B, const N: usize>(
                    chunk: &[u8],
                    x: [&[q8_k::BlockQ8K]; N],
                    aux: [&RowAux; N],
                ) -> [[f32; N]; x16::ROWS]
                where
                    B: x16_k32::X16K32 + Family<Act = q8_k::BlockQ8K, Aux = kquant_dot::K8Aux>,
                {
                    let nb = chunk.len() / B::LAYOUT.column();
                    let a = std::array::from_fn(|n| side::<B>(aux[n], x[n]));
                    // SAFETY: the caller checked simd::has_avx512.
                    unsafe { x16_k32::rows_avx512::<B, N>(chunk, nb, a) }
                }
                if weight_type == GgmlType::Q4_K {
                    run::<q4_k::BlockQ4K, N>(chunk, x, aux)
                } else {
                    run::<q5_k::BlockQ5K, N>(chunk, x, aux)
                }
            }
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K | GgmlType::IQ4_XS => {
                let x: [&[q8_k::BlockQ8K]; N] = xs.map(|x| {
                    q8_k::BlockQ8K::view(x).expect("vec_dot_rows_x16: activations are not q8_K")
                });
                let nb = chunk.len() / x16::layout(weight_type).unwrap().column();
                // SAFETY: checked above.
                unsafe {
                    match weight_type {
                        GgmlType::Q2_K => x16_q2k::rows_avx512::<N>(chunk, nb, x),
                        GgmlType::Q3_K => x16_q3k::rows_avx512::<N>(chunk, nb, x),
                        GgmlType::Q6_K => x16_q6k::rows_avx512::<N>(chunk, nb, x),
                        _ => x16_iq4xs::rows_avx512::<N>(chunk, nb, x),
                    }
                }
            }
            other => panic!("vec_dot_rows_x16: {other} is not repacked"),
        };
        out.copy_from_slice(&r);
    }
}

/// [`vec_dot_tiles`] for a chunk of 16 repacked rows (Q4_0 or Q8_0): `out[g][r][t]`.
pub fn vec_dot_tiles_x16(
    weight_type: GgmlType,
    chunk: &[u8],
    groups: &[&TokenTiles],
    out: &mut [[[f32; TILE]; TILE]],
) {
    assert!(simd::has_amx(), "vec_dot_tiles_x16: no AMX here");
    let l = x16::layout(weight_type).expect("vec_dot_tiles_x16: not a repacked type");
    let nb = chunk.len() / l.column();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: checked just above.
    unsafe {
        if weight_type == GgmlType::Q8_0 {
            x16::tiles::<true>(chunk, nb, groups, out)
        } else {
            x16::tiles::<false>(chunk, nb, groups, out)
        }
    };
}

/// `out.len()` consecutive weight rows (`w_rows`) against `N` prepared activation rows:
/// `out[r][t] = vec_dot(row r, xs[t])` bit for bit, faster where a multi-row kernel exists
/// (Q4_0, Q8_0 and their f32-scale twins: each weight block is unpacked once for all `N`, and
/// the activations come rearranged in `aux`). `aux[t]` is `RowAux::new(weight_type, xs[t])`;
/// rows whose side data does not fit (or types without such a kernel) take [`vec_dot`], with
/// the same bits.
pub fn vec_dot_rows<const N: usize>(
    weight_type: GgmlType,
    w_rows: &[u8],
    xs: [&PreparedRow; N],
    aux: [&RowAux; N],
    out: &mut [[f32; N]],
) {
    if out.is_empty() {
        return;
    }
    let row_bytes = w_rows.len() / out.len();
    assert_eq!(
        w_rows.len(),
        row_bytes * out.len(),
        "vec_dot_rows: weight bytes are not whole rows"
    );
    for x in xs {
        check_lengths(weight_type, row_bytes, x.len());
    }
    struct R<'a, 'o, const N: usize>(
        GgmlType,
        &'a [u8],
        [&'a PreparedRow; N],
        [&'a RowAux; N],
        &'o mut [[f32; N]],
    );
    impl<const N: usize> Visit for R<'_, '_, N> {
        type Out = ();
        #[inline(always)]
        fn visit<B: Family>(self) {
            let R(ty, w_rows, xs, aux, out) = self;
            let w = view::<B>(w_rows);
            let ys = xs.map(|x| act::<B>(ty, x));
            let aux: Option<[&B::Aux; N]> = if B::MULTI_ROW {
                let got = aux.map(|a| a.get::<B>());
                if got
                    .iter()
                    .zip(ys)
                    .all(|(a, y)| a.is_some_and(|a| B::aux_fits(a, y)))
                {
                    Some(got.map(Option::unwrap))
                } else {
                    None
                }
            } else {
                None
            };
            dispatch::dot_rows::<B, N>(w, w.len() / out.len(), ys, aux, out)
        }
    }
    weight_type.visit(R(weight_type, w_rows, xs, aux, out))
}

/// [`vec_dot_rows`] for one weight row.
#[cfg(test)]
pub(crate) fn vec_dot_xn<const N: usize>(
    weight_type: GgmlType,
    w_row: &[u8],
    xs: [&PreparedRow; N],
    aux: [&RowAux; N],
) -> [f32; N] {
    let mut out = [[0f32; N]];
    vec_dot_rows(weight_type, w_row, xs, aux, &mut out);
    out[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tests_util::{known_input, Rng};

    #[test]
    fn type_table() {
        let expect = [
            (GgmlType::F32, 0, "F32", 1, 4, false),
            (GgmlType::F16, 1, "F16", 1, 2, false),
            (GgmlType::Q4_0, 2, "Q4_0", 32, 18, true),
            (GgmlType::Q4_1, 3, "Q4_1", 32, 20, true),
            (GgmlType::Q5_0, 6, "Q5_0", 32, 22, true),
            (GgmlType::Q5_1, 7, "Q5_1", 32, 24, true),
            (GgmlType::Q8_0, 8, "Q8_0", 32, 34, true),
            (GgmlType::Q2_K, 10, "Q2_K", 256, 84, true),
            (GgmlType::Q3_K, 11, "Q3_K", 256, 110, true),
            (GgmlType::Q4_K, 12, "Q4_K", 256, 144, true),
            (GgmlType::Q5_K, 13, "Q5_K", 256, 176, true),
            (GgmlType::Q6_K, 14, "Q6_K", 256, 210, true),
            (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18, true),
            (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136, true),
            (GgmlType::BF16, 30, "BF16", 1, 2, false),
        ];
        for (t, id, name, bs, ts, q) in expect {
            assert_eq!(GgmlType::from_id(id), Some(t));
            assert_eq!(t.id(), id);
            assert_eq!(t.name(), name);
            assert_eq!(t.to_string(), name);
            assert_eq!(t.block_size(), bs);
            assert_eq!(t.type_size(), ts);
            assert_eq!(t.is_quantized(), q);
        }
        for id in [4, 5, 9, 31, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None);
        }
        assert_eq!(GgmlType::Q4_0.row_bytes(4096), Some(128 * 18));
        assert_eq!(GgmlType::Q4_0.row_bytes(0), Some(0));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::F16.row_bytes(7), Some(14));
        assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
        assert_eq!(GgmlType::Q8_0.row_bytes(usize::MAX / 32 * 32), None);
    }

    #[test]
    fn round_trip_all_types() {
        let x = known_input(3, 32 * 40);
        for t in GgmlType::ALL {
            let mut b = vec![0u8; t.row_bytes(x.len()).unwrap()];
            quantize_row(t, &x, &mut b);
            let mut y = vec![0f32; x.len()];
            dequantize_row(t, &b, &mut y);
            let mut b2 = vec![0u8; b.len()];
            quantize_row(t, &y, &mut b2);
            let mut y2 = vec![0f32; x.len()];
            dequantize_row(t, &b2, &mut y2);
            // Dequantized values are representable: a second pass changes nothing, except for
            // encoders that search for their scales: llama.cpp's K-quant searches (256-weight
            // super-blocks) may pick another scale for the decoded values (Q5_K does here), and
            // its IQ4 fit does not map its own output to itself, it only stays close. Their
            // bytes are checked against llama.cpp's instead (tests/test_quant_llama_cpp.py).
            if matches!(t, GgmlType::IQ4_NL | GgmlType::IQ4_XS) {
                let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    y.iter().zip(&y2).all(|(a, b)| (a - b).abs() <= 0.2 * amax),
                    "{t}"
                );
            } else if t.block_size() < 256 {
                assert_eq!(y, y2, "{t}");
            }
            for (a, r) in x.iter().zip(&y) {
                assert!(r.is_finite());
                if t == GgmlType::F32 {
                    assert_eq!(a, r);
                }
            }
        }
    }

    #[test]
    fn prepared_dot_matches_dequantized_math() {
        let mut rng = Rng::new(99);
        let n = 256;
        let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.05).collect();
        for t in GgmlType::ALL {
            let mut w = vec![0u8; t.row_bytes(n).unwrap()];
            quantize_row(t, &wf, &mut w);
            let p = prepare_activation(t, &x);
            match (&p, t.is_quantized()) {
                (PreparedRow::Q8_0(q), true) => assert_eq!(q.len(), n / 32 * 34),
                (PreparedRow::Q8K(q), true) => assert_eq!(q.len(), n / 256 * 292),
                (PreparedRow::F32(v), false) => assert_eq!(v, &x),
                _ => panic!("wrong preparation for {t}"),
            }
            let r = vec_dot(t, &w, &p);
            assert_eq!(r.to_bits(), vec_dot_scalar(t, &w, &p).to_bits(), "{t}");
            let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = wf
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            let tol = match t {
                GgmlType::F32 => 1e-6,
                GgmlType::F16 => 2e-3,
                GgmlType::Q8_0 => 2e-2,
                _ => 0.15,
            };
            assert!((r as f64 - exact).abs() <= tol * mag, "{t}: {r} vs {exact}");
        }
    }

    /// Every listed family (the f32-scale ones too) through the byte-level functions: sizes
    /// from the block struct, and every path of the dispatch with the scalar reference's bits,
    /// ragged groups included.
    #[test]
    fn every_listed_family_dispatches_alike() {
        let mut rng = Rng::new(21);
        for &t in GgmlType::LISTED {
            assert_eq!(t.row_bytes(t.block_size()), Some(t.type_size()), "{t}");
            assert_eq!(t.is_gguf(), GgmlType::ALL.contains(&t), "{t}");
            for nb in [0, 1, 7, 8, 9, 23] {
                let n = nb * t.block_size().max(32);
                let rows = 3;
                let wf: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.05).collect();
                let mut w = vec![0u8; t.row_bytes(rows * n).unwrap()];
                quantize_row(t, &wf, &mut w);
                let mut back = vec![0f32; rows * n];
                dequantize_row(t, &w, &mut back);
                assert!(back.iter().all(|v| v.is_finite()), "{t}");
                let ps: Vec<PreparedRow> = (0..8)
                    .map(|_| {
                        prepare_activation(t, &(0..n).map(|_| rng.normal()).collect::<Vec<_>>())
                    })
                    .collect();
                let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(t, p)).collect();
                assert!(ps.iter().zip(&aux).all(|(p, a)| a.fits(t, p)), "{t}");
                let rb = t.row_bytes(n).unwrap();
                let mut out = vec![[0f32; 8]; rows];
                vec_dot_rows(
                    t,
                    &w,
                    std::array::from_fn(|k| &ps[k]),
                    std::array::from_fn(|k| &aux[k]),
                    &mut out,
                );
                for (r, o) in out.iter().enumerate() {
                    let row = &w[r * rb..(r + 1) * rb];
                    for (k, p) in ps.iter().enumerate() {
                        let want = vec_dot_scalar(t, row, p);
                        assert_eq!(vec_dot(t, row, p).to_bits(), want.to_bits(), "{t} nb {nb}");
                        assert_eq!(o[k].to_bits(), want.to_bits(), "{t} nb {nb} rows");
                    }
                }
            }
        }
    }

    #[test]
    fn multi_row_dispatch_equals_vec_dot() {
        let mut rng = Rng::new(5);
        for t in GgmlType::ALL {
            let n = t.block_size().max(32) * 11;
            let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.05).collect();
            let mut w = vec![0u8; t.row_bytes(n).unwrap()];
            quantize_row(t, &wf, &mut w);
            let ps: Vec<PreparedRow> = (0..4)
                .map(|_| prepare_activation(t, &(0..n).map(|_| rng.normal()).collect::<Vec<_>>()))
                .collect();
            let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(t, p)).collect();
            let got = vec_dot_xn(
                t,
                &w,
                [&ps[0], &ps[1], &ps[2], &ps[3]],
                [&aux[0], &aux[1], &aux[2], &aux[3]],
            );
            for k in 0..4 {
                assert_eq!(
                    got[k].to_bits(),
                    vec_dot_scalar(t, &w, &ps[k]).to_bits(),
                    "{t}"
                );
                let one = vec_dot_xn(t, &w, [&ps[k]], [&aux[k]]);
                assert_eq!(
                    one[0].to_bits(),
                    vec_dot_scalar(t, &w, &ps[k]).to_bits(),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn empty_rows() {
        for t in GgmlType::ALL {
            let p = prepare_activation(t, &[]);
            assert_eq!(vec_dot(t, &[], &p), 0.0);
            assert_eq!(vec_dot_scalar(t, &[], &p), 0.0);
            quantize_row(t, &[], &mut []);
            dequantize_row(t, &[], &mut []);
        }
    }

    #[test]
    #[should_panic(expected = "not prepared")]
    fn mismatched_preparation_panics() {
        let p = prepare_activation(GgmlType::F32, &[0.0; 32]);
        vec_dot(GgmlType::Q4_0, &[0u8; 18], &p);
    }

    #[test]
    #[should_panic(expected = "against 64 activations")]
    fn length_mismatch_panics() {
        let p = prepare_activation(GgmlType::Q4_0, &[0.0; 64]);
        vec_dot(GgmlType::Q4_0, &[0u8; 18 * 4], &p);
    }

    #[test]
    #[should_panic(expected = "against 3 activations")]
    fn float_length_mismatch_panics() {
        let p = prepare_activation(GgmlType::F16, &[0.0; 3]);
        vec_dot(GgmlType::F16, &[0u8; 8], &p);
    }

    #[test]
    fn simd_path_is_used_here() {
        // Not an assertion of hardware, a report: tells whoever runs the tests which path
        // `vec_dot` takes on this machine (each level it has is also tested directly).
        let on = |b: bool| if b { "on" } else { "off" };
        eprintln!(
            "quant: avx2 kernels {}, avx512 (F/BW/VL/VNNI) kernels {}",
            on(simd::has_avx2()),
            on(simd::has_avx512())
        );
    }
}
