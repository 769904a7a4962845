//! LLaMA: hyperparameters, weights (used in place from the file map), KV cache, and the
//! forward pass for a batch of positions (Meta semantics, see DESIGN.md "Numerics").

use crate::error::{format_err, Error, Result};
use crate::gguf::{GgufFile, TensorInfo, Value};
pub use crate::attention::{KvCache, KvType};
use crate::attention::attention;
use crate::ops::{matmul, matmul_with, rmsnorm, rope_table, rope_with, silu, Prepared, WeightView};
use crate::quant::{dequantize_row, GgmlType};
use crate::tokenizer::Tokenizer;
use memmap2::Mmap;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub dim: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub ffn_dim: usize,
    pub n_vocab: usize,
    /// Context length the model was trained with (the default for n_ctx is smaller).
    pub train_ctx: usize,
    pub n_rot: usize,
    pub rms_eps: f32,
    pub freq_base: f32,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_head_kv
    }
}

/// Where a weight's bytes live: in the file's map (the normal case) or converted in memory.
pub enum Storage {
    Mapped(Arc<Mmap>, Range<usize>),
    Owned(Vec<u8>),
}

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

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
}

pub struct Model {
    pub path: PathBuf,
    pub config: Config,
    pub token_embd: Weight,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// None: the output projection is tied to `token_embd`.
    pub output: Option<Weight>,
    pub tokenizer: Tokenizer,
    pub metadata: Vec<(String, Value)>,
    /// The most common weight type ("Q4_0", ...), for display.
    pub file_type: String,
}

fn meta_usize(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n > 0 && n < (1 << 40) => Ok(Some(n as usize)),
            _ => format_err(format!("{}: metadata {key} = {v:?} is not a positive integer", f.path.display())),
        },
    }
}

fn require_usize(f: &GgufFile, key: &str) -> Result<usize> {
    meta_usize(f, key)?.ok_or_else(|| Error::Format(format!("{}: metadata {key} is missing", f.path.display())))
}

fn meta_f32(f: &GgufFile, key: &str, default: f32) -> Result<f32> {
    match f.get(key) {
        None => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x as f32),
            _ => format_err(format!("{}: metadata {key} = {v:?} is not a positive number", f.path.display())),
        },
    }
}

/// Read the vocab stored in a GGUF (`tokenizer.ggml.*`) into a tokenizer.
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let shown = f.path.display();
    match f.get("tokenizer.ggml.model").and_then(|v| v.as_str()) {
        Some("llama") | None => {}
        Some(other) => {
            return format_err(format!(
                "{shown}: tokenizer model {other:?} is not supported (only SentencePiece \"llama\")"
            ))
        }
    }
    let tokens: Vec<String> = match f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Format(format!("{shown}: tokenizer.ggml.tokens holds non-strings")))?,
        None => return format_err(format!("{shown}: the vocab (tokenizer.ggml.tokens) is missing")),
    };
    let scores: Vec<f32> = match f.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
        Some(items) => items
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Format(format!("{shown}: tokenizer.ggml.scores holds non-numbers")))?,
        None => vec![],
    };
    let types: Vec<i32> = match f.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(items) => items
            .iter()
            .map(|v| v.as_i64().map(|x| x as i32))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Format(format!("{shown}: tokenizer.ggml.token_type holds non-integers")))?,
        None => vec![],
    };
    let id = |key: &str| -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 && (n as usize) < tokens.len() => Ok(Some(n as u32)),
                Some(-1) => Ok(None),
                _ => format_err(format!("{shown}: {key} = {v:?} is not a token id of the vocab")),
            },
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?.or(Some(1).filter(|_| tokens.len() > 1));
    let eos = id("tokenizer.ggml.eos_token_id")?.or(Some(2).filter(|_| tokens.len() > 2));
    let unk = id("tokenizer.ggml.unknown_token_id")?.or(Some(0));
    let add_space_prefix = f.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
    let remove_extra_ws = f
        .get("tokenizer.ggml.remove_extra_whitespaces")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Tokenizer::new(tokens, scores, types, bos, eos, unk, add_space_prefix, remove_extra_ws)
        .map_err(|e| Error::Format(format!("{shown}: {e}")))
}

