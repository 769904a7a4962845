//! Blocks with f32 scales, as the pre-GGUF files stored them (ggml, ggmf, ggjt v1 and v2),
//! after their nibbles were put in today's order at load (see `load.rs`: `legacy_weight`, `repack_nibbles`):
//!
//! - `Q4_0F32`: 20 bytes, f32 `d`, 16 bytes of nibbles (byte `j` = weights `j`, `j + 16`).
//! - `Q4_1F32`: 24 bytes, f32 `d`, f32 `m`, 16 bytes of nibbles.
//! - `Q8_0F32`: 36 bytes, f32 `d`, 32 signed bytes.
//!
//! Why not convert them to today's f16-scale blocks: rounding an f32 scale to f16 changes
//! every weight of the block, so the model would no longer compute with the weights in the
//! file. They are today's block structs with [`F32`] as the scale type, so they run today's
//! kernels (every level, the multi-row ones too): the same exact integer sums against q8_0
//! activations and the same float accumulation order, and a file whose f32 scales happen to be
//! f16 values gives bit for bit the logits of the same weights in GGUF.

use super::fp32::F32;
use super::q4_0::BlockQ4_0;
use super::q4_1::BlockQ4_1;
use super::q8_0::BlockQ8_0;

pub type BlockQ4_0F32 = BlockQ4_0<F32>;
pub type BlockQ4_1F32 = BlockQ4_1<F32>;
pub type BlockQ8_0F32 = BlockQ8_0<F32>;
const _: () = assert!(std::mem::size_of::<BlockQ4_0F32>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ4_1F32>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0F32>() == 36);

#[cfg(test)]
mod tests {
    use crate::quant::tests_util::Rng;
    use crate::quant::{
        dequantize_row, prepare_activation, quantize_row, vec_dot, vec_dot_rows, vec_dot_scalar,
        GgmlType, RowAux,
    };

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
            assert_eq!(
                vec_dot(today, &a, &p).to_bits(),
                vec_dot(legacy, &b, &p).to_bits(),
                "{legacy}"
            );
            let (mut da, mut db) = (vec![0f32; n], vec![0f32; n]);
            dequantize_row(today, &a, &mut da);
            dequantize_row(legacy, &b, &mut db);
            assert_eq!(da, db);
        }
    }

    /// The multi-row kernels serve the f32-scale blocks too, with the single-row bits, and
    /// side data made for today's type fits its f32-scale twin (the activations are the same).
    #[test]
    fn multi_row_kernels_serve_f32_scales() {
        let mut rng = Rng::new(8);
        let (rows, n) = (5, 32 * 19);
        for (today, legacy) in [
            (GgmlType::Q4_0, GgmlType::Q4_0F32),
            (GgmlType::Q8_0, GgmlType::Q8_0F32),
            (GgmlType::Q4_1, GgmlType::Q4_1F32),
        ] {
            let wf: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.1).collect();
            let mut w = vec![0u8; legacy.row_bytes(rows * n).unwrap()];
            quantize_row(legacy, &wf, &mut w);
            // Scales that are no f16 value, as in real pre-GGUF files.
            for b in w.chunks_exact_mut(legacy.type_size()) {
                let d = f32::from_le_bytes(b[..4].try_into().unwrap()) * (1.0 + 3.0 * f32::EPSILON);
                b[..4].copy_from_slice(&d.to_le_bytes());
            }
            let ps: Vec<_> = (0..4)
                .map(|_| {
                    prepare_activation(legacy, &(0..n).map(|_| rng.normal()).collect::<Vec<_>>())
                })
                .collect();
            let aux: Vec<RowAux> = ps.iter().map(|p| RowAux::new(today, p)).collect();
            assert!(
                ps.iter().zip(&aux).all(|(p, a)| a.fits(legacy, p)),
                "{legacy}"
            );
            let mut out = vec![[0f32; 4]; rows];
            vec_dot_rows(
                legacy,
                &w,
                std::array::from_fn(|k| &ps[k]),
                std::array::from_fn(|k| &aux[k]),
                &mut out,
            );
            let rb = legacy.row_bytes(n).unwrap();
            for (r, o) in out.iter().enumerate() {
                for k in 0..4 {
                    let want = vec_dot_scalar(legacy, &w[r * rb..(r + 1) * rb], &ps[k]);
                    assert_eq!(o[k].to_bits(), want.to_bits(), "{legacy} row {r} token {k}");
                }
            }
        }
    }
}
