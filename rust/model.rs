//! LLaMA: the layers, the model, and the forward pass for a batch of positions (Meta
//! semantics, see DESIGN.md "Numerics"). Loading is in `load.rs`, the weight and config types
//! in `weights.rs` and `config.rs`, the KV cache and attention in `attention.rs`.
//!
//! Shapes below: `n` positions in the batch, `dim` the embedding, `kv_dim = n_head_kv *
//! head_dim`, `ff` the feed-forward width, `n_vocab` the vocab; a weight `[rows, cols]` has one
//! row per output (ggml order `ne = [cols, rows]`).

use crate::attention::attention_rows;
pub use crate::attention::{KvCache, KvType};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::ops::{matmul, matmul_with, rmsnorm, rope_with, silu, Prepared, Rope};
use crate::tokenizer::Tokenizer;
use crate::weights::{RepackPlan, RepackProgress, Weight};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

/// One transformer block.
pub struct Layer {
    pub attn_norm: Vec<f32>, // [dim]
    pub wq: Weight,          // [dim, dim]
    pub wk: Weight,          // [kv_dim, dim]
    pub wv: Weight,          // [kv_dim, dim]
    pub wo: Weight,          // [dim, dim]
    pub ffn_norm: Vec<f32>,  // [dim]
    pub w_gate: Weight,      // [ff, dim]
    pub w_up: Weight,        // [ff, dim]
    pub w_down: Weight,      // [dim, ff]
}

/// A layer's seven matrices in the forward pass's order, borrowed with `&` or `&mut` (one
/// list for both, so the order a [`RepackPlan`] refers to cannot drift between them).
macro_rules! layer_matrices {
    ($layer:expr, $($borrow:tt)+) => {{
        let l = $layer;
        [
            $($borrow)+ l.wq,
            $($borrow)+ l.wk,
            $($borrow)+ l.wv,
            $($borrow)+ l.wo,
            $($borrow)+ l.w_gate,
            $($borrow)+ l.w_up,
            $($borrow)+ l.w_down,
        ]
    }};
}

pub struct Model {
    pub path: PathBuf,
    pub config: Config,
    pub token_embd: Weight, // [n_vocab, dim]
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>, // [dim]
    /// [n_vocab, dim]; None: the output projection is tied to `token_embd`.
    pub output: Option<Weight>,
    /// The rotary angles: the config's base and scale, and `rope_freqs.weight` when present.
    pub rope: Rope,
    pub tokenizer: Tokenizer,
    pub metadata: Vec<(String, Value)>,
    /// The most common weight type ("Q4_0", ...), for display.
    pub file_type: String,
    /// Whether [`Model::repack_in_background`] is still at work.
    pub repacking: RepackProgress,
}

/// Activations of one batch, allocated once per call.
struct Scratch {
    x: Vec<f32>,    // [n, dim] the residual stream
    h: Vec<f32>,    // [n, dim] x normalized, input of the projections
    q: Vec<f32>,    // [n, dim] queries
    k: Vec<f32>,    // [n, kv_dim] keys of the new positions (copied into the cache)
    v: Vec<f32>,    // [n, kv_dim] values of the new positions (copied into the cache)
    att: Vec<f32>,  // [n, dim] attention output, heads side by side
    o: Vec<f32>,    // [n, dim] output of attn_output or ffn_down, added to x
    gate: Vec<f32>, // [n, ff] ffn_gate(h), then silu(gate) * up
    up: Vec<f32>,   // [n, ff] ffn_up(h)
}

/// One row of a batched forward pass: `token` at position `pos` of sequence `seq` (an index
/// into the caches given), and whether its logits are wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRow {
    pub seq: usize,
    pub token: u32,
    pub pos: usize,
    pub logits: bool,
}

/// The rows of one sequence in a batch: rows `first .. first + n` at positions `pos ..`.
struct Run {
    seq: usize,
    first: usize,
    n: usize,
    pos: usize,
}