impl Model {
    /// Load a GGUF file, or a legacy (ggml, ggmf, ggjt) file with its parts.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if crate::legacy::is_legacy_magic(&read_head(path)) {
            return Self::from_legacy(&crate::legacy::LegacyFile::open(path)?);
        }
        let f = GgufFile::open(path)?;
        Self::from_gguf(&f)
    }

    pub fn from_legacy(f: &crate::legacy::LegacyFile) -> Result<Model> {
        let shown = f.paths[0].display().to_string();
        let tokenizer = f.tokenizer()?;
        let config = f.config(tokenizer.n_vocab())?;
        let get = |name: &str, shape: &[usize]| -> Result<Weight> {
            let legacy = crate::legacy::meta_name(name).unwrap_or_else(|| name.to_string());
            let t = f
                .tensor(&legacy)
                .ok_or_else(|| Error::Format(format!("{shown}: tensor {legacy} is missing")))?;
            check_dims(&shown, &legacy, &t.ne, shape)?;
            Ok(f.weight(t))
        };
        let has_output = f.tensor("output.weight").is_some();
        let file_type = f.tensors.iter().filter(|t| t.ne.len() >= 2).fold(HashMap::new(), |mut m: HashMap<String, u64>, t| {
            *m.entry(t.type_name()).or_default() += t.n_elements();
            m
        });
        let file_type = file_type.into_iter().max_by_key(|(_, n)| *n).map_or("F32".to_string(), |(t, _)| t);
        build(f.paths[0].clone(), config, tokenizer, f.metadata(), file_type, has_output, get)
    }

    pub fn from_gguf(f: &GgufFile) -> Result<Model> {
        let shown = f.path.display().to_string();
        match f.get("general.architecture").and_then(|v| v.as_str()) {
            Some("llama") => {}
            Some(other) => {
                return format_err(format!(
                    "{shown}: architecture {other:?} is not supported (llama-rs runs LLaMA-family models: general.architecture = \"llama\")"
                ))
            }
            None => return format_err(format!("{shown}: general.architecture is missing")),
        }
        let tokenizer = tokenizer_from_gguf(f)?;
        let dim = require_usize(f, "llama.embedding_length")?;
        let n_layer = require_usize(f, "llama.block_count")?;
        let n_head = require_usize(f, "llama.attention.head_count")?;
        let n_head_kv = meta_usize(f, "llama.attention.head_count_kv")?.unwrap_or(n_head);
        let ffn_dim = require_usize(f, "llama.feed_forward_length")?;
        let train_ctx = meta_usize(f, "llama.context_length")?.unwrap_or(2048);
        if dim % n_head != 0 || n_head % n_head_kv != 0 || n_layer > 4096 {
            return format_err(format!(
                "{shown}: inconsistent hyperparameters: embedding {dim}, {n_head} heads, {n_head_kv} KV heads, {n_layer} layers"
            ));
        }
        let head_dim = dim / n_head;
        let n_rot = meta_usize(f, "llama.rope.dimension_count")?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return format_err(format!("{shown}: llama.rope.dimension_count {n_rot} does not fit head size {head_dim}"));
        }
        let config = Config {
            dim,
            n_layer,
            n_head,
            n_head_kv,
            ffn_dim,
            n_vocab: tokenizer.n_vocab(),
            train_ctx,
            n_rot,
            rms_eps: meta_f32(f, "llama.attention.layer_norm_rms_epsilon", 1e-5)?,
            freq_base: meta_f32(f, "llama.rope.freq_base", 10000.0)?,
        };

        let map = f.mmap();
        let get = |name: &str, shape: &[usize]| -> Result<Weight> {
            let t: &TensorInfo = f
                .tensor(name)
                .ok_or_else(|| Error::Format(format!("{shown}: tensor {name} is missing")))?;
            check_shape(&shown, t, shape)?;
            let cols = t.dims[0] as usize;
            let rows = (t.n_elements() / t.dims[0]) as usize;
            Ok(Weight { name: name.to_string(), ty: t.ty, rows, cols, data: Storage::Mapped(map.clone(), t.range.clone()) })
        };
        let has_output = f.tensor("output.weight").is_some();
        build(f.path.clone(), config, tokenizer, f.metadata.clone(), dominant_type(f), has_output, get)
    }

    fn output_weight(&self) -> &Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

/// The first bytes of a file (empty if it cannot be read: the real open reports why).
pub(crate) fn read_head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut head = vec![0u8; 8];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => {
            head.truncate(n);
            head
        }
        Err(_) => Vec::new(),
    }
}

