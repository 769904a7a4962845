//! Block types (F32, F16, Q4_0, Q4_1, Q8_0): quantize, dequantize and dot kernels.
//!
//! One file per block family; this file holds the type enum and the dispatch.
//! Numerics follow the `gguf` Python package byte for byte (see each format's file), and the
//! dot kernels follow llama.cpp: quantized weights are multiplied with activations quantized to
//! q8_0, block by block, in exact integer arithmetic; float weights with f32 activations.
//! `simd.rs` fixes the float accumulation order, so the SIMD kernels equal the scalar
//! references (`vec_dot_scalar`) bit for bit on every CPU.

// Named `fp16` / `fp32`: a module called `f32` would shadow the primitive type.
#[path = "f16.rs"]
mod fp16;
#[path = "f32.rs"]
mod fp32;
mod legacy;
mod q4_0;
mod q4_1;
mod q8_0;
pub(crate) mod simd;

#[cfg(test)]
mod tests_util;

pub use fp16::{f16_bits_to_f32, f32_to_f16_bits};

/// A tensor element type, with ggml's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Pre-GGUF blocks with f32 scales (ggml, ggmf, ggjt v1-v2), nibbles in today's order.
    /// Only ever built in memory by the legacy loader; they have no GGUF id.
    Q4_0F32,
    Q4_1F32,
    Q8_0F32,
}

impl GgmlType {
    /// All supported types, in id order.
    pub const ALL: [GgmlType; 5] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ];

    /// The type with this ggml id (F32=0, F16=1, Q4_0=2, Q4_1=3, Q8_0=8), if supported.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            // Not GGUF types: ids no file uses (`from_id` never returns these).
            GgmlType::Q4_0F32 => 1002,
            GgmlType::Q4_1F32 => 1003,
            GgmlType::Q8_0F32 => 1008,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_0F32 => "Q4_0 (f32 scales)",
            GgmlType::Q4_1F32 => "Q4_1 (f32 scales)",
            GgmlType::Q8_0F32 => "Q8_0 (f32 scales)",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 => q4_0::QK,
            GgmlType::Q4_1 => q4_1::QK,
            GgmlType::Q8_0 => q8_0::QK,
            GgmlType::Q4_0F32 | GgmlType::Q4_1F32 | GgmlType::Q8_0F32 => legacy::QK,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => q4_0::BLOCK_BYTES,
            GgmlType::Q4_1 => q4_1::BLOCK_BYTES,
            GgmlType::Q8_0 => q8_0::BLOCK_BYTES,
            GgmlType::Q4_0F32 => legacy::Q4_0_BYTES,
            GgmlType::Q4_1F32 => legacy::Q4_1_BYTES,
            GgmlType::Q8_0F32 => legacy::Q8_0_BYTES,
        }
    }

    /// Bytes of a row of `n` elements; `None` if `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16)
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

    /// Whether this type can be stored in a GGUF file.
    pub fn is_gguf(self) -> bool {
        Self::ALL.contains(&self)
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
    match ty {
        GgmlType::F32 => fp32::quantize_row(src, dst),
        GgmlType::F16 => fp16::quantize_row(src, dst),
        GgmlType::Q4_0 => q4_0::quantize_row(src, dst),
        GgmlType::Q4_1 => q4_1::quantize_row(src, dst),
        GgmlType::Q8_0 => q8_0::quantize_row(src, dst),
        GgmlType::Q4_0F32 | GgmlType::Q4_1F32 | GgmlType::Q8_0F32 => {
            let today = ty.with_f16_scales();
            let mut tmp = vec![0u8; today.row_bytes(src.len()).unwrap()];
            quantize_row(today, src, &mut tmp);
            legacy::widen(today, &tmp, dst);
        }
    }
}