/// Checks a batch and finds its runs: each sequence's rows must be consecutive in the batch,
/// at consecutive positions, inside its context and the cells its cache holds now (`limits`:
/// (n_ctx, cells) per sequence); tokens inside the vocab.
fn runs_of(rows: &[BatchRow], limits: &[(usize, usize)], n_vocab: usize) -> Result<Vec<Run>> {
    if rows.is_empty() {
        return Err(Error::Invalid("no tokens to evaluate".into()));
    }
    let mut runs: Vec<Run> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.token as usize >= n_vocab {
            return Err(Error::Invalid(format!(
                "token id {} is outside the vocab (0..{n_vocab})",
                r.token
            )));
        }
        let Some(&(ctx, cells)) = limits.get(r.seq) else {
            return Err(Error::Invalid(format!(
                "batch row {i}: sequence {} has no cache ({} given)",
                r.seq,
                limits.len()
            )));
        };
        if r.pos >= ctx {
            return Err(Error::Invalid(format!(
                "sequence {}: position {} is outside the context of {ctx} tokens",
                r.seq, r.pos
            )));
        }
        if r.pos >= cells {
            return Err(Error::Invalid(format!(
                "sequence {}: position {} is past the {cells} cells its KV cache holds (grow it first)",
                r.seq, r.pos
            )));
        }
        match runs.last_mut() {
            Some(run) if run.seq == r.seq && run.pos + run.n == r.pos => run.n += 1,
            _ => {
                if runs.iter().any(|run| run.seq == r.seq) {
                    return Err(Error::Invalid(format!(
                        "batch row {i}: the rows of sequence {} must be consecutive, at consecutive positions",
                        r.seq
                    )));
                }
                runs.push(Run {
                    seq: r.seq,
                    first: i,
                    n: 1,
                    pos: r.pos,
                });
            }
        }
    }
    Ok(runs)
}

