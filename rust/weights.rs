//! Weights as the engine uses them: a typed matrix over bytes that live in the file's map
//! (the normal case) or in memory (legacy blocks repacked, parts joined).

use crate::ops::WeightView;
use crate::quant::{dequantize_row, x16, GgmlType};
use memmap2::{Mmap, MmapMut};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Where a weight's bytes live: in the file's map (the normal case) or converted in memory.
pub enum Storage {
    Mapped(Arc<Mmap>, Range<usize>),
    Owned(Vec<u8>),
    /// Q4_0 or Q8_0 rows repacked 16 at a time at load for the AVX-512 kernels (`quant::x16`),
    /// in anonymous memory that asks for 2 MiB pages.
    Repacked(MmapMut),
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
            Storage::Repacked(m) => m,
        }
    }
    fn repacked(&self) -> bool {
        matches!(self.data, Storage::Repacked(_))
    }
}

impl Weight {
    /// One row as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.ty.row_bytes(self.cols).unwrap();
        if self.repacked() {
            let chunk = &self.bytes()[r / x16::ROWS * x16::ROWS * rb..][..x16::ROWS * rb];
            let qs = x16::quant_bytes(self.ty).unwrap();
            let mut row = vec![0u8; rb];
            x16::row(chunk, rb / (2 + qs), qs, r % x16::ROWS, &mut row);
            return dequantize_row(self.ty, &row, out);
        }
        dequantize_row(self.ty, &self.bytes()[r * rb..(r + 1) * rb], out);
    }

    /// The whole tensor as f32 (norm vectors).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_mut(self.cols).enumerate() {
            self.row_f32(r, row);
        }
        out
    }

    /// Repacks the weight into the layout its kernels read fastest, where there is one for
    /// its type on this CPU (`x16::wanted`), and lets go of the file pages it copied (the
    /// page cache keeps them; they stop counting in this process's resident memory).
    pub fn repack_for_kernels(&mut self) {
        if self.repacked() || !x16::wanted(self.ty, self.rows) {
            return;
        }
        let rb = self.ty.row_bytes(self.cols).unwrap();
        let (chunk, qs) = (x16::ROWS * rb, x16::quant_bytes(self.ty).unwrap());
        let src = self.bytes();
        // No memory for the copy: the weight stays as it is, in the file's layout.
        let Ok(mut dst) = MmapMut::map_anon(src.len()) else {
            return;
        };
        #[cfg(target_os = "linux")]
        let _ = dst.advise(memmap2::Advice::HugePage);
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| x16::repack(s, rb / (2 + qs), qs, d));
        if let Storage::Mapped(map, range) = &self.data {
            drop_pages(map, range.clone());
        }
        self.data = Storage::Repacked(dst);
    }
}

/// Unmaps the whole pages of `range` (the kernel maps them again from the page cache if they
/// are read later: the map is private and read-only, so its contents cannot change).
fn drop_pages(map: &Mmap, range: Range<usize>) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let (start, end) = (range.start.div_ceil(PAGE) * PAGE, range.end / PAGE * PAGE);
        if start < end {
            // SAFETY: no reference into the map outlives a call to `bytes()`, and what a later
            // read maps again has the same bytes (a read-only private file map).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, range);
}
