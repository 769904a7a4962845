//! Weights as the engine uses them: a typed matrix over bytes that live in the file's map
//! (the normal case) or in memory (legacy blocks repacked, parts joined), and, once a repack
//! for this CPU's kernels has published it, over its copy in the model's [`Arena`].

use crate::ops::WeightView;
use crate::quant::{dequantize_row, x16, GgmlType};
use memmap2::{Mmap, MmapMut};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Where a weight's bytes live in the file's layout: in the file's map (the normal case) or
/// converted in memory.
pub enum Storage {
    Mapped(Arc<Mmap>, Range<usize>),
    Owned(Vec<u8>),
}

/// Anonymous memory holding every repacked matrix of a model, one map aligned to 2 MiB so the
/// kernel can back all of it with 2 MiB pages: a separate map per matrix got about half of
/// its bytes in them, and first touching 4 KiB pages is most of the repack's time.
pub struct Arena {
    _map: MmapMut,
    /// The 2 MiB-aligned start of the map's usable part (taken from the map's `&mut`, so
    /// writes through it are the map's own).
    base: *mut u8,
    len: usize,
}

// SAFETY: ranges are written by one thread before they are published (`RepackPlan::run`) and
// only read after, through the `OnceLock` that publishes them (release / acquire).
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

const HUGE_PAGE: usize = 2 << 20;
/// Each matrix starts on its own 4 KiB page.
const PAGE: usize = 4096;

impl Arena {
    /// `len` bytes, or `None` when there is no memory for them.
    fn new(len: usize) -> Option<Arena> {
        let mut map = MmapMut::map_anon(len + HUGE_PAGE).ok()?;
        let offset = map.as_ptr().align_offset(HUGE_PAGE);
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, len);
        // SAFETY: `offset + len` is within the map (it has `HUGE_PAGE` bytes to spare).
        let base = unsafe { map.as_mut_ptr().add(offset) };
        Some(Arena {
            _map: map,
            base,
            len,
        })
    }

    /// The bytes of a published range.
    fn get(&self, r: &Range<usize>) -> &[u8] {
        assert!(r.start <= r.end && r.end <= self.len);
        // SAFETY: in bounds; a published range is never written again.
        unsafe { std::slice::from_raw_parts(self.base.add(r.start), r.len()) }
    }

    /// The bytes of a range to fill.
    ///
    /// # Safety
    /// No one else may read or write `r` until it is published, and it must not be published
    /// yet: each planned range is filled once, by the one thread running its step.
    #[allow(clippy::mut_from_ref)]
    unsafe fn fill(&self, r: &Range<usize>) -> &mut [u8] {
        assert!(r.start <= r.end && r.end <= self.len);
        std::slice::from_raw_parts_mut(self.base.add(r.start), r.len())
    }
}

/// A matrix's repacked copy: rows 16 at a time (`quant::x16`) in a range of the arena.
struct Packed {
    arena: Arc<Arena>,
    range: Range<usize>,
}

/// A `rows x cols` matrix of `ty` blocks, one row per output (ggml order: `ne = [cols, rows]`).
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// The file's layout: what the kernels read until the matrix is repacked.
    pub data: Storage,
    /// Set once, when the repacked copy is complete; from then on the kernels read it.
    packed: OnceLock<Packed>,
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
    fn bytes(&self) -> (&[u8], bool) {
        match self.packed.get() {
            Some(p) => (p.arena.get(&p.range), true),
            None => (self.file_bytes(), false),
        }
    }
}

impl Weight {
    pub fn new(
        name: impl Into<String>,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: Storage,
    ) -> Weight {
        Weight {
            name: name.into(),
            ty,
            rows,
            cols,
            data,
            packed: OnceLock::new(),
        }
    }

    /// The bytes in the file's layout, row after row.
    fn file_bytes(&self) -> &[u8] {
        match &self.data {
            Storage::Mapped(m, r) => &m[r.clone()],
            Storage::Owned(v) => v,
        }
    }

    /// Whether this weight is to be repacked and its file layout is this process's own memory
    /// (joined legacy parts), which a repack can free only before the model is shared.
    pub fn owns_bytes_to_repack(&self) -> bool {
        matches!(self.data, Storage::Owned(_))
            && !self.repacked()
            && x16::wanted(self.ty, self.rows)
    }

    /// Whether the kernels read a repacked copy now.
    pub fn repacked(&self) -> bool {
        self.packed.get().is_some()
    }