impl Model {
    /// Evaluate `ids` at positions `n_past ..`, filling the cache. Returns logits for every
    /// position when `all_logits` ([n, n_vocab]), else for the last one only ([n_vocab]).
    /// Runs on the current rayon pool.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        ids: &[u32],
        n_past: usize,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        if n > 0 && n_past + n > cache.n_ctx {
            return Err(Error::Invalid(format!(
                "{} tokens after {} already evaluated exceed the context of {} tokens",
                n, n_past, cache.n_ctx
            )));
        }
        let rows: Vec<BatchRow> = ids
            .iter()
            .enumerate()
            .map(|(t, &token)| BatchRow {
                seq: 0,
                token,
                pos: n_past + t,
                logits: all_logits || t + 1 == n,
            })
            .collect();
        self.forward_batch(&mut [cache], &rows)
    }

    /// One forward pass over rows of several sequences (continuous batching): every matrix is
    /// read once for all rows; each row attends over its own sequence's cache (which must
    /// hold that sequence's positions before the batch), and its keys and values are stored
    /// there. Returns the logits of the rows that ask for them, in row order ([m, n_vocab]).
    /// A row's logits have the same bits whatever else shares the batch: every matmul element
    /// is the one-row kernel's, and attention is per sequence. Runs on the current rayon pool.
    pub fn forward_batch(
        &self,
        caches: &mut [&mut KvCache],
        rows: &[BatchRow],
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let limits: Vec<(usize, usize)> = caches.iter().map(|k| (k.n_ctx, k.cells())).collect();
        let runs = runs_of(rows, &limits, c.n_vocab)?;
        let n = rows.len();
        let (dim, hd, kv_dim, ff) = (c.dim, c.head_dim(), c.kv_dim(), c.ffn_dim);
        let mut s = Scratch {
            x: vec![0.0; n * dim],
            h: vec![0.0; n * dim],
            q: vec![0.0; n * dim],
            k: vec![0.0; n * kv_dim],
            v: vec![0.0; n * kv_dim],
            att: vec![0.0; n * dim],
            o: vec![0.0; n * dim],
            gate: vec![0.0; n * ff],
            up: vec![0.0; n * ff],
        };
        // x = token_embd[ids]
        for (t, r) in rows.iter().enumerate() {
            self.token_embd
                .row_f32(r.token as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        // [n][n_rot / 2] (sin, cos) per row, shared by q and k of every head and layer.
        let rope_tables: Vec<Vec<(f32, f32)>> =
            rows.iter().map(|r| self.rope.table(r.pos)).collect();
        // (cache index, position) of each row, for attention.
        let places: Vec<(usize, usize)> = rows.iter().map(|r| (r.seq, r.pos)).collect();
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention: h = rmsnorm(x) * attn_norm; q, k, v = projections of h.
            s.h.copy_from_slice(&s.x);
            for row in s.h.chunks_mut(dim) {
                rmsnorm(row, &layer.attn_norm, c.rms_eps);
            }
            // One preparation (q8_0 rows for quantized weights) serves q, k and v.
            let p = Prepared::new(layer.wq.ty, &s.h, dim);
            matmul_with(&layer.wq, &p, &s.h, &mut s.q);
            matmul_with(&layer.wk, &p, &s.h, &mut s.k);
            matmul_with(&layer.wv, &p, &s.h, &mut s.v);
            for (t, table) in rope_tables.iter().enumerate() {
                rope_with(&mut s.q[t * dim..(t + 1) * dim], hd, table);
                rope_with(&mut s.k[t * kv_dim..(t + 1) * kv_dim], hd, table);
            }
            // Each sequence's new keys and values into its cache, then causal attention of
            // each row over its own sequence (positions 0 ..= its own).
            for run in &runs {
                let kv = run.first * kv_dim..(run.first + run.n) * kv_dim;
                caches[run.seq].write(l, run.pos, &s.k[kv.clone()], &s.v[kv]);
            }
            let views: Vec<&KvCache> = caches.iter().map(|k| &**k).collect();
            attention_rows(c, &views, l, &s.q, &places, &mut s.att);
            // x += attn_output(att)
            matmul(&layer.wo, &s.att, n, &mut s.o);
            for (x, o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
            // Feed-forward: h = rmsnorm(x) * ffn_norm; x += ffn_down(silu(ffn_gate(h)) * ffn_up(h)).
            s.h.copy_from_slice(&s.x);
            for row in s.h.chunks_mut(dim) {
                rmsnorm(row, &layer.ffn_norm, c.rms_eps);
            }
            let p = Prepared::new(layer.w_gate.ty, &s.h, dim);
            matmul_with(&layer.w_gate, &p, &s.h, &mut s.gate);
            matmul_with(&layer.w_up, &p, &s.h, &mut s.up);
            for (g, u) in s.gate.iter_mut().zip(&s.up) {
                *g = silu(*g) * u;
            }
            matmul(&layer.w_down, &s.gate, n, &mut s.o);
            for (x, o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
        }
        // logits = output(rmsnorm(x) * output_norm), only for the rows whose logits are wanted
        // (the output projection is the largest matmul).
        let wanted: Vec<usize> = (0..n).filter(|&t| rows[t].logits).collect();
        let mut h: Vec<f32> = Vec::with_capacity(wanted.len() * dim); // [m, dim]
        for &t in &wanted {
            h.extend_from_slice(&s.x[t * dim..(t + 1) * dim]);
        }
        for row in h.chunks_mut(dim) {
            rmsnorm(row, &self.output_norm, c.rms_eps);
        }
        let m = wanted.len();
        let mut logits = vec![0.0; m * c.n_vocab]; // [m, n_vocab]
        if m > 0 {
            matmul(self.output_weight(), &h, m, &mut logits);
        }
        Ok(logits)
    }

    /// Every matrix the forward pass reads, in one fixed order (the order a
    /// [`RepackPlan`] of the model refers to).
    pub(crate) fn matrices(&self) -> impl Iterator<Item = &Weight> {
        let layers = self.layers.iter().flat_map(|l| layer_matrices!(l, &));
        [&self.token_embd]
            .into_iter()
            .chain(&self.output)
            .chain(layers)
    }

    /// The same matrices, to change.
    fn matrices_mut(&mut self) -> impl Iterator<Item = &mut Weight> {
        let layers = self
            .layers
            .iter_mut()
            .flat_map(|l| layer_matrices!(l, &mut));
        [&mut self.token_embd]
            .into_iter()
            .chain(&mut self.output)
            .chain(layers)
    }

    /// Every matrix in the layout its kernels read fastest on this CPU, now (see
    /// `weights::repack_for_kernels`).
    pub fn repack_for_kernels(&mut self) {
        crate::weights::repack_for_kernels(self.matrices_mut());
    }

    /// The same, on a thread of its own, matrix by matrix, while the model is already in use:
    /// each matmul reads a matrix in the layout it finds at its start, and every layout gives
    /// the same bits. The thread stops when the model is dropped, or at once on
    /// [`Model::stop_repack`], which whoever lets go of the model last should call (the thread
    /// may hold the model for a moment after that). Returns the thread, if one was started
    /// (none when nothing is to be repacked, or no memory or thread was had).
    pub fn repack_in_background(model: &Arc<Model>) -> Option<std::thread::JoinHandle<()>> {
        let plan = RepackPlan::new(model.matrices())?;
        model.repacking.start();
        // Marks the repack finished however the thread ends (done, model dropped, panic).
        struct Finish(Weak<Model>);
        impl Drop for Finish {
            fn drop(&mut self) {
                if let Some(m) = self.0.upgrade() {
                    m.repacking.finish();
                }
            }
        }
        let finish = Finish(Arc::downgrade(model));
        let spawned = std::thread::Builder::new()
            .name("llama-rs-repack".into())
            .spawn(move || {
                for step in 0..plan.steps() {
                    let Some(m) = finish.0.upgrade() else {
                        return;
                    };
                    if m.repacking
                        .cancel
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        return;
                    }
                    let ws: Vec<&Weight> = m.matrices().collect();
                    plan.run(&ws, step, Some(&m.repacking.cancel));
                }
            });
        // Without a thread the file's layout stays (the closure and its `Finish` are gone).
        spawned.ok()
    }

    /// Stops a background repack and returns once it no longer reads the file: matrices not
    /// repacked by then keep the file's layout.
    pub fn stop_repack(&self) {
        self.repacking.stop();
    }

    /// Returns once a background repack (see [`Model::repack_in_background`]) is over.
    pub fn wait_repacked(&self) {
        self.repacking.wait();
    }

    /// How many matrices are repacked (so far, while a background repack runs).
    pub fn repacked_matrices(&self) -> usize {
        self.matrices().filter(|w| w.repacked()).count()
    }

    /// The output projection: `output`, or `token_embd` when they are tied.
    fn output_weight(&self) -> &Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::{quantize_row, GgmlType};
    use crate::tokenizer::Vocab;
    use crate::weights::Storage;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn weight(name: &str, ty: GgmlType, rows: usize, cols: usize, s: &mut u64) -> Weight {
        let vals: Vec<f32> = (0..rows * cols).map(|_| lcg(s) * 0.3).collect();
        let mut data = vec![0u8; ty.row_bytes(rows * cols).unwrap()];
        quantize_row(ty, &vals, &mut data);
        Weight::new(name, ty, rows, cols, Storage::Owned(data))
    }

    /// A random 2-layer model held in memory (GQA 2, Q4_0 matrices: the AMX path where the
    /// CPU has it), for engine tests.
    pub(crate) fn tiny_model(ty: GgmlType) -> Model {
        let config = Config {
            dim: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            ffn_dim: 96,
            n_vocab: 48,
            train_ctx: 128,
            n_rot: 16,
            rms_eps: 1e-5,
            freq_base: 10000.0,
            freq_scale: 1.0,
        };
        let mut s = 42u64;
        let (dim, kv, ff) = (config.dim, config.kv_dim(), config.ffn_dim);
        let layers = (0..config.n_layer)
            .map(|_| Layer {
                attn_norm: (0..dim).map(|_| 1.0 + 0.1 * lcg(&mut s)).collect(),
                wq: weight("q", ty, dim, dim, &mut s),
                wk: weight("k", ty, kv, dim, &mut s),
                wv: weight("v", ty, kv, dim, &mut s),
                wo: weight("o", ty, dim, dim, &mut s),
                ffn_norm: (0..dim).map(|_| 1.0 + 0.1 * lcg(&mut s)).collect(),
                w_gate: weight("gate", ty, ff, dim, &mut s),
                w_up: weight("up", ty, ff, dim, &mut s),
                w_down: weight("down", ty, dim, ff, &mut s),
            })
            .collect();
        let pieces = (0..config.n_vocab).map(|i| format!("t{i}")).collect();
        Model {
            path: "tiny".into(),
            token_embd: weight("token_embd", GgmlType::F16, config.n_vocab, dim, &mut s),
            layers,
            output_norm: vec![1.0; dim],
            output: Some(weight("output", ty, config.n_vocab, dim, &mut s)),
            rope: Rope::plain(config.n_rot, config.freq_base),
            tokenizer: Tokenizer::new(Vocab::new(pieces)).unwrap(),
            metadata: Vec::new(),
            file_type: ty.name().into(),
            config,
            repacking: Default::default(),
        }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// A prompt's logits at every position (two tile groups and one row more: the AMX path
    /// where the CPU has it) and three decode steps after it, as bits.
    fn prompt_and_decode_bits(m: &Model) -> Vec<u32> {
        let mut cache = KvCache::new(&m.config, 64, KvType::F16);
        let ids: Vec<u32> = (0..33).map(|i| (i * 7 + 3) % 48).collect();
        let mut out = bits(&m.forward(&mut cache, &ids, 0, true).unwrap());
        for (i, t) in [4, 12, 33].into_iter().enumerate() {
            out.extend(bits(
                &m.forward(&mut cache, &[t], ids.len() + i, false).unwrap(),
            ));
        }
        out
    }

    /// What a forward pass meets while the background repack runs: some matrices repacked,
    /// the rest in the file's layout. Every such state gives the bits of the file's layout.
    #[test]
    fn every_stage_of_a_repack_gives_the_bits_of_the_file_layout() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            let m = tiny_model(ty);
            let want = prompt_and_decode_bits(&m);
            let Some(plan) = RepackPlan::new(m.matrices()) else {
                return eprintln!("no repack on this CPU (or LLAMA_RS_REPACK=0): skipped");
            };
            // Every matrix but the F16 token_embd.
            assert_eq!(plan.steps(), 7 * m.config.n_layer + 1);
            let ws: Vec<&Weight> = m.matrices().collect();
            for step in 0..plan.steps() {
                let never = std::sync::atomic::AtomicBool::new(false);
                plan.run(&ws, step, [None, Some(&never)][step % 2]);
                assert_eq!(m.repacked_matrices(), step + 1);
                assert_eq!(prompt_and_decode_bits(&m), want, "{ty:?} after step {step}");
            }
        }
    }

    #[test]
    fn a_background_repack_runs_under_forward_passes_and_ends_repacked() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            let want = prompt_and_decode_bits(&tiny_model(ty));
            let m = Arc::new(tiny_model(ty));
            let Some(thread) = Model::repack_in_background(&m) else {
                return eprintln!("no repack on this CPU (or LLAMA_RS_REPACK=0): skipped");
            };
            let mut passes = 0;
            while passes == 0 || !thread.is_finished() {
                assert_eq!(prompt_and_decode_bits(&m), want, "{ty:?} pass {passes}");
                passes += 1;
            }
            thread.join().unwrap();
            assert!(
                !m.repacking.running(),
                "the end of the thread ends the wait"
            );
            m.wait_repacked();
            assert_eq!(m.repacked_matrices(), 7 * m.config.n_layer + 1);
            assert_eq!(prompt_and_decode_bits(&m), want, "{ty:?} repacked");
            // A second call finds nothing left to do.
            assert!(Model::repack_in_background(&m).is_none());
            // Stopped at once: the wait is over, the thread ends, and the matrices not reached
            // keep the file's layout.
            let m = Arc::new(tiny_model(ty));
            let thread = Model::repack_in_background(&m).unwrap();
            m.stop_repack();
            assert!(!m.repacking.running());
            thread.join().unwrap();
            assert!(m.repacked_matrices() <= 7 * m.config.n_layer + 1);
            assert_eq!(prompt_and_decode_bits(&m), want, "{ty:?} stopped");
        }
    }

    /// Each sequence's logits have the same bits alone and batched with others at other
    /// positions, in any order, prefill and decode mixed.
    #[test]
    fn batched_rows_equal_each_sequence_alone() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
            let m = tiny_model(ty);
            let nv = m.config.n_vocab;
            let mut s = 9u64;
            let mut tok = || ((lcg(&mut s) + 1.0) * 0.5 * (nv as f32 - 1.0)) as u32;
            let prompts: Vec<Vec<u32>> = [20, 3, 17, 1, 33]
                .iter()
                .map(|&n| (0..n).map(|_| tok()).collect())
                .collect();
            let decode: Vec<Vec<u32>> = prompts
                .iter()
                .map(|_| (0..4).map(|_| tok()).collect())
                .collect();
            let new_cache = || KvCache::new(&m.config, 64, KvType::F16);
            // Alone: the prompt as one batch (all logits), then one token at a time.
            let alone: Vec<Vec<Vec<u32>>> = prompts
                .iter()
                .zip(&decode)
                .map(|(p, d)| {
                    let mut cache = new_cache();
                    let l = m.forward(&mut cache, p, 0, true).unwrap();
                    let mut rows: Vec<Vec<u32>> = l.chunks(nv).map(bits).collect();
                    for (i, &t) in d.iter().enumerate() {
                        rows.push(bits(
                            &m.forward(&mut cache, &[t], p.len() + i, false).unwrap(),
                        ));
                    }
                    rows
                })
                .collect();
            // Batched: sequences 0, 2, 4 prefill together; then decode steps of every
            // sequence in changing orders while 1 and 3 prefill late, mixed with decode.
            let mut caches: Vec<KvCache> = prompts.iter().map(|_| new_cache()).collect();
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let mut got: Vec<Vec<Vec<u32>>> = vec![Vec::new(); prompts.len()];
            let mut run = |rows: Vec<BatchRow>, got: &mut Vec<Vec<Vec<u32>>>| {
                let l = m.forward_batch(&mut refs, &rows).unwrap();
                let mut out = l.chunks(nv);
                for r in rows.iter().filter(|r| r.logits) {
                    got[r.seq].push(bits(out.next().unwrap()));
                }
            };
            let prefill = |seq: usize| {
                prompts[seq]
                    .iter()
                    .enumerate()
                    .map(move |(i, &token)| BatchRow {
                        seq,
                        token,
                        pos: i,
                        logits: true,
                    })
            };
            let step = |seq: usize, i: usize| BatchRow {
                seq,
                token: decode[seq][i],
                pos: prompts[seq].len() + i,
                logits: true,
            };
            run(
                prefill(4).chain(prefill(0)).chain(prefill(2)).collect(),
                &mut got,
            );
            run(vec![step(2, 0), step(0, 0), step(4, 0)], &mut got);
            run(
                prefill(1)
                    .chain([step(4, 1), step(0, 1)])
                    .chain(prefill(3))
                    .chain([step(2, 1)])
                    .collect(),
                &mut got,
            );
            for i in 0..4 {
                let mut rows = vec![];
                for seq in [3, 1, 0, 2, 4] {
                    let done = got[seq].len() - prompts[seq].len();
                    if done < 4 && (i + seq) % 3 != 0 {
                        rows.push(step(seq, done));
                    }
                }
                if !rows.is_empty() {
                    run(rows, &mut got);
                }
            }
            for seq in 0..prompts.len() {
                while got[seq].len() < alone[seq].len() {
                    let done = got[seq].len() - prompts[seq].len();
                    run(vec![step(seq, done)], &mut got);
                }
                assert_eq!(got[seq], alone[seq], "{ty} sequence {seq}");
            }
        }
    }

    #[test]
    fn bad_batches_are_errors() {
        let m = tiny_model(GgmlType::Q8_0);
        let mut a = KvCache::new(&m.config, 8, KvType::F16);
        let mut b = KvCache::new(&m.config, 8, KvType::F16);
        let row = |seq, token, pos| BatchRow {
            seq,
            token,
            pos,
            logits: true,
        };
        let mut caches = [&mut a, &mut b];
        let err = |rows: &[BatchRow], caches: &mut [&mut KvCache]| {
            m.forward_batch(caches, rows).unwrap_err().to_string()
        };
        assert!(err(&[], &mut caches).contains("no tokens"));
        assert!(err(&[row(2, 1, 0)], &mut caches).contains("sequence 2 has no cache"));
        assert!(err(&[row(0, 48, 0)], &mut caches).contains("outside the vocab"));
        assert!(err(&[row(1, 1, 8)], &mut caches).contains("outside the context of 8"));
        assert!(
            err(&[row(0, 1, 0), row(1, 1, 0), row(0, 1, 1)], &mut caches)
                .contains("must be consecutive")
        );
        assert!(err(&[row(0, 1, 0), row(0, 1, 2)], &mut caches).contains("must be consecutive"));
    }
}