/// Assemble a model from its hyperparameters and a source of weights by GGUF name.
fn build(
    path: PathBuf,
    config: Config,
    tokenizer: Tokenizer,
    metadata: Vec<(String, Value)>,
    file_type: String,
    has_output: bool,
    get: impl Fn(&str, &[usize]) -> Result<Weight>,
) -> Result<Model> {
    let (dim, ffn_dim, kv_dim) = (config.dim, config.ffn_dim, config.kv_dim());
    let token_embd = get("token_embd.weight", &[dim, config.n_vocab])?;
    let mut layers = Vec::with_capacity(config.n_layer);
    for i in 0..config.n_layer {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        layers.push(Layer {
            attn_norm: get(&p("attn_norm"), &[dim])?.to_f32(),
            wq: get(&p("attn_q"), &[dim, dim])?,
            wk: get(&p("attn_k"), &[dim, kv_dim])?,
            wv: get(&p("attn_v"), &[dim, kv_dim])?,
            wo: get(&p("attn_output"), &[dim, dim])?,
            ffn_norm: get(&p("ffn_norm"), &[dim])?.to_f32(),
            w_gate: get(&p("ffn_gate"), &[dim, ffn_dim])?,
            w_up: get(&p("ffn_up"), &[dim, ffn_dim])?,
            w_down: get(&p("ffn_down"), &[ffn_dim, dim])?,
        });
    }
    let output_norm = get("output_norm.weight", &[dim])?.to_f32();
    let output = if has_output { Some(get("output.weight", &[dim, config.n_vocab])?) } else { None };
    Ok(Model { path, config, token_embd, layers, output_norm, output, tokenizer, metadata, file_type })
}

fn check_dims(file: &str, name: &str, dims: &[u64], shape: &[usize]) -> Result<()> {
    let mut trimmed: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    while trimmed.len() > shape.len() && trimmed.last() == Some(&1) {
        trimmed.pop();
    }
    if trimmed != shape {
        return format_err(format!("{file}: tensor {name} has shape {dims:?}, expected {shape:?} from the hyperparameters"));
    }
    Ok(())
}

fn check_shape(file: &str, t: &TensorInfo, shape: &[usize]) -> Result<()> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    // A 1-D norm may be stored as [n, 1] by some writers; trailing 1s do not change the data.
    let mut trimmed = dims.clone();
    while trimmed.len() > shape.len() && trimmed.last() == Some(&1) {
        trimmed.pop();
    }
    if trimmed != shape {
        return format_err(format!(
            "{file}: tensor {} has shape {:?}, expected {:?} from the hyperparameters",
            t.name, dims, shape
        ));
    }
    Ok(())
}

fn dominant_type(f: &GgufFile) -> String {
    let mut best: Option<(GgmlType, u64)> = None;
    let mut counts: Vec<(GgmlType, u64)> = Vec::new();
    for t in &f.tensors {
        if t.dims.len() < 2 {
            continue;
        }
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some(c) => c.1 += t.n_elements(),
            None => counts.push((t.ty, t.n_elements())),
        }
    }
    for c in counts {
        if best.map_or(true, |b| c.1 > b.1) {
            best = Some(c);
        }
    }
    best.map_or("F32".to_string(), |b| b.0.name().to_string())
}

/// Scratch buffers for one batch, sized once per call.
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Model {
    /// Evaluate `ids` at positions `n_past ..`, filling the cache. Returns logits for every
    /// position when `all_logits`, else for the last one only. Runs on the current rayon pool.
    pub fn forward(&self, cache: &mut KvCache, ids: &[u32], n_past: usize, all_logits: bool) -> Result<Vec<f32>> {
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
            return Err(Error::Invalid(format!("token id {bad} is outside the vocab (0..{})", c.n_vocab)));
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
        for (t, &id) in ids.iter().enumerate() {
            self.token_embd.row_f32(id as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        let rope_tables: Vec<Vec<(f32, f32)>> = (0..n).map(|t| rope_table(c.n_rot, n_past + t, c.freq_base)).collect();
        for (l, layer) in self.layers.iter().enumerate() {
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
            cache.write(l, n_past, &s.k, &s.v);
            attention(c, cache, l, &s.q, n_past, &mut s.att);
            matmul(&layer.wo, &s.att, n, &mut s.o);
            for (x, o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
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
        // Only the rows whose logits are wanted go through the (large) output projection.
        let first = if all_logits { 0 } else { n - 1 };
        let rows = &mut s.x[first * dim..];
        for row in rows.chunks_mut(dim) {
            rmsnorm(row, &self.output_norm, c.rms_eps);
        }
        let m = n - first;
        let mut logits = vec![0.0; m * c.n_vocab];
        matmul(self.output_weight(), rows, m, &mut logits);
        Ok(logits)
    }
}
