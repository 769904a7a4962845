//! Model files into a [`Model`]: GGUF and legacy (ggml, ggmf, ggjt) files, read by their pure
//! readers (`gguf.rs`, `legacy.rs`), become a [`Config`] (checked once, by
//! [`Config::validate`]), a [`Tokenizer`] and the weights under their GGUF names, each shape
//! checked against the hyperparameters.

use crate::bytes::read_head;
use crate::config::Config;
use crate::error::{format_err, Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::legacy::{is_legacy_magic, LegacyFile, LegacyTensor, Split, StoredType};
use crate::model::{Layer, Model};
use crate::ops::Rope;
use crate::quant::GgmlType;
use crate::tokenizer::{Kind, Pre, TokenType, Tokenizer, Vocab, KNOWN_PRE};
use crate::weights::{Storage, Weight};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The RMSNorm epsilon the programs of the legacy files' time used (the files do not store it).
pub const LEGACY_RMS_EPS: f32 = 1e-6;

impl Model {
    /// Load a GGUF file, or a legacy (ggml, ggmf, ggjt) file with its parts. The matrices
    /// this CPU's kernels read faster in another layout are repacked on a thread of its own
    /// ([`Model::repack_in_background`]; [`Model::wait_repacked`] waits for it), except those
    /// held in this process's memory (joined legacy parts), repacked now to free that memory.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Model>> {
        let path = path.as_ref();
        // A bad LLAMA_RS_ISA or LLAMA_RS_PREFETCH is refused here, before any kernel runs in a
        // way not asked for.
        crate::quant::Level::requested().map_err(Error::Invalid)?;
        crate::quant::prefetch_requested().map_err(Error::Invalid)?;
        let mut model = if is_legacy_magic(&read_head(path)) {
            Self::from_legacy(&LegacyFile::open(path)?)?
        } else {
            Self::from_gguf(&GgufFile::open(path)?)?
        };
        if model.matrices().any(|w| w.owns_bytes_to_repack()) {
            model.repack_for_kernels();
        }
        let model = Arc::new(model);
        Model::repack_in_background(&model);
        Ok(model)
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
        let config = gguf_config(f, tokenizer.n_vocab())?;
        let map = f.mmap();
        let get = |name: &str, shape: &[usize]| -> Result<Weight> {
            let t = f
                .tensor(name)
                .ok_or_else(|| Error::Format(format!("{shown}: tensor {name} is missing")))?;
            check_shape(&shown, name, &t.dims, shape)?;
            let (cols, rows) = (t.dims[0] as usize, (t.n_elements() / t.dims[0]) as usize);
            let data = Storage::Mapped(map.clone(), t.range.clone());
            Ok(Weight::new(name, t.ty, rows, cols, data))
        };
        let file_type = dominant_type(
            f.tensors
                .iter()
                .map(|t| (t.ty.name().to_string(), t.dims.len(), t.n_elements())),
        );
        build(
            f.path.clone(),
            config,
            tokenizer,
            f.metadata.clone(),
            file_type,
            |name| f.tensor(name).is_some(),
            get,
        )
    }

    pub fn from_legacy(f: &LegacyFile) -> Result<Model> {
        let shown = f.paths[0].display().to_string();
        let tokenizer = legacy_tokenizer(f)?;
        let config = legacy_config(f, tokenizer.n_vocab())?;
        let get = |name: &str, shape: &[usize]| -> Result<Weight> {
            let legacy = meta_name(name).unwrap_or_else(|| name.to_string());
            let t = f
                .tensor(&legacy)
                .ok_or_else(|| Error::Format(format!("{shown}: tensor {legacy} is missing")))?;
            check_shape(&shown, &legacy, &t.ne, shape)?;
            Ok(legacy_weight(f, t))
        };
        let file_type = dominant_type(
            f.tensors
                .iter()
                .map(|t| (t.type_name(), t.ne.len(), t.n_elements())),
        );
        build(
            f.paths[0].clone(),
            config,
            tokenizer,
            legacy_metadata(f),
            file_type,
            |name| meta_name(name).is_some_and(|m| f.tensor(&m).is_some()),
            get,
        )
    }
}

