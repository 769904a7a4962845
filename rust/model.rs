//! LLaMA: the layers, the model, and the forward pass for a batch of positions (Meta
//! semantics, see DESIGN.md "Numerics"). Loading is in `load.rs`, the weight and config types
//! in `weights.rs` and `config.rs`, the KV cache and attention in `attention.rs`.
//!
//! Shapes below: `n` positions in the batch, `dim` the embedding, `kv_dim = n_head_kv *
//! head_dim`, `ff` the feed-forward width, `n_vocab` the vocab; a weight `[rows, cols]` has one
//! row per output (ggml order `ne = [cols, rows]`).

use crate::attention::attention;
pub use crate::attention::{KvCache, KvType};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::ops::{matmul, matmul_with, rmsnorm, rope_with, silu, Prepared, Rope};
use crate::tokenizer::Tokenizer;
use crate::weights::Weight;
use std::path::PathBuf;

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
        let c = &self.config;
        let n = ids.len();
        if n == 0 {
            return Err(Error::Invalid("no tokens to evaluate".into()));
        }
        if n_past + n > cache.n_ctx {
            return Err(Error::Invalid(format!(
                "{} tokens after {} already evaluated exceed the context of {} tokens",
                n, n_past, cache.n_ctx
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocab (0..{})",
                c.n_vocab
            )));
        }
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
        for (t, &id) in ids.iter().enumerate() {
            self.token_embd
                .row_f32(id as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        // [n][n_rot / 2] (sin, cos) per position, shared by q and k of every head and layer.
        let rope_tables: Vec<Vec<(f32, f32)>> =
            (0..n).map(|t| self.rope.table(n_past + t)).collect();
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
            // Causal attention of each new position over the cache (positions 0 ..= its own).
            cache.write(l, n_past, &s.k, &s.v);
            attention(c, cache, l, &s.q, n_past, &mut s.att);
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
        let first = if all_logits { 0 } else { n - 1 };
        let rows = &mut s.x[first * dim..]; // [m, dim]
        for row in rows.chunks_mut(dim) {
            rmsnorm(row, &self.output_norm, c.rms_eps);
        }
        let m = n - first;
        let mut logits = vec![0.0; m * c.n_vocab]; // [m, n_vocab]
        matmul(self.output_weight(), rows, m, &mut logits);
        Ok(logits)
    }

    /// The output projection: `output`, or `token_embd` when they are tied.
    fn output_weight(&self) -> &Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}
