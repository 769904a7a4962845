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
    /// Q4_0 or Q8_0 rows repacked 16 at a time at load for the AVX-512 kernels (`quant::x16`):
    /// a range of the model's one [`Arena`].
    Repacked(Arc<Arena>, Range<usize>),
}

/// Anonymous memory holding every repacked matrix of a model, one map aligned to 2 MiB so the
/// kernel can back all of it with 2 MiB pages: a separate map per matrix got about half of
/// its bytes in them, and first touching 4 KiB pages is most of the repack's time.
pub struct Arena {
    map: MmapMut,
    /// Where the 2 MiB-aligned part of `map` starts.
    base: usize,
}

const HUGE_PAGE: usize = 2 << 20;
/// Each matrix starts on its own 4 KiB page.
const PAGE: usize = 4096;

impl Arena {
    /// `len` bytes, or `None` when there is no memory for them.
    fn new(len: usize) -> Option<Arena> {
        let map = MmapMut::map_anon(len + HUGE_PAGE).ok()?;
        let base = map.as_ptr().align_offset(HUGE_PAGE);
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, base, len);
        Some(Arena { map, base })
    }

    fn get(&self, r: &Range<usize>) -> &[u8] {
        &self.map[self.base + r.start..self.base + r.end]
    }

    fn get_mut(&mut self, r: &Range<usize>) -> &mut [u8] {
        &mut self.map[self.base + r.start..self.base + r.end]
    }
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
            Storage::Repacked(a, r) => a.get(r),
        }
    }
    fn repacked(&self) -> bool {
        matches!(self.data, Storage::Repacked(..))
    }
}

impl Weight {
    /// One row as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.ty.row_bytes(self.cols).unwrap();
        if self.repacked() {
            let chunk = &self.bytes()[r / x16::ROWS * x16::ROWS * rb..][..x16::ROWS * rb];
            let l = x16::layout(self.ty).unwrap();
            let mut row = vec![0u8; rb];
            x16::row(chunk, rb / l.block(), l, r % x16::ROWS, &mut row);
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
}

/// Repacks every weight that has a faster layout for its kernels on this CPU (`x16::wanted`)
/// into one [`Arena`], and lets go of the file pages each one copied as soon as it is done
/// (the page cache keeps them; they stop counting in this process's resident memory), so the
/// process never holds a matrix twice. With no memory for the arena nothing changes.
pub fn repack_for_kernels<'a>(weights: impl IntoIterator<Item = &'a mut Weight>) {
    let mut todo: Vec<(&mut Weight, Range<usize>)> = Vec::new();
    let mut len = 0;
    for w in weights {
        if w.repacked() || !x16::wanted(w.ty, w.rows) {
            continue;
        }
        let n = w.bytes().len();
        todo.push((w, len..len + n));
        len = (len + n).next_multiple_of(PAGE);
    }
    if todo.is_empty() {
        return;
    }
    let Some(mut arena) = Arena::new(len) else {
        return;
    };
    for (w, range) in &todo {
        let rb = w.ty.row_bytes(w.cols).unwrap();
        let (chunk, l) = (x16::ROWS * rb, x16::layout(w.ty).unwrap());
        arena
            .get_mut(range)
            .par_chunks_mut(chunk)
            .zip(w.bytes().par_chunks(chunk))
            .for_each(|(d, s)| x16::repack(s, rb / l.block(), l, d));
        if let Storage::Mapped(map, range) = &w.data {
            drop_pages(map, range.clone());
        }
    }
    let arena = Arc::new(arena);
    for (w, range) in todo {
        w.data = Storage::Repacked(arena.clone(), range);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(ty: GgmlType, rows: usize, cols: usize, seed: u8) -> Weight {
        let n = ty.row_bytes(cols).unwrap() * rows;
        let mut bytes: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        // Finite f16 scales at the start of each block (2 + 16 or 2 + 32 bytes).
        let block = x16::layout(ty).unwrap().block();
        for b in bytes.chunks_exact_mut(block) {
            b[..2].copy_from_slice(&0x2c00u16.to_le_bytes());
        }
        Weight {
            name: format!("w{seed}"),
            ty,
            rows,
            cols,
            data: Storage::Owned(bytes),
        }
    }

    #[test]
    fn repacked_weights_share_one_aligned_arena_and_keep_their_rows() {
        if !x16::wanted(GgmlType::Q4_0, 16) {
            return eprintln!("no repack on this CPU (or LLAMA_RS_REPACK=0): skipped");
        }
        let mut ws = [
            weight(GgmlType::Q4_0, 32, 64, 1),
            weight(GgmlType::Q8_0, 16, 96, 2),
            weight(GgmlType::Q4_0, 10, 64, 3), // not whole chunks: stays as it is
            weight(GgmlType::Q8_0, 48, 32, 4),
        ];
        let rows_before: Vec<Vec<Vec<f32>>> = ws
            .iter()
            .map(|w| {
                (0..w.rows)
                    .map(|r| {
                        let mut row = vec![0.0; w.cols];
                        w.row_f32(r, &mut row);
                        row
                    })
                    .collect()
            })
            .collect();
        repack_for_kernels(ws.iter_mut());
        let repacked: Vec<bool> = ws.iter().map(|w| w.repacked()).collect();
        assert_eq!(repacked, [true, true, false, true]);
        let mut arena = None;
        for w in ws.iter().filter(|w| w.repacked()) {
            let Storage::Repacked(a, r) = &w.data else {
                unreachable!()
            };
            assert_eq!(a.map.as_ptr().wrapping_add(a.base) as usize % HUGE_PAGE, 0);
            assert_eq!(r.start % PAGE, 0, "{} starts on a page", w.name);
            let p = Arc::as_ptr(a);
            assert_eq!(*arena.get_or_insert(p), p, "one arena for all");
        }
        for (w, before) in ws.iter().zip(&rows_before) {
            for (r, want) in before.iter().enumerate() {
                let mut row = vec![0.0; w.cols];
                w.row_f32(r, &mut row);
                assert_eq!(&row, want, "{} row {r}", w.name);
            }
        }
    }
}