/// Assemble a model from its hyperparameters and a source of weights by GGUF name (`has`
/// says whether an optional one is there).
fn build(
    path: PathBuf,
    config: Config,
    tokenizer: Tokenizer,
    metadata: Vec<(String, Value)>,
    file_type: String,
    has: impl Fn(&str) -> bool,
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
    let output = if has("output.weight") {
        Some(get("output.weight", &[dim, config.n_vocab])?)
    } else {
        None
    };
    let factors = if has(ROPE_FREQS) {
        rope_factors(&path, get(ROPE_FREQS, &[config.n_rot / 2])?.to_f32())?
    } else {
        Vec::new()
    };
    let rope = Rope {
        n_rot: config.n_rot,
        freq_base: config.freq_base,
        freq_scale: config.freq_scale,
        factors,
    };
    Ok(Model {
        path,
        config,
        token_embd,
        layers,
        output_norm,
        output,
        rope,
        tokenizer,
        metadata,
        file_type,
        repacking: Default::default(),
    })
}

/// Llama 3.1's per-pair rotary frequency divisors (`[n_rot / 2]`, one for every layer).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The divisors of `rope_freqs.weight`, checked: a divisor that is not a positive number
/// would turn every angle into NaN or infinity.
fn rope_factors(path: &Path, factors: Vec<f32>) -> Result<Vec<f32>> {
    match factors.iter().position(|f| !(f.is_finite() && *f > 0.0)) {
        Some(i) => format_err(format!(
            "{}: tensor {ROPE_FREQS} holds {} at pair {i}: rotary frequency factors must be positive numbers",
            path.display(),
            factors[i]
        )),
        None => Ok(factors),
    }
}

/// A tensor's stored shape (ggml order) against the one the hyperparameters give. A 1-D norm
/// may be stored as `[n, 1]` by some writers; trailing 1s do not change the data.
fn check_shape(file: &str, name: &str, dims: &[u64], shape: &[usize]) -> Result<()> {
    let mut trimmed: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    while trimmed.len() > shape.len() && trimmed.last() == Some(&1) {
        trimmed.pop();
    }
    if trimmed != shape {
        return format_err(format!(
            "{file}: tensor {name} has shape {dims:?}, expected {shape:?} from the hyperparameters"
        ));
    }
    Ok(())
}

/// The type holding most elements among the matrices (`(type name, n_dims, n_elements)`
/// per tensor), for display; on a tie the first in file order. "F32" when there are none.
fn dominant_type(tensors: impl Iterator<Item = (String, usize, u64)>) -> String {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for (ty, _, n) in tensors.filter(|t| t.1 >= 2) {
        match counts.iter_mut().find(|(t, _)| *t == ty) {
            Some(c) => c.1 += n,
            None => counts.push((ty, n)),
        }
    }
    let mut best: Option<(String, u64)> = None;
    for c in counts {
        if best.as_ref().is_none_or(|b| c.1 > b.1) {
            best = Some(c);
        }
    }
    best.map_or("F32".to_string(), |b| b.0)
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata

fn meta_usize(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n > 0 && n < (1 << 40) => Ok(Some(n as usize)),
            _ => format_err(format!(
                "{}: metadata {key} = {v:?} is not a positive integer",
                f.path.display()
            )),
        },
    }
}

fn require_usize(f: &GgufFile, key: &str) -> Result<usize> {
    meta_usize(f, key)?
        .ok_or_else(|| Error::Format(format!("{}: metadata {key} is missing", f.path.display())))
}

fn meta_f32(f: &GgufFile, key: &str, default: f32) -> Result<f32> {
    match f.get(key) {
        None => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x as f32),
            _ => format_err(format!(
                "{}: metadata {key} = {v:?} is not a positive number",
                f.path.display()
            )),
        },
    }
}

