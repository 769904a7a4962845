//! The few numeric operations of a LLaMA forward pass, on f32 rows.
//!
//! Matmul is the hot one: parallel over output rows with rayon, each output element reduced
//! by exactly one thread in a fixed order, so results never depend on the thread count.

use crate::quant::{prepare_activation, vec_dot, GgmlType};
use rayon::prelude::*;

/// `x / sqrt(mean(x^2) + eps) * weight`, in place.
pub fn rmsnorm(x: &mut [f32], weight: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

/// Rotary embedding on adjacent pairs `(2i, 2i+1)` of each head (Meta's layout), for the first
/// `n_rot` dimensions of every head.
pub fn rope(x: &mut [f32], head_dim: usize, n_rot: usize, pos: usize, freq_base: f32) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in (0..n_rot).step_by(2) {
            // Angles in f64: positions times small frequencies lose digits in f32.
            let freq = (freq_base as f64).powf(-(i as f64) / n_rot as f64);
            let (sin, cos) = (pos as f64 * freq).sin_cos();
            let (sin, cos) = (sin as f32, cos as f32);
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
    fn bytes(&self) -> &[u8];
}

/// `out[t][o] = dot(W[o, :], x[t])` for each of the `n` input rows in `x` (n x cols).
/// Runs on the current rayon pool (call inside `pool.install`).
pub fn matmul(w: &dyn WeightView, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(x.len(), n * cols, "matmul input shape");
    assert_eq!(out.len(), n * rows, "matmul output shape");
    let row_bytes = w.ty().row_bytes(cols).expect("weight rows are whole blocks");
    let data = w.bytes();
    // Each activation row is prepared (quantized to q8_0 for quantized weights) once.
    let prepared: Vec<_> = if n > 1 {
        x.par_chunks(cols).map(|r| prepare_activation(w.ty(), r)).collect()
    } else {
        vec![prepare_activation(w.ty(), x)]
    };
    // Work in output-row chunks so a weight row stays in cache while it meets every token.
    const CHUNK: usize = 16;
    if n == 1 {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (j, o) in chunk.iter_mut().enumerate() {
                let r = c * CHUNK + j;
                *o = vec_dot(w.ty(), &data[r * row_bytes..(r + 1) * row_bytes], &prepared[0]);
            }
        });
        return;
    }
    let mut transposed = vec![0.0f32; rows * n];
    transposed.par_chunks_mut(CHUNK * n).enumerate().for_each(|(c, chunk)| {
        for (j, per_token) in chunk.chunks_mut(n).enumerate() {
            let r = c * CHUNK + j;
            let wrow = &data[r * row_bytes..(r + 1) * row_bytes];
            for (t, o) in per_token.iter_mut().enumerate() {
                *o = vec_dot(w.ty(), wrow, &prepared[t]);
            }
        }
    });
    for (r, per_token) in transposed.chunks(n).enumerate() {
        for (t, v) in per_token.iter().enumerate() {
            out[t * rows + r] = *v;
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
        fn bytes(&self) -> &[u8] {
            &self.data
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_same_with_one_and_two_threads() {
        let mut s = 7u64;
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let (rows, cols, n) = (37, 64, 5);
            let vals: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let rb = ty.row_bytes(cols).unwrap();
            let mut data = vec![0u8; rb * rows];
            for r in 0..rows {
                quantize_row(ty, &vals[r * cols..(r + 1) * cols], &mut data[r * rb..(r + 1) * rb]);
            }
            let w = Owned { ty, rows, cols, data };
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut s)).collect();
            let run = |threads: usize, n: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut out = vec![0.0; n * rows];
                pool.install(|| matmul(&w, &x[..n * cols], n, &mut out));
                out
            };
            let a = run(1, n);
            assert_eq!(a, run(2, n), "{ty:?}");
            // The batched path equals the one-row path, row by row.
            let single = run(1, 1);
            assert_eq!(&a[..rows], &single[..], "{ty:?}");
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
}
