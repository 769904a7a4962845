//! Blocks with f32 scales, as the pre-GGUF files stored them (ggml, ggmf, ggjt v1 and v2),
//! after their nibbles were put in today's order at load (see `legacy.rs`):
//!
//! - `Q4_0F32`: 20 bytes, f32 `d`, 16 bytes of nibbles (byte `j` = weights `j`, `j + 16`).
//! - `Q4_1F32`: 24 bytes, f32 `d`, f32 `m`, 16 bytes of nibbles.
//! - `Q8_0F32`: 36 bytes, f32 `d`, 32 signed bytes.
//!
//! Why not convert them to today's f16-scale blocks: rounding an f32 scale to f16 changes
//! every weight of the block, so the model would no longer compute with the weights in the
//! file. These kernels are today's kernels with the scale read as f32: the same exact integer
//! sums against q8_0 activations and the same float accumulation order, so a file whose f32
//! scales happen to be f16 values gives bit for bit the logits of the same weights in GGUF.
//! They are scalar (legacy files are a compatibility path, not the fast one).

use super::simd::{self, BLOCK_LANES, Q8_BYTES};
use super::fp16::read_f16;

pub(crate) const QK: usize = 32;
pub(crate) const Q4_0_BYTES: usize = 20;
pub(crate) const Q4_1_BYTES: usize = 24;
pub(crate) const Q8_0_BYTES: usize = 36;

#[inline(always)]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

pub(crate) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f32_at(b, 0);
        for j in 0..QK / 2 {
            y[j] = d * ((b[4 + j] & 0x0f) as i32 - 8) as f32;
            y[j + QK / 2] = d * ((b[4 + j] >> 4) as i32 - 8) as f32;
        }
    }
}

pub(crate) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (f32_at(b, 0), f32_at(b, 4));
        for j in 0..QK / 2 {
            y[j] = d * (b[8 + j] & 0x0f) as f32 + m;
            y[j + QK / 2] = d * (b[8 + j] >> 4) as f32 + m;
        }
    }
}

pub(crate) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f32_at(b, 0);
        for (o, &q) in y.iter_mut().zip(&b[4..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// As `q4_0::vec_dot_scalar`, with an f32 weight scale.
pub(crate) fn vec_dot_q4_0(w: &[u8], y: &[u8]) -> f32 {
    let mut acc = [0f32; BLOCK_LANES];
    for (b, (wb, yb)) in w.chunks_exact(Q4_0_BYTES).zip(y.chunks_exact(Q8_BYTES)).enumerate() {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            let lo = (wb[4 + j] & 0x0f) as i32 - 8;
            let hi = (wb[4 + j] >> 4) as i32 - 8;
            isum += lo * yb[2 + j] as i8 as i32 + hi * yb[2 + QK / 2 + j] as i8 as i32;
        }
        acc[b % BLOCK_LANES] += (f32_at(wb, 0) * read_f16(yb)) * isum as f32;
    }
    simd::reduce8(acc)
}

/// As `q4_1::vec_dot_scalar`, with f32 weight scale and minimum.
pub(crate) fn vec_dot_q4_1(w: &[u8], y: &[u8]) -> f32 {
    let mut acc = [0f32; BLOCK_LANES];
    for (b, (wb, yb)) in w.chunks_exact(Q4_1_BYTES).zip(y.chunks_exact(Q8_BYTES)).enumerate() {
        let (mut isum, mut ysum) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let (y0, y1) = (yb[2 + j] as i8 as i32, yb[2 + QK / 2 + j] as i8 as i32);
            isum += (wb[8 + j] & 0x0f) as i32 * y0 + (wb[8 + j] >> 4) as i32 * y1;
            ysum += y0 + y1;
        }
        let (dw, mw, dx) = (f32_at(wb, 0), f32_at(wb, 4), read_f16(yb));
        acc[b % BLOCK_LANES] += (dw * dx) * isum as f32 + mw * (dx * ysum as f32);
    }
    simd::reduce8(acc)
}

/// As `q8_0::vec_dot_scalar`, with an f32 weight scale.
pub(crate) fn vec_dot_q8_0(w: &[u8], y: &[u8]) -> f32 {
    let mut acc = [0f32; BLOCK_LANES];
    for (b, (wb, yb)) in w.chunks_exact(Q8_0_BYTES).zip(y.chunks_exact(Q8_BYTES)).enumerate() {
        let mut isum = 0i32;
        for j in 0..QK {
            isum += wb[4 + j] as i8 as i32 * yb[2 + j] as i8 as i32;
        }
        acc[b % BLOCK_LANES] += (f32_at(wb, 0) * read_f16(yb)) * isum as f32;
    }
    simd::reduce8(acc)
}

/// Today's block (f16 scales) widened to the f32-scale layout: exact, used to quantize into
/// these types (nothing in llama-rs writes them; this keeps `quantize_row` total).
pub(crate) fn widen(today: super::GgmlType, src: &[u8], dst: &mut [u8]) {
    use super::GgmlType::*;
    let (tb, lb, n_scales) = match today {
        Q4_0 => (18, Q4_0_BYTES, 1),
        Q4_1 => (20, Q4_1_BYTES, 2),
        Q8_0 => (34, Q8_0_BYTES, 1),
        _ => unreachable!("widen {today}"),
    };
    for (s, d) in src.chunks_exact(tb).zip(dst.chunks_exact_mut(lb)) {
        for k in 0..n_scales {
            d[4 * k..4 * k + 4].copy_from_slice(&read_f16(&s[2 * k..]).to_le_bytes());
        }
        d[4 * n_scales..].copy_from_slice(&s[2 * n_scales..]);
    }
}

#[cfg(test)]
mod tests {
    use crate::quant::tests_util::Rng;
    use crate::quant::{dequantize_row, prepare_activation, quantize_row, vec_dot, GgmlType};

    /// With f16-representable scales the f32-scale kernels give today's results bit for bit.
    #[test]
    fn widened_blocks_compute_like_todays() {
        let mut rng = Rng::new(7);
        let n = 32 * 21;
        let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let wf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();
        for (today, legacy) in [
            (GgmlType::Q4_0, GgmlType::Q4_0F32),
            (GgmlType::Q4_1, GgmlType::Q4_1F32),
            (GgmlType::Q8_0, GgmlType::Q8_0F32),
        ] {
            let mut a = vec![0u8; today.row_bytes(n).unwrap()];
            quantize_row(today, &wf, &mut a);
            let mut b = vec![0u8; legacy.row_bytes(n).unwrap()];
            quantize_row(legacy, &wf, &mut b);
            let p = prepare_activation(legacy, &x);
            assert_eq!(vec_dot(today, &a, &p).to_bits(), vec_dot(legacy, &b, &p).to_bits(), "{legacy}");
            let (mut da, mut db) = (vec![0f32; n], vec![0f32; n]);
            dequantize_row(today, &a, &mut da);
            dequantize_row(legacy, &b, &mut db);
            assert_eq!(da, db);
        }
    }
}