/// `1 / llama.rope.scaling.factor` (or the older `llama.rope.scale_linear`) for linear scaling,
/// 1 without it, as llama.cpp reads them: the type defaults to linear, a factor of 0 means
/// none, and type `none` ignores the factor. Types this engine does not compute (YaRN,
/// LongRoPE, ...) and an attention factor other than 1 are refused, not ignored: the model
/// would run, with wrong angles.
fn rope_freq_scale(f: &GgufFile) -> Result<f32> {
    let shown = f.path.display();
    let kind = match f.get("llama.rope.scaling.type") {
        None => "linear",
        Some(v) => v.as_str().ok_or_else(|| {
            Error::Format(format!(
                "{shown}: metadata llama.rope.scaling.type = {v:?} is not a string"
            ))
        })?,
    };
    if let Some(v) = f.get("llama.rope.scaling.attn_factor") {
        if v.as_f64() != Some(1.0) {
            return format_err(format!(
                "{shown}: rope scaling attention factor {v:?} (llama.rope.scaling.attn_factor) is not supported"
            ));
        }
    }
    let factor_key = ["llama.rope.scaling.factor", "llama.rope.scale_linear"]
        .into_iter()
        .find(|k| f.get(k).is_some());
    let factor = match factor_key {
        None => 0.0,
        Some(k) => match f.get(k).and_then(|v| v.as_f64()) {
            Some(x) if x.is_finite() && x >= 0.0 => x as f32,
            _ => {
                return format_err(format!(
                    "{shown}: metadata {k} = {:?} is not a non-negative number",
                    f.get(k).unwrap()
                ))
            }
        },
    };
    match kind {
        "none" => Ok(1.0),
        "linear" if factor == 0.0 => Ok(1.0),
        "linear" => Ok(1.0 / factor),
        other => format_err(format!(
            "{shown}: rope scaling type {other:?} (llama.rope.scaling.type) is not supported: llama-rs computes none, linear and Llama 3's rope_freqs.weight"
        )),
    }
}

