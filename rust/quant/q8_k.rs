//! Q8_K: the activation type of the K-quant and IQ4_XS dot products (llama.cpp's choice).
//! 256 values per 292-byte super-block: f32 scale `d`, 256 signed bytes, and the sums of each
//! 16 of them (`bsums`, for the weight formats with block minimums). Value = `q * d`.
//!
//! Only activations are ever Q8_K (no file stores it), so it is an [`Activation`], not a
//! block family.

use super::block::{view, view_mut, Activation, Pod};
use super::fp32::F32;
use super::simd::{self, BLOCK_LANES};
use super::PreparedRow;
use std::simd::prelude::*;

/// Values per super-block, for every K-quant family.
pub const QK_K: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8K {
    pub d: F32,
    pub qs: [i8; QK_K],
    /// Little-endian i16 sums of `qs[16 j .. 16 j + 16]`; always the true sums in a prepared
    /// row, so a kernel may use them or recompute them and get the same integers.
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
// SAFETY: byte arrays only (alignment 1), no padding.
unsafe impl Pod for BlockQ8K {}

impl BlockQ8K {
    /// `bsums[j]`.
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes(self.bsums[j])
    }

    /// All 16 `bsums` as lanes.
    #[inline(always)]
    pub fn bsums_i16x16(&self) -> i16x16 {
        i16x16::from_array(std::array::from_fn(|j| self.bsum(j)))
    }

    /// llama.cpp's `quantize_row_q8_K_ref` for one super-block, step by step in f32: the value
    /// of largest magnitude (sign kept, the first on a tie) maps to -127, `q =
    /// min(127, nearest_int(x * -127 / max))`, `d = 1 / iscale`. An all-zero block is all zero.
    pub fn quantize(x: &[f32], out: &mut BlockQ8K) {
        let x: &[f32; QK_K] = x.try_into().unwrap();
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            // `>`: NaN never wins, and the first of equal magnitudes is kept.
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *out = Self::ZERO;
            return;
        }
        let iscale = -127.0 / max;
        for (q, &v) in out.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let s: i32 = out.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            out.bsums[j] = (s as i16).to_le_bytes();
        }
        out.d = F32((1.0 / iscale).to_le_bytes());
    }

    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f32::from_le_bytes(self.d.0);
        for (o, &q) in y.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

/// ggml's `nearest_int`: round half to even through the 1.5 * 2^23 trick (for |v| < 2^22;
/// beyond that, and for NaN, the same wrapped bits as the C code).
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Super-block `b` of the row is added into lane `b % 8` of one f32x8, then `simd::reduce8`:
/// the order of every K-quant family.
impl Activation for BlockQ8K {
    const QK: usize = QK_K;
    const QUANTIZED: bool = true;
    const CHUNK: usize = BLOCK_LANES;
    const ZERO: BlockQ8K = BlockQ8K {
        d: F32([0; 4]),
        qs: [0; QK_K],
        bsums: [[0; 2]; QK_K / 16],
    };
    type Acc = f32x8;
    #[inline(always)]
    fn acc_zero() -> f32x8 {
        f32x8::splat(0.0)
    }
    #[inline(always)]
    fn finish(acc: f32x8) -> f32 {
        simd::reduce8(acc.to_array())
    }
    fn prepare(x: &[f32]) -> PreparedRow {
        let mut q = vec![0u8; x.len() / QK_K * std::mem::size_of::<BlockQ8K>()];
        quantize_row(x, view_mut(&mut q));
        PreparedRow::Q8K(q)
    }
    #[inline(always)]
    fn view(p: &PreparedRow) -> Option<&[BlockQ8K]> {
        match p {
            PreparedRow::Q8K(q) => Some(view(q)),
            _ => None,
        }
    }
}

/// An activation row as Q8_K blocks (`x.len() == out.len() * 256`).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K, "q8_K: values into blocks");
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd::has_avx2() {
        // SAFETY: checked just above.
        return unsafe { quantize_row_avx2(x, out) };
    }
    quantize_row_portable(x, out)
}

fn quantize_row_portable(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, o) in x.chunks_exact(QK_K).zip(out) {
        BlockQ8K::quantize(xb, o);
    }
}

/// The same code built for AVX2 (lane-wise IEEE operations: the same bytes).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [BlockQ8K]) {
    quantize_row_portable(x, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::{known_input, Rng};

    fn q(x: &[f32]) -> Vec<BlockQ8K> {
        let mut out = vec![BlockQ8K::ZERO; x.len() / QK_K];
        quantize_row(x, &mut out);
        out
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (126.6, 127),
            (-127.0, -127),
        ] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    #[test]
    fn hand_computed_block() {
        // x = i - 100: the largest magnitude is 155 (i = 255), so iscale = -127/155.
        let x: Vec<f32> = (0..256).map(|i| i as f32 - 100.0).collect();
        let b = &q(&x)[0];
        let iscale = -127.0f32 / 155.0;
        assert_eq!(b.qs[255], -127);
        assert_eq!(b.qs[100], 0);
        for (i, &v) in x.iter().enumerate() {
            assert_eq!(b.qs[i] as i32, (v * iscale).round_ties_even() as i32, "{i}");
        }
        assert_eq!(f32::from_le_bytes(b.d.0), 1.0 / iscale);
        for j in 0..16 {
            let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
            assert_eq!(b.bsum(j) as i32, s);
        }
        let mut y = [0f32; 256];
        b.dequantize(&mut y);
        for (a, r) in x.iter().zip(&y) {
            assert!((a - r).abs() <= 155.0 / 127.0 / 2.0 * 1.0001, "{a} vs {r}");
        }
    }

    #[test]
    fn edge_blocks_and_levels_agree() {
        assert_eq!(q(&[0.0; 256])[0], BlockQ8K::ZERO);
        // The first of equal magnitudes sets the sign: +3 first, so +3 -> -127.
        let mut x = [1.0f32; 256];
        x[7] = 3.0;
        x[9] = -3.0;
        let b = &q(&x)[0];
        assert_eq!((b.qs[7], b.qs[9]), (-127, 127));
        // NaN and infinities: deterministic, no panic.
        x[3] = f32::NAN;
        x[4] = f32::INFINITY;
        let _ = q(&x);
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..256 * 9).map(|_| rng.normal() * 3.0).collect();
        let mut a = vec![BlockQ8K::ZERO; 9];
        quantize_row_portable(&x, &mut a);
        assert_eq!(a, q(&x));
        let x = known_input(1001, 256 * 8);
        let mut a = vec![BlockQ8K::ZERO; 8];
        quantize_row_portable(&x, &mut a);
        assert_eq!(a, q(&x));
    }
}
