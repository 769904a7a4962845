//! Weights as the engine uses them: a typed matrix over bytes that live in the file's map
//! (the normal case) or in memory (legacy blocks repacked, parts joined).

use crate::ops::WeightView;
use crate::quant::{dequantize_row, GgmlType};
use memmap2::Mmap;
use std::ops::Range;
use std::sync::Arc;

/// Where a weight's bytes live: in the file's map (the normal case) or converted in memory.
pub enum Storage {
    Mapped(Arc<Mmap>, Range<usize>),
    Owned(Vec<u8>),
}

/// A `rows x cols` matrix of `ty` blocks, one row per output (ggml order: `ne = [cols, rows]`).
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Storage,
}

impl WeightView for Weight {
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
        match &self.data {
            Storage::Mapped(m, r) => &m[r.clone()],
            Storage::Owned(v) => v,
        }
    }
}

impl Weight {
    /// One row as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.ty.row_bytes(self.cols).unwrap();
        dequantize_row(self.ty, &self.bytes()[r * rb..(r + 1) * rb], out);
    }

    /// The whole tensor as f32 (norm vectors).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        let rb = self.ty.row_bytes(self.cols).unwrap();
        for (r, chunk) in out.chunks_mut(self.cols).enumerate() {
            dequantize_row(self.ty, &self.bytes()[r * rb..(r + 1) * rb], chunk);
        }
        out
    }
}