fn gguf_config(f: &GgufFile, n_vocab: usize) -> Result<Config> {
    let dim = require_usize(f, "llama.embedding_length")?;
    let n_head = require_usize(f, "llama.attention.head_count")?;
    let config = Config {
        dim,
        n_layer: require_usize(f, "llama.block_count")?,
        n_head,
        n_head_kv: meta_usize(f, "llama.attention.head_count_kv")?.unwrap_or(n_head),
        ffn_dim: require_usize(f, "llama.feed_forward_length")?,
        n_vocab,
        train_ctx: meta_usize(f, "llama.context_length")?.unwrap_or(2048),
        n_rot: meta_usize(f, "llama.rope.dimension_count")?.unwrap_or(dim / n_head),
        rms_eps: meta_f32(f, "llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        freq_base: meta_f32(f, "llama.rope.freq_base", 10000.0)?,
        freq_scale: rope_freq_scale(f)?,
    };
    config
        .validate()
        .map_err(|e| Error::Format(format!("{}: {e}", f.path.display())))?;
    Ok(config)
}

/// A metadata array with every element converted by `conv` (None: the key is absent).
fn meta_array<T>(
    f: &GgufFile,
    key: &str,
    wrong: &str,
    conv: impl Fn(&Value) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    match f.get(key).and_then(|v| v.as_array()) {
        None => Ok(None),
        Some(items) => items
            .iter()
            .map(conv)
            .collect::<Option<Vec<T>>>()
            .map(Some)
            .ok_or_else(|| Error::Format(format!("{}: {key} holds {wrong}", f.path.display()))),
    }
}

/// Read the vocab stored in a GGUF (`tokenizer.ggml.*`) into a tokenizer: SentencePiece
/// (`tokenizer.ggml.model = "llama"`, or none) or byte-level BPE (`"gpt2"`, with `merges` and
/// the pre-tokenizer `pre`).
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let shown = f.path.display();
    let kind = match f.get("tokenizer.ggml.model").and_then(|v| v.as_str()) {
        Some("llama") | None => Kind::SentencePiece,
        Some("gpt2") => Kind::BytePair,
        Some(other) => {
            return format_err(format!(
                "{shown}: tokenizer model {other:?} is not supported (SentencePiece \"llama\" and \
                 byte-level BPE \"gpt2\" are)"
            ))
        }
    };
    let strings = |key: &str| meta_array(f, key, "non-strings", |v| v.as_str().map(str::to_owned));
    let Some(tokens) = strings("tokenizer.ggml.tokens")? else {
        return format_err(format!(
            "{shown}: the vocab (tokenizer.ggml.tokens) is missing"
        ));
    };
    let scores = meta_array(f, "tokenizer.ggml.scores", "non-numbers", |v| {
        v.as_f64().map(|x| x as f32)
    })?;
    let types = meta_array(f, "tokenizer.ggml.token_type", "non-integers", |v| {
        v.as_i64().map(|x| x as i32)
    })?;
    let n = tokens.len();
    let id = |key: &str| -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(k) if k >= 0 && (k as usize) < n => Ok(Some(k as u32)),
                Some(-1) => Ok(None),
                _ => format_err(format!(
                    "{shown}: {key} = {v:?} is not a token id of the vocab"
                )),
            },
        }
    };
    let flag = |key: &str| f.get(key).and_then(|v| v.as_bool());
    let (bos, eos, unk) = (
        id("tokenizer.ggml.bos_token_id")?,
        id("tokenizer.ggml.eos_token_id")?,
        id("tokenizer.ggml.unknown_token_id")?,
    );
    let (eot, eom) = (
        id("tokenizer.ggml.eot_token_id")?,
        id("tokenizer.ggml.eom_token_id")?,
    );
    let mut vocab = match kind {
        Kind::SentencePiece => Vocab {
            bos: bos.or(Some(1).filter(|_| n > 1)),
            eos: eos.or(Some(2).filter(|_| n > 2)),
            unk: unk.or(Some(0)),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            remove_extra_whitespaces: flag("tokenizer.ggml.remove_extra_whitespaces")
                .unwrap_or(false),
            ..Vocab::new(tokens)
        },
        Kind::BytePair => {
            let Some(merges) = strings("tokenizer.ggml.merges")? else {
                return format_err(format!(
                    "{shown}: the byte-level BPE vocab has no merges (tokenizer.ggml.merges)"
                ));
            };
            let pre_name = match f.get("tokenizer.ggml.pre") {
                None => "default",
                Some(v) => match v.as_str() {
                    Some(s) => s,
                    None => {
                        return format_err(format!(
                            "{shown}: tokenizer.ggml.pre = {v:?} is not a string"
                        ))
                    }
                },
            };
            let Some(pre) = Pre::from_name(pre_name) else {
                return format_err(format!(
                    "{shown}: the pre-tokenizer tokenizer.ggml.pre = {pre_name:?} is not supported \
                     (supported: {KNOWN_PRE})"
                ));
            };
            Vocab {
                bos,
                eos,
                unk,
                ..Vocab::byte_pair(tokens, merges, pre)
            }
        }
    };
    vocab.scores = scores.unwrap_or_default();
    vocab.eot = eot;
    vocab.eom = eom;
    vocab.add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(vocab.add_bos);
    vocab.add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(vocab.add_eos);
    // No types stored (or none at all): the tokenizer infers them.
    let vocab = match types {
        Some(types) if !types.is_empty() => vocab.with_gguf_types(&types),
        _ => Ok(vocab),
    };
    vocab
        .and_then(Tokenizer::new)
        .map_err(|e| Error::Format(format!("{shown}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Legacy files

fn legacy_config(f: &LegacyFile, n_vocab: usize) -> Result<Config> {
    let h = &f.hparams;
    let config = Config {
        dim: h.n_embd,
        n_layer: h.n_layer,
        n_head: h.n_head,
        n_head_kv: h.n_head,
        ffn_dim: h.n_ff(),
        n_vocab,
        train_ctx: 2048,
        n_rot: h.n_rot,
        rms_eps: LEGACY_RMS_EPS,
        freq_base: 10000.0,
        freq_scale: 1.0,
    };
    config
        .validate()
        .map_err(|e| Error::Format(format!("{}: {e}", f.paths[0].display())))?;
    Ok(config)
}

/// The vocab as a tokenizer: spaces back to `▁`, byte tokens to `<0xXX>`, the empty control
/// pieces to `<s>` / `</s>`, the unknown piece (" ⁇ ") to `<unk>`.
fn legacy_tokenizer(f: &LegacyFile) -> Result<Tokenizer> {
    let v = &f.vocab;
    let n = v.len();
    // Byte fallback vocab: ids 3..=258 are the bytes 0..=255 in order.
    let bytes_at_3 = n >= 259 && (0..256).all(|b| v[3 + b].0 == [b as u8]);
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for (i, (text, _)) in v.iter().enumerate() {
        let (piece, ty) = if bytes_at_3 && (3..259).contains(&i) {
            (format!("<0x{:02X}>", i - 3), TokenType::Byte)
        } else if i == 0 && (text.as_slice() == " \u{2047} ".as_bytes() || text.is_empty()) {
            ("<unk>".to_string(), TokenType::Unknown)
        } else if text.is_empty() {
            let piece = match i {
                1 => "<s>".to_string(),
                2 => "</s>".to_string(),
                _ => format!("<ctrl{i}>"),
            };
            (piece, TokenType::Control)
        } else {
            (
                String::from_utf8_lossy(text).replace(' ', "\u{2581}"),
                TokenType::Normal,
            )
        };
        tokens.push(piece);
        types.push(ty);
    }
    // ggml (unversioned) stores no scores: rank order stands in for the BPE merge scores.
    let scores: Vec<f32> = if f.format.has_scores() {
        v.iter().map(|e| e.1).collect()
    } else {
        (0..n).map(|i| -(i as f32)).collect()
    };
    let id = |i: u32| Some(i).filter(|&i| (i as usize) < n);
    let vocab = Vocab {
        scores,
        types,
        bos: id(1),
        eos: id(2),
        unk: id(0),
        ..Vocab::new(tokens)
    };
    Tokenizer::new(vocab).map_err(|e| Error::Format(format!("{}: {e}", f.paths[0].display())))
}

/// GGUF-style metadata describing a legacy file (for `Model.metadata` and `info`).
pub fn legacy_metadata(f: &LegacyFile) -> Vec<(String, Value)> {
    let h = &f.hparams;
    let u = |x: usize| Value::U32(x as u32);
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "legacy.format".into(),
            Value::String(f.format.name().into()),
        ),
        ("legacy.version".into(), Value::U32(f.format.version())),
        ("legacy.n_parts".into(), u(f.paths.len())),
        ("legacy.n_mult".into(), u(h.n_mult)),
        ("legacy.ftype".into(), Value::I32(h.ftype)),
        ("llama.embedding_length".into(), u(h.n_embd)),
        ("llama.block_count".into(), u(h.n_layer)),
        ("llama.feed_forward_length".into(), u(h.n_ff())),
        ("llama.rope.dimension_count".into(), u(h.n_rot)),
        ("llama.attention.head_count".into(), u(h.n_head)),
        ("llama.attention.head_count_kv".into(), u(h.n_head)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(LEGACY_RMS_EPS),
        ),
        (
            "general.file_type".into(),
            Value::U32(h.ftype.max(0) as u32),
        ),
    ]
}

/// Tensor names: Meta's (legacy files) for GGUF's (the engine's).
pub fn meta_name(gguf: &str) -> Option<String> {
    let simple = [
        ("token_embd.weight", "tok_embeddings.weight"),
        ("output_norm.weight", "norm.weight"),
        ("output.weight", "output.weight"),
    ];
    if let Some((_, m)) = simple.iter().find(|(g, _)| *g == gguf) {
        return Some(m.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let m = match part {
        "attn_norm.weight" => "attention_norm.weight",
        "attn_q.weight" => "attention.wq.weight",
        "attn_k.weight" => "attention.wk.weight",
        "attn_v.weight" => "attention.wv.weight",
        "attn_output.weight" => "attention.wo.weight",
        "ffn_norm.weight" => "ffn_norm.weight",
        "ffn_gate.weight" => "feed_forward.w1.weight",
        "ffn_down.weight" => "feed_forward.w2.weight",
        "ffn_up.weight" => "feed_forward.w3.weight",
        _ => return None,
    };
    Some(format!("layers.{layer}.{m}"))
}

/// The type the engine computes with for a stored legacy type. ggml, ggmf, ggjt v1 and v2
/// blocks keep their f32 scales (`Q4_0F32`, ...: see quant/f32_scale.rs for why not f16);
/// ggjt v3 blocks are today's.
fn legacy_type(f: &LegacyFile, ty: StoredType) -> GgmlType {
    match (ty, f.format.f16_scales()) {
        (StoredType::F32, _) => GgmlType::F32,
        (StoredType::F16, _) => GgmlType::F16,
        (StoredType::Q4_0, true) => GgmlType::Q4_0,
        (StoredType::Q4_1, true) => GgmlType::Q4_1,
        (StoredType::Q8_0, true) => GgmlType::Q8_0,
        (StoredType::Q4_0, false) => GgmlType::Q4_0F32,
        (StoredType::Q4_1, false) => GgmlType::Q4_1F32,
        (StoredType::Q8_0, false) => GgmlType::Q8_0F32,
    }
}

/// A legacy tensor as a weight: in place when it can be, else joined from its parts and/or
/// with its nibbles repacked into today's order (ggml, ggmf, ggjt v1 q4 blocks).
fn legacy_weight(f: &LegacyFile, t: &LegacyTensor) -> Weight {
    let ty = legacy_type(f, t.ty);
    let cols = t.ne[0] as usize;
    let rows = (t.n_elements() / t.ne[0]) as usize;
    let repack = ty.is_quantized() && f.format.old_nibbles() && t.ty != StoredType::Q8_0;
    let data = if t.ranges.len() == 1 && !repack {
        Storage::Mapped(f.map().clone(), t.ranges[0].clone())
    } else {
        let mut bytes = join_parts(f, t, ty);
        if repack {
            repack_nibbles(&mut bytes, ty);
        }
        Storage::Owned(bytes)
    };
    Weight::new(t.name.clone(), ty, rows, cols, data)
}

/// The whole tensor from its parts: rows split by rows are concatenated, rows split by
/// columns are interleaved row by row.
fn join_parts(f: &LegacyFile, t: &LegacyTensor, ty: GgmlType) -> Vec<u8> {
    let parts = f.part_bytes(t);
    match t.split {
        Split::Whole => parts[0].to_vec(),
        Split::Rows => parts.concat(),
        Split::Columns => {
            let n = parts.len();
            let part_row = ty.row_bytes(t.ne[0] as usize / n).unwrap();
            let rows = (t.n_elements() / t.ne[0]) as usize;
            let mut out = Vec::with_capacity(part_row * n * rows);
            for r in 0..rows {
                for p in &parts {
                    out.extend_from_slice(&p[r * part_row..(r + 1) * part_row]);
                }
            }
            out
        }
    }
}

/// Old nibble order (byte j = weights 2j low, 2j+1 high) to today's (byte j = weights j, j+16).
fn repack_nibbles(bytes: &mut [u8], ty: GgmlType) {
    let head = match ty {
        GgmlType::Q4_0F32 => 4,
        GgmlType::Q4_1F32 => 8,
        _ => return,
    };
    crate::threads::install_shared(|| {
        bytes
            .par_chunks_mut(ty.type_size() * 1024)
            .for_each(|chunk| {
                for b in chunk.chunks_exact_mut(ty.type_size()) {
                    let qs = &mut b[head..head + 16];
                    let mut q = [0u8; 32];
                    for j in 0..16 {
                        q[2 * j] = qs[j] & 0x0f;
                        q[2 * j + 1] = qs[j] >> 4;
                    }
                    for j in 0..16 {
                        qs[j] = q[j] | (q[j + 16] << 4);
                    }
                }
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_type_counts_matrices_only_and_keeps_file_order_on_ties() {
        let t = |ty: &str, n_dims, n| (ty.to_string(), n_dims, n);
        let ts = [
            t("F32", 1, 1000),
            t("Q4_0", 2, 64),
            t("Q8_0", 2, 64),
            t("Q8_0", 2, 1),
        ];
        assert_eq!(dominant_type(ts.clone().into_iter()), "Q8_0");
        assert_eq!(dominant_type(ts.clone().into_iter().take(3)), "Q4_0");
        assert_eq!(dominant_type(ts.into_iter().take(1)), "F32");
    }

    #[test]
    fn shapes_allow_trailing_ones_only() {
        assert!(check_shape("f", "t", &[8, 1], &[8]).is_ok());
        assert!(check_shape("f", "t", &[8, 4], &[8, 4]).is_ok());
        let e = check_shape("f", "t", &[4, 8], &[8, 4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f: tensor t has shape [4, 8], expected [8, 4]"),
            "{e}"
        );
    }

    #[test]
    fn meta_names() {
        assert_eq!(
            meta_name("token_embd.weight").as_deref(),
            Some("tok_embeddings.weight")
        );
        assert_eq!(
            meta_name("blk.7.ffn_up.weight").as_deref(),
            Some("layers.7.feed_forward.w3.weight")
        );
        assert_eq!(meta_name("blk.7.nothing.weight"), None);
    }
}
