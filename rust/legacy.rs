//! Pre-GGUF model files, read only: unversioned `ggml`, `ggmf` v1, `ggjt` v1-v3, and models
//! split into parts (`model.bin`, `model.bin.1`, ...). See DESIGN.md, "Legacy files".
//!
//! Layout: u32 magic (+ u32 version), seven i32 hyperparameters, the vocab (i32 length +
//! bytes, + f32 score except in `ggml`), then tensors until the end of the file: i32 n_dims,
//! i32 name length, i32 type, i32 ne[n_dims], the name, (ggjt: padding to 32 bytes), data.
//!
//! Blocks: f32 and f16 are used in place. Quantized blocks of ggml/ggmf/ggjt v1 hold their
//! nibbles in the old order (byte j = weights 2j, 2j+1); they are repacked at load into
//! today's order, keeping their f32 scales (types `Q4_0F32`, `Q4_1F32`, `Q8_0F32`, with
//! kernels of their own: see quant/legacy.rs for why not f16). ggjt v2 blocks are already in
//! today's order (f32 scales) and ggjt v3 blocks are today's blocks: both used in place.

use crate::error::{format_err, Error, Result};
use crate::gguf::{ggml_type_name, map_file, Value};
use crate::model::{Config, Storage, Weight};
use crate::quant::GgmlType;
use crate::tokenizer::Tokenizer;
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC_GGML: u32 = 0x6767_6d6c;
pub const MAGIC_GGMF: u32 = 0x6767_6d66;
pub const MAGIC_GGJT: u32 = 0x6767_6a74;

/// The RMSNorm epsilon the programs of that time used (it is not stored in the files).
pub const LEGACY_RMS_EPS: f32 = 1e-6;
/// Most parts a model was ever split into (65B: 8).
const MAX_PARTS: usize = 64;

/// Whether the first bytes of a file are a legacy magic.
pub fn is_legacy_magic(head: &[u8]) -> bool {
    head.len() >= 4 && matches!(u32::from_le_bytes(head[..4].try_into().unwrap()), MAGIC_GGML | MAGIC_GGMF | MAGIC_GGJT)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ggml,
    Ggmf(u32),
    Ggjt(u32),
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ggml => "ggml",
            Format::Ggmf(_) => "ggmf",
            Format::Ggjt(_) => "ggjt",
        }
    }
    /// 0 for the unversioned ggml files.
    pub fn version(self) -> u32 {
        match self {
            Format::Ggml => 0,
            Format::Ggmf(v) | Format::Ggjt(v) => v,
        }
    }
    fn has_scores(self) -> bool {
        !matches!(self, Format::Ggml)
    }
    fn aligned(self) -> bool {
        matches!(self, Format::Ggjt(_))
    }
    /// Quantized blocks with the old nibble order (weights 2j, 2j+1 in byte j).
    fn old_nibbles(self) -> bool {
        matches!(self, Format::Ggml | Format::Ggmf(_) | Format::Ggjt(1))
    }
    /// Quantized blocks with f16 scales (today's blocks).
    fn f16_scales(self) -> bool {
        matches!(self, Format::Ggjt(v) if v >= 3)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_mult: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub n_rot: usize,
    pub ftype: i32,
}

impl Hparams {
    pub fn n_ff(&self) -> usize {
        (2 * (4 * self.n_embd) / 3).div_ceil(self.n_mult) * self.n_mult
    }
}

/// How a 2-D tensor is divided among the parts of a multi-part model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Whole in every part (1-D tensors), or a single-part model.
    Whole,
    /// Each part holds a slice of every row (`ne[0]` divided): tok_embeddings, wo, w2.
    Columns,
    /// Each part holds whole rows (`ne[1]` divided): the others.
    Rows,
}

#[derive(Clone, Debug)]
pub struct LegacyTensor {
    pub name: String,
    /// The type id in the file (0 f32, 1 f16, 2 q4_0, 3 q4_1, 7 q8_0).
    pub raw_type: u32,
    /// Shape of the whole tensor (the parts joined), ggml order.
    pub ne: Vec<u64>,
    pub split: Split,
    /// Absolute byte range of the data in each part.
    pub ranges: Vec<Range<usize>>,
}