    /// One row as f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.ty.row_bytes(self.cols).unwrap();
        let (bytes, repacked) = self.bytes();
        if repacked {
            let chunk = &bytes[r / x16::ROWS * x16::ROWS * rb..][..x16::ROWS * rb];
            let l = x16::layout(self.ty).unwrap();
            let mut row = vec![0u8; rb];
            x16::row(chunk, rb / l.block(), l, r % x16::ROWS, &mut row);
            return dequantize_row(self.ty, &row, out);
        }
        dequantize_row(self.ty, &bytes[r * rb..(r + 1) * rb], out);
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

/// Where each weight that has a faster layout for its kernels on this CPU (`x16::wanted`)
/// goes in one [`Arena`]: made before any of them is copied, so that a process without
/// memory for the copy learns it at once and keeps the file's layout.
pub struct RepackPlan {
    arena: Arc<Arena>,
    /// (index of the weight in the list the plan was made from, its range in the arena)
    steps: Vec<(usize, Range<usize>)>,
}

impl RepackPlan {
    /// The plan for `weights`, or `None` when nothing is to be repacked or there is no memory
    /// for the arena.
    pub fn new<'a>(weights: impl IntoIterator<Item = &'a Weight>) -> Option<RepackPlan> {
        let mut steps = Vec::new();
        let mut len = 0;
        for (i, w) in weights.into_iter().enumerate() {
            if w.repacked() || !x16::wanted(w.ty, w.rows) {
                continue;
            }
            let n = w.file_bytes().len();
            steps.push((i, len..len + n));
            len = (len + n).next_multiple_of(PAGE);
        }
        if steps.is_empty() {
            return None;
        }
        let arena = Arc::new(Arena::new(len)?);
        Some(RepackPlan { arena, steps })
    }

    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// Repacks the weight of step `step`, publishes the copy, then lets go of the file pages it
    /// was made from (the page cache keeps them; they stop counting in this process's resident
    /// memory), so the process never holds the matrix twice. `weights` is the list the plan was
    /// made from. A kernel that took the file's layout just before keeps reading it: the pages
    /// come back from the page cache. Without `cancel` the rows are copied on the process's
    /// shared threads (`threads::install_shared`); with it, on this thread, and the copy stops (unpublished) as soon as it is set.
    pub fn run(&self, weights: &[&Weight], step: usize, cancel: Option<&AtomicBool>) {
        let (i, range) = &self.steps[step];
        let w = weights[*i];
        if w.repacked() {
            return;
        }
        let rb = w.ty.row_bytes(w.cols).unwrap();
        let (chunk, l) = (x16::ROWS * rb, x16::layout(w.ty).unwrap());
        let (src, nb) = (w.file_bytes(), rb / l.block());
        // SAFETY: each step's range is its own, this is the one run of the step (the weight is
        // not published yet, and a plan's steps are run by one caller each).
        let dst = unsafe { self.arena.fill(range) };
        match cancel {
            None => crate::threads::install_shared(|| {
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| x16::repack(s, nb, l, d))
            }),
            Some(cancel) => {
                for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    x16::repack(s, nb, l, d);
                }
            }
        }
        let packed = Packed {
            arena: self.arena.clone(),
            range: range.clone(),
        };
        if w.packed.set(packed).is_ok() {
            if let Storage::Mapped(map, range) = &w.data {
                drop_pages(map, range.clone());
            }
        }
    }
}

/// Repacks every weight that has a faster layout for its kernels on this CPU, now, in
/// parallel, and frees the file-layout bytes of those that were this process's own memory
/// (see [`RepackPlan::run`]). With no memory for the arena nothing changes.
pub fn repack_for_kernels<'a>(weights: impl IntoIterator<Item = &'a mut Weight>) {
    let mut weights: Vec<&mut Weight> = weights.into_iter().collect();
    let Some(plan) = RepackPlan::new(weights.iter().map(|w| &**w)) else {
        return;
    };
    {
        let shared: Vec<&Weight> = weights.iter().map(|w| &**w).collect();
        for step in 0..plan.steps() {
            plan.run(&shared, step, None);
        }
    }
    for w in weights.iter_mut().filter(|w| w.repacked()) {
        if let Storage::Owned(v) = &mut w.data {
            *v = Vec::new();
        }
    }
}

/// Whether a model's background repack is still running, for those who wait for it.
#[derive(Default)]
pub struct RepackProgress {
    /// The id of the process whose thread runs the repack, while it runs.
    running: Mutex<Option<u32>>,
    finished: Condvar,
    /// Set to stop the thread: it reads the file's map, which must not outlive its owner's
    /// use of the file (a file rewritten after the model is dropped would fault the reads).
    pub cancel: AtomicBool,
}

impl RepackProgress {
    fn state(&self) -> std::sync::MutexGuard<'_, Option<u32>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn start(&self) {
        *self.state() = Some(std::process::id());
    }

    /// Whether a repack thread of this process is at work. A child forked from the process
    /// has no such thread (fork copies only the calling thread): nothing runs for it.
    pub fn running(&self) -> bool {
        *self.state() == Some(std::process::id())
    }

    pub fn finish(&self) {
        *self.state() = None;
        self.finished.notify_all();
    }

    /// Stops the thread (within one 16-row chunk) and returns once it is no longer at work.
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.wait();
    }

    /// Returns once no repack thread of this process is at work.
    pub fn wait(&self) {
        let mut state = self.state();
        while *state == Some(std::process::id()) {
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
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
        Weight::new(format!("w{seed}"), ty, rows, cols, Storage::Owned(bytes))
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
            let Packed { arena: a, range: r } = w.packed.get().unwrap();
            assert_eq!(a.base as usize % HUGE_PAGE, 0);
            assert_eq!(r.start % PAGE, 0, "{} starts on a page", w.name);
            let p = Arc::as_ptr(a);
            assert_eq!(*arena.get_or_insert(p), p, "one arena for all");
            let Storage::Owned(v) = &w.data else {
                unreachable!()
            };
            assert!(
                v.is_empty(),
                "{}: the file layout's own bytes are freed",
                w.name
            );
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