/// Dequantize a row: `src.len() == row_bytes(dst.len())`. `src` may be unaligned.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(
        ty.row_bytes(dst.len()),
        Some(src.len()),
        "dequantize_row {ty}"
    );
    match ty {
        GgmlType::F32 => fp32::dequantize_row(src, dst),
        GgmlType::F16 => fp16::dequantize_row(src, dst),
        GgmlType::Q4_0 => q4_0::dequantize_row(src, dst),
        GgmlType::Q4_1 => q4_1::dequantize_row(src, dst),
        GgmlType::Q8_0 => q8_0::dequantize_row(src, dst),
        GgmlType::Q4_0F32 => legacy::dequantize_q4_0(src, dst),
        GgmlType::Q4_1F32 => legacy::dequantize_q4_1(src, dst),
        GgmlType::Q8_0F32 => legacy::dequantize_q8_0(src, dst),
    }
}

/// Activations prepared once per input row for a given weight type: f32 for F32/F16 weights,
/// q8_0 bytes for quantized weights (as llama.cpp does).
#[derive(Clone, Debug, PartialEq)]
pub enum PreparedRow {
    F32(Vec<f32>),
    Q8_0(Vec<u8>),
}

/// Prepare `x` for dot products with rows of `weight_type`. For quantized weights `x.len()`
/// must be a multiple of 32.
pub fn prepare_activation(weight_type: GgmlType, x: &[f32]) -> PreparedRow {
    if weight_type.is_quantized() {
        let mut q = vec![0u8; x.len() / q8_0::QK * q8_0::BLOCK_BYTES];
        quantize_row(GgmlType::Q8_0, x, &mut q);
        PreparedRow::Q8_0(q)
    } else {
        PreparedRow::F32(x.to_vec())
    }
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
            PreparedRow::Q8_0(q) => q.len() / q8_0::BLOCK_BYTES * q8_0::QK,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Dot product of one weight row (raw little-endian bytes as stored in the file, any
/// alignment) with an activation row prepared for `weight_type`. Fastest kernel for this CPU;
/// bit-identical to [`vec_dot_scalar`].
#[inline]
pub fn vec_dot(weight_type: GgmlType, w_row: &[u8], x: &PreparedRow) -> f32 {
    check_lengths(weight_type, w_row.len(), x.len());
    match (weight_type, x) {
        (GgmlType::F32, PreparedRow::F32(x)) => fp32::vec_dot(w_row, x),
        (GgmlType::F16, PreparedRow::F32(x)) => fp16::vec_dot(w_row, x),
        (GgmlType::Q4_0, PreparedRow::Q8_0(y)) => q4_0::vec_dot(w_row, y),
        (GgmlType::Q4_1, PreparedRow::Q8_0(y)) => q4_1::vec_dot(w_row, y),
        (GgmlType::Q8_0, PreparedRow::Q8_0(y)) => q8_0::vec_dot(w_row, y),
        (GgmlType::Q4_0F32, PreparedRow::Q8_0(y)) => legacy::vec_dot_q4_0(w_row, y),
        (GgmlType::Q4_1F32, PreparedRow::Q8_0(y)) => legacy::vec_dot_q4_1(w_row, y),
        (GgmlType::Q8_0F32, PreparedRow::Q8_0(y)) => legacy::vec_dot_q8_0(w_row, y),
        _ => mismatch(weight_type),
    }
}

/// The plain scalar reference for [`vec_dot`] (same accumulation order, no SIMD).
pub fn vec_dot_scalar(weight_type: GgmlType, w_row: &[u8], x: &PreparedRow) -> f32 {
    check_lengths(weight_type, w_row.len(), x.len());
    match (weight_type, x) {
        (GgmlType::F32, PreparedRow::F32(x)) => fp32::vec_dot_scalar(w_row, x),
        (GgmlType::F16, PreparedRow::F32(x)) => fp16::vec_dot_scalar(w_row, x),
        (GgmlType::Q4_0, PreparedRow::Q8_0(y)) => q4_0::vec_dot_scalar(w_row, y),
        (GgmlType::Q4_1, PreparedRow::Q8_0(y)) => q4_1::vec_dot_scalar(w_row, y),
        (GgmlType::Q8_0, PreparedRow::Q8_0(y)) => q8_0::vec_dot_scalar(w_row, y),
        (GgmlType::Q4_0F32, PreparedRow::Q8_0(y)) => legacy::vec_dot_q4_0(w_row, y),
        (GgmlType::Q4_1F32, PreparedRow::Q8_0(y)) => legacy::vec_dot_q4_1(w_row, y),
        (GgmlType::Q8_0F32, PreparedRow::Q8_0(y)) => legacy::vec_dot_q8_0(w_row, y),
        _ => mismatch(weight_type),
    }
}

/// Activation rows per [`vec_dot_rows`] call in prompts (then 4, then 1 for the rest).
pub const XN: usize = 8;

/// Side data of one prepared activation row for a weight type's multi-row kernel
/// ([`vec_dot_rows`]), computed once per matmul.
#[derive(Clone, Debug, Default)]
pub enum RowAux {
    /// No multi-row kernel for the weight type (or f32 activations).
    #[default]
    None,
    /// For Q4_0 weights: scales, `8 * sum(q)` per block, quants rearranged (`q4_0::x4_aux`).
    Q4_0 { d: Vec<f32>, s8: Vec<i32>, yt: Vec<u8> },
    /// For Q8_0 weights: scales and quants widened to i16 (`q8_0::rows_aux`).
    Q8_0 { d: Vec<f32>, y16: Vec<i16> },
}

impl RowAux {
    pub fn new(weight_type: GgmlType, x: &PreparedRow) -> RowAux {
        match (weight_type, x) {
            (GgmlType::Q4_0, PreparedRow::Q8_0(y)) => {
                let (d, s8, yt) = q4_0::x4_aux(y);
                RowAux::Q4_0 { d, s8, yt }
            }
            (GgmlType::Q8_0, PreparedRow::Q8_0(y)) => {
                let (d, y16) = q8_0::rows_aux(y);
                RowAux::Q8_0 { d, y16 }
            }
            _ => RowAux::None,
        }
    }

    /// Whether this is the side data `RowAux::new(weight_type, x)` would make (same kind,
    /// whole groups of 8 blocks for `x`'s length).
    pub fn fits(&self, weight_type: GgmlType, x: &PreparedRow) -> bool {
        let groups = match x {
            PreparedRow::Q8_0(y) => (y.len() / q8_0::BLOCK_BYTES).div_ceil(8),
            PreparedRow::F32(_) => return !has_multi_row_kernel(weight_type),
        };
        match (weight_type, self) {
            (GgmlType::Q4_0, RowAux::Q4_0 { d, s8, yt }) => d.len() == groups * 8 && s8.len() == groups * 8 && yt.len() == groups * 256,
            (GgmlType::Q8_0, RowAux::Q8_0 { d, y16 }) => d.len() == groups * 8 && y16.len() == groups * 8 * q8_0::QK,
            (t, _) => !has_multi_row_kernel(t),
        }
    }
}

/// Whether [`vec_dot_rows`] has a multi-row kernel for this weight type (else it runs
/// [`vec_dot`] per pair, and [`RowAux`] is not worth computing).
pub fn has_multi_row_kernel(weight_type: GgmlType) -> bool {
    matches!(weight_type, GgmlType::Q4_0 | GgmlType::Q8_0)
}

/// `out.len()` consecutive weight rows (`w_rows`) against `N` prepared activation rows:
/// `out[r][t] = vec_dot(row r, xs[t])` bit for bit, faster where a multi-row kernel exists
/// (Q4_0, Q8_0: each weight block is unpacked once for all `N`, and the activations come
/// rearranged in `aux`). `aux[t]` is `RowAux::new(weight_type, xs[t])`; rows whose side data
/// does not fit (or types without such a kernel) take [`vec_dot`], with the same bits.
pub fn vec_dot_rows<const N: usize>(weight_type: GgmlType, w_rows: &[u8], xs: [&PreparedRow; N], aux: [&RowAux; N], out: &mut [[f32; N]]) {
    if out.is_empty() {
        return;
    }
    let row_bytes = w_rows.len() / out.len();
    assert_eq!(w_rows.len(), row_bytes * out.len(), "vec_dot_rows: weight bytes are not whole rows");
    for x in xs {
        check_lengths(weight_type, row_bytes, x.len());
    }
    let ys: [Option<&[u8]>; N] = xs.map(|x| match x {
        PreparedRow::Q8_0(y) => Some(&y[..]),
        PreparedRow::F32(_) => None,
    });
    if ys.iter().all(Option::is_some) && aux.iter().zip(xs).all(|(a, x)| a.fits(weight_type, x)) {
        let ys = ys.map(Option::unwrap);
        match weight_type {
            GgmlType::Q4_0 => {
                let part = |k: usize| match aux[k] {
                    RowAux::Q4_0 { d, s8, yt } => (&d[..], &s8[..], &yt[..]),
                    _ => unreachable!("checked by fits"),
                };
                let (d, s8, yt) = (std::array::from_fn(|k| part(k).0), std::array::from_fn(|k| part(k).1), std::array::from_fn(|k| part(k).2));
                return q4_0::vec_dot_rows_xn(w_rows, row_bytes, ys, d, s8, yt, out);
            }
            GgmlType::Q8_0 => {
                let part = |k: usize| match aux[k] {
                    RowAux::Q8_0 { d, y16 } => (&d[..], &y16[..]),
                    _ => unreachable!("checked by fits"),
                };
                let (d, y16) = (std::array::from_fn(|k| part(k).0), std::array::from_fn(|k| part(k).1));
                return q8_0::vec_dot_rows_xn(w_rows, row_bytes, ys, d, y16, out);
            }
            _ => {}
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w_rows[r * row_bytes..(r + 1) * row_bytes];
        *o = xs.map(|x| vec_dot(weight_type, row, x));
    }
}

/// [`vec_dot_rows`] for one weight row.
pub fn vec_dot_xn<const N: usize>(weight_type: GgmlType, w_row: &[u8], xs: [&PreparedRow; N], aux: [&RowAux; N]) -> [f32; N] {
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
            (GgmlType::Q8_0, 8, "Q8_0", 32, 34, true),
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
        for id in [4, 5, 6, 7, 9, 10, 30, u32::MAX] {
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
            // Dequantized values are representable: a second pass changes nothing.
            assert_eq!(y, y2, "{t}");
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

    #[test]
    fn multi_row_dispatch_equals_vec_dot() {
        let mut rng = Rng::new(5);
        let n = 32 * 11;
        for t in GgmlType::ALL {
            let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.05).collect();
            let mut w = vec![0u8; t.row_bytes(n).unwrap()];
            quantize_row(t, &wf, &mut w);
            let ps: Vec<PreparedRow> = (0..4)
                .map(|_| prepare_activation(t, &(0..n).map(|_| rng.normal()).collect::<Vec<_>>()))
                .collect();
            let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(t, p)).collect();
            let got = vec_dot_xn(t, &w, [&ps[0], &ps[1], &ps[2], &ps[3]], [&aux[0], &aux[1], &aux[2], &aux[3]]);
            for k in 0..4 {
                assert_eq!(got[k].to_bits(), vec_dot_scalar(t, &w, &ps[k]).to_bits(), "{t}");
                let one = vec_dot_xn(t, &w, [&ps[k]], [&aux[k]]);
                assert_eq!(one[0].to_bits(), vec_dot_scalar(t, &w, &ps[k]).to_bits(), "{t}");
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
        // `vec_dot` takes on this machine (the AVX2 one is also tested directly when present).
        eprintln!(
            "quant: avx2 kernels {}",
            if simd::has_avx2() { "on" } else { "off" }
        );
    }
}