impl LegacyTensor {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
    /// Name of the stored type ("Q4_0", ...).
    pub fn type_name(&self) -> String {
        raw_type_name(self.raw_type)
    }
    pub fn n_bytes(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

pub fn raw_type_name(id: u32) -> String {
    match id {
        0 => "F32".into(),
        1 => "F16".into(),
        2 => "Q4_0".into(),
        3 => "Q4_1".into(),
        7 => "Q8_0".into(),
        4 => "Q4_2".into(),
        5 => "Q4_3".into(),
        8 => "Q5_0".into(),
        9 => "Q5_1".into(),
        _ => ggml_type_name(id),
    }
}

/// A legacy model: every part mapped, tensors described across the parts.
pub struct LegacyFile {
    pub paths: Vec<PathBuf>,
    pub maps: Vec<Arc<Mmap>>,
    pub format: Format,
    pub hparams: Hparams,
    /// Vocab entries as stored: bytes (spaces as spaces, byte tokens as the raw byte), score.
    pub vocab: Vec<(Vec<u8>, f32)>,
    pub tensors: Vec<LegacyTensor>,
    index: HashMap<String, usize>,
}

/// One part as parsed: the header, and the tensors with their shape in this part.
struct Part {
    format: Format,
    hparams: Hparams,
    vocab: Vec<(Vec<u8>, f32)>,
    tensors: Vec<(String, u32, Vec<u64>, Range<usize>)>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: &str) -> Result<T> {
        format_err(format!("{}: {} (at byte {})", self.path.display(), what, self.pos))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return self.err(&format!("file is truncated while reading {what}"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
}

/// Bytes per block and elements per block of a stored type in a given format.
fn block_layout(format: Format, raw_type: u32) -> Option<(usize, usize)> {
    let v3 = format.f16_scales();
    Some(match raw_type {
        0 => (4, 1),
        1 => (2, 1),
        2 => (if v3 { 18 } else { 20 }, 32),
        3 => (if v3 { 20 } else { 24 }, 32),
        7 => (if v3 { 34 } else { 36 }, 32),
        _ => return None,
    })
}

fn parse_part(path: &Path, buf: &[u8]) -> Result<Part> {
    let shown = path.display();
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.u32("the magic number")?;
    let format = match magic {
        MAGIC_GGML => Format::Ggml,
        MAGIC_GGMF | MAGIC_GGJT => {
            let v = c.u32("the version")?;
            let ok = if magic == MAGIC_GGMF { v == 1 } else { (1..=3).contains(&v) };
            let f = if magic == MAGIC_GGMF { Format::Ggmf(v) } else { Format::Ggjt(v) };
            if !ok {
                return format_err(format!(
                    "{shown}: unsupported legacy file version: {} v{v} (llama-rs reads ggml, ggmf v1 and ggjt v1 to v3)",
                    f.name()
                ));
            }
            f
        }
        _ => return format_err(format!("{shown}: not a ggml, ggmf or ggjt model file (magic {magic:#010x})")),
    };
    let mut h = [0i32; 7];
    let names = ["n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype"];
    for (v, n) in h.iter_mut().zip(names) {
        *v = c.i32(&format!("the header ({n})"))?;
    }
    for (i, n) in names.iter().enumerate().take(6) {
        if h[i] <= 0 || h[i] > (1 << 24) {
            return format_err(format!("{shown}: header value {n} = {} is not a sensible positive count", h[i]));
        }
    }
    let hparams = Hparams {
        n_vocab: h[0] as usize,
        n_embd: h[1] as usize,
        n_mult: h[2] as usize,
        n_head: h[3] as usize,
        n_layer: h[4] as usize,
        n_rot: h[5] as usize,
        ftype: h[6],
    };
    let entry = if format.has_scores() { 8 } else { 4 };
    if hparams.n_vocab.saturating_mul(entry) > c.remaining() {
        return c.err(&format!("vocab of {} entries is larger than the file can hold", hparams.n_vocab));
    }
    let mut vocab = Vec::with_capacity(hparams.n_vocab);
    for i in 0..hparams.n_vocab {
        let len = c.i32(&format!("the length of vocab entry {i}"))?;
        if len < 0 || len as usize > c.remaining() {
            return c.err(&format!("vocab entry {i} has an impossible length {len}"));
        }
        let text = c.take(len as usize, &format!("vocab entry {i}"))?.to_vec();
        let score = if format.has_scores() { c.f32(&format!("the score of vocab entry {i}"))? } else { 0.0 };
        vocab.push((text, score));
    }
    let mut tensors = Vec::new();
    while c.remaining() > 0 {
        let n_dims = c.i32("a tensor header")?;
        let name_len = c.i32("a tensor header")?;
        let raw_type = c.i32("a tensor header")?;
        if !(1..=4).contains(&n_dims) {
            return c.err(&format!("tensor {} has {n_dims} dimensions (1 to 4 allowed)", tensors.len()));
        }
        if name_len <= 0 || name_len > 4096 {
            return c.err(&format!("tensor {} has an impossible name length {name_len}", tensors.len()));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.i32("a tensor shape")?;
            if d <= 0 {
                return c.err(&format!("tensor {} has a dimension of {d}", tensors.len()));
            }
            ne.push(d as u64);
        }
        let name = String::from_utf8_lossy(c.take(name_len as usize, "a tensor name")?).into_owned();
        let Some((bb, bs)) = block_layout(format, raw_type as u32) else {
            return c.err(&format!(
                "tensor {name:?} has type {} which llama-rs does not read (legacy files: F32, F16, Q4_0, Q4_1, Q8_0)",
                raw_type_name(raw_type as u32)
            ));
        };
        if format.aligned() {
            let pad = (32 - c.pos % 32) % 32;
            c.take(pad, &format!("the padding before tensor {name:?}"))?;
        }
        if ne[0] % bs as u64 != 0 {
            return c.err(&format!("tensor {name:?} has rows of {} elements, not a multiple of the block size {bs}", ne[0]));
        }
        let n: u64 = ne.iter().product(); // each dim < 2^31, at most 4 dims: fits with checks below
        let n_bytes = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).and_then(|n| (n / bs as u64).checked_mul(bb as u64));
        let Some(n_bytes) = n_bytes.filter(|&b| b <= c.remaining() as u64) else {
            return c.err(&format!(
                "data of tensor {name:?} ({n} elements of {}) runs past the end of the file: the file is truncated or corrupt",
                raw_type_name(raw_type as u32)
            ));
        };
        let start = c.pos;
        c.take(n_bytes as usize, "tensor data")?;
        tensors.push((name, raw_type as u32, ne, start..c.pos));
    }
    Ok(Part { format, hparams, vocab, tensors })
}

fn split_of(name: &str, n_dims: usize, n_parts: usize) -> Split {
    if n_dims == 1 || n_parts == 1 {
        Split::Whole
    } else if name.contains("tok_embeddings") || name.contains(".attention.wo.") || name.contains(".feed_forward.w2.") {
        Split::Columns
    } else {
        Split::Rows
    }
}

/// `path` with `.k` appended (the k-th part).
fn part_path(path: &Path, k: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

impl LegacyFile {
    /// Open a legacy model; further parts (`path.1`, `path.2`, ...) are found beside it.
    pub fn open(path: impl AsRef<Path>) -> Result<LegacyFile> {
        let path = path.as_ref();
        let shown = path.display();
        let map0 = Arc::new(map_file(path)?);
        let first = parse_part(path, &map0)?;
        // How many parts: the embedding's row length in this part against n_embd.
        let n_parts = match first.tensors.iter().find(|t| t.0 == "tok_embeddings.weight") {
            Some((_, _, ne, _)) if ne.len() == 2 => {
                let part_cols = ne[0] as usize;
                if part_cols == 0 || first.hparams.n_embd % part_cols != 0 || first.hparams.n_embd / part_cols > MAX_PARTS {
                    return format_err(format!(
                        "{shown}: tok_embeddings.weight has rows of {part_cols}, which does not divide n_embd {}",
                        first.hparams.n_embd
                    ));
                }
                first.hparams.n_embd / part_cols
            }
            _ => return format_err(format!("{shown}: tensor tok_embeddings.weight is missing or not 2-D")),
        };
        if n_parts > 1 {
            if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                if ext.parse::<usize>().is_ok() {
                    return format_err(format!(
                        "{shown}: this is a later part of a multi-part model; open its first part (the file without .{ext})"
                    ));
                }
            }
        }
        let mut paths = vec![path.to_path_buf()];
        let mut maps = vec![map0];
        let mut parts = vec![first];
        for k in 1..n_parts {
            let p = part_path(path, k);
            if !p.exists() {
                return Err(Error::Io(format!(
                    "{}: part {} of {n_parts} is missing (the parts of {shown} hold 1/{n_parts} of each tensor)",
                    p.display(),
                    k + 1
                )));
            }
            let m = Arc::new(map_file(&p)?);
            let part = parse_part(&p, &m)?;
            let ps = p.display();
            let f = &parts[0];
            if part.format != f.format || part.hparams != f.hparams {
                return format_err(format!("{ps}: header differs from the first part {shown}: not parts of the same model"));
            }
            if part.vocab != f.vocab {
                return format_err(format!("{ps}: vocab differs from the first part {shown}: not parts of the same model"));
            }
            if part.tensors.len() != f.tensors.len()
                || part.tensors.iter().zip(&f.tensors).any(|(a, b)| a.0 != b.0 || a.1 != b.1 || a.2 != b.2)
            {
                return format_err(format!(
                    "{ps}: its tensors (names, types or shapes) differ from those of the first part {shown}"
                ));
            }
            paths.push(p);
            maps.push(m);
            parts.push(part);
        }
        let first = &parts[0];
        let mut tensors = Vec::with_capacity(first.tensors.len());
        let mut index = HashMap::new();
        for (i, (name, raw_type, ne, _)) in first.tensors.iter().enumerate() {
            let split = split_of(name, ne.len(), n_parts);
            let mut full = ne.clone();
            match split {
                Split::Whole => {}
                Split::Columns => full[0] *= n_parts as u64,
                Split::Rows => full[1] *= n_parts as u64,
            }
            let ranges = parts.iter().map(|p| p.tensors[i].3.clone()).collect();
            if index.insert(name.clone(), tensors.len()).is_some() {
                return format_err(format!("{shown}: tensor {name:?} appears twice"));
            }
            tensors.push(LegacyTensor { name: name.clone(), raw_type: *raw_type, ne: full, split, ranges });
        }
        Ok(LegacyFile {
            paths,
            maps,
            format: first.format,
            hparams: first.hparams,
            vocab: parts.swap_remove(0).vocab,
            tensors,
            index,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&LegacyTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn total_size(&self) -> u64 {
        self.maps.iter().map(|m| m.len() as u64).sum()
    }

    /// The type the engine computes with for a stored type of this file.
    fn load_type(&self, raw_type: u32) -> GgmlType {
        let v3 = self.format.f16_scales();
        match (raw_type, v3) {
            (0, _) => GgmlType::F32,
            (1, _) => GgmlType::F16,
            (2, true) => GgmlType::Q4_0,
            (3, true) => GgmlType::Q4_1,
            (7, true) => GgmlType::Q8_0,
            (2, false) => GgmlType::Q4_0F32,
            (3, false) => GgmlType::Q4_1F32,
            (7, false) => GgmlType::Q8_0F32,
            _ => unreachable!("checked at parse"),
        }
    }

    /// A tensor as a weight the engine can use: in place when it can be, else joined from
    /// its parts and/or with its nibbles repacked into today's order.
    pub fn weight(&self, t: &LegacyTensor) -> Weight {
        let ty = self.load_type(t.raw_type);
        let cols = t.ne[0] as usize;
        let rows = (t.n_elements() / t.ne[0]) as usize;
        let repack = ty.is_quantized() && self.format.old_nibbles() && t.raw_type != 7;
        let data = if t.ranges.len() == 1 && !repack {
            Storage::Mapped(self.maps[0].clone(), t.ranges[0].clone())
        } else {
            let mut bytes = self.join_parts(t, ty);
            if repack {
                repack_nibbles(&mut bytes, ty);
            }
            Storage::Owned(bytes)
        };
        Weight { name: t.name.clone(), ty, rows, cols, data }
    }

    fn join_parts(&self, t: &LegacyTensor, ty: GgmlType) -> Vec<u8> {
        let parts: Vec<&[u8]> = t.ranges.iter().zip(&self.maps).map(|(r, m)| &m[r.clone()]).collect();
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
}

/// Old nibble order (byte j = weights 2j low, 2j+1 high) to today's (byte j = weights j, j+16).
fn repack_nibbles(bytes: &mut [u8], ty: GgmlType) {
    let head = match ty {
        GgmlType::Q4_0F32 => 4,
        GgmlType::Q4_1F32 => 8,
        _ => return,
    };
    bytes.par_chunks_mut(ty.type_size() * 1024).for_each(|chunk| {
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
    });
}

/// Tensor names: Meta's (legacy files) for GGUF's (the engine's).
pub fn meta_name(gguf: &str) -> Option<String> {
    let simple = [("token_embd.weight", "tok_embeddings.weight"), ("output_norm.weight", "norm.weight"), ("output.weight", "output.weight")];
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

impl LegacyFile {
    /// The vocab as a tokenizer: spaces back to `▁`, byte tokens to `<0xXX>`, the empty
    /// control pieces to `<s>` / `</s>`, the unknown piece (" ⁇ ") to `<unk>`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let v = &self.vocab;
        let n = v.len();
        // Byte fallback vocab: ids 3..=258 are the bytes 0..=255 in order.
        let bytes_at_3 = n >= 259 && (0..256).all(|b| v[3 + b].0 == [b as u8]);
        let mut tokens = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for (i, (text, _)) in v.iter().enumerate() {
            let (piece, ty) = if bytes_at_3 && (3..259).contains(&i) {
                (format!("<0x{:02X}>", i - 3), 6)
            } else if i == 0 && (text.as_slice() == " \u{2047} ".as_bytes() || text.is_empty()) {
                ("<unk>".to_string(), 2)
            } else if text.is_empty() {
                (match i {
                    1 => "<s>".to_string(),
                    2 => "</s>".to_string(),
                    _ => format!("<ctrl{i}>"),
                }, 3)
            } else {
                (String::from_utf8_lossy(text).replace(' ', "\u{2581}"), 1)
            };
            tokens.push(piece);
            types.push(ty);
        }
        // ggml (unversioned) stores no scores: rank order stands in for the BPE merge scores.
        let scores: Vec<f32> = if self.format.has_scores() {
            v.iter().map(|e| e.1).collect()
        } else {
            (0..n).map(|i| -(i as f32)).collect()
        };
        let id = |i: u32| Some(i).filter(|&i| (i as usize) < n);
        Tokenizer::new(tokens, scores, types, id(1), id(2), id(0), true, false)
            .map_err(|e| Error::Format(format!("{}: {e}", self.paths[0].display())))
    }

    pub fn config(&self, n_vocab: usize) -> Result<Config> {
        let h = &self.hparams;
        let shown = self.paths[0].display();
        if h.n_embd % h.n_head != 0 || h.n_layer > 4096 {
            return format_err(format!("{shown}: inconsistent header: n_embd {} with {} heads", h.n_embd, h.n_head));
        }
        let head_dim = h.n_embd / h.n_head;
        if h.n_rot > head_dim || h.n_rot % 2 != 0 {
            return format_err(format!("{shown}: n_rot {} does not fit head size {head_dim}", h.n_rot));
        }
        Ok(Config {
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
        })
    }

    /// GGUF-style metadata describing the file (for `Model.metadata` and `info`).
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let h = &self.hparams;
        let u = |x: usize| Value::U32(x as u32);
        vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("legacy.format".into(), Value::String(self.format.name().into())),
            ("legacy.version".into(), Value::U32(self.format.version())),
            ("legacy.n_parts".into(), u(self.paths.len())),
            ("legacy.n_mult".into(), u(h.n_mult)),
            ("legacy.ftype".into(), Value::I32(h.ftype)),
            ("llama.embedding_length".into(), u(h.n_embd)),
            ("llama.block_count".into(), u(h.n_layer)),
            ("llama.feed_forward_length".into(), u(h.n_ff())),
            ("llama.rope.dimension_count".into(), u(h.n_rot)),
            ("llama.attention.head_count".into(), u(h.n_head)),
            ("llama.attention.head_count_kv".into(), u(h.n_head)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(LEGACY_RMS_EPS)),
            ("general.file_type".into(), Value::U32(h.ftype.max(0) as u32)),
        ]
    }
}
