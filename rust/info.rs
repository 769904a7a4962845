//! What `llama-rs info` shows about a model file of any supported format, without loading
//! the weights: format and version, hyperparameters, vocab size, tensors.

use crate::bytes::read_head;
use crate::error::Result;
use crate::gguf::{GgufFile, Value};
use crate::legacy::{is_legacy_magic, LegacyFile};
use crate::load::legacy_metadata;
use std::path::{Path, PathBuf};

pub struct TensorRow {
    pub name: String,
    pub ty: String,
    /// ggml order (`dims[0]` = row length).
    pub dims: Vec<u64>,
    /// Byte offset of the data in the (first) file.
    pub offset: u64,
    pub n_bytes: u64,
}

pub struct FileInfo {
    pub paths: Vec<PathBuf>,
    /// "GGUF", "ggml", "ggmf" or "ggjt".
    pub format: String,
    /// 0 for unversioned ggml.
    pub version: u32,
    /// Total bytes of the file(s).
    pub size: u64,
    pub n_vocab: usize,
    /// Hyperparameters under GGUF's names without the architecture prefix.
    pub hparams: Vec<(String, Value)>,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorRow>,
}

const HPARAMS: [&str; 10] = [
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "rope.dimension_count",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "vocab_size",
];

pub fn file_info(path: &Path) -> Result<FileInfo> {
    if is_legacy_magic(&read_head(path)) {
        let f = LegacyFile::open(path)?;
        let metadata = legacy_metadata(&f);
        let hparams = pick(&metadata, "llama");
        let tensors = f
            .tensors
            .iter()
            .map(|t| TensorRow {
                name: t.name.clone(),
                ty: t.type_name(),
                dims: t.ne.clone(),
                offset: t.ranges[0].start as u64,
                n_bytes: t.n_bytes() as u64,
            })
            .collect();
        return Ok(FileInfo {
            paths: f.paths.clone(),
            format: f.format.name().into(),
            version: f.format.version(),
            size: f.total_size(),
            n_vocab: f.vocab.len(),
            hparams,
            metadata,
            tensors,
        });
    }
    let f = GgufFile::open(path)?;
    let arch = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("llama")
        .to_string();
    let n_vocab = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map_or(0, |a| a.len());
    let tensors = f
        .tensors
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            ty: t.ty.name().into(),
            dims: t.dims.clone(),
            offset: t.range.start as u64,
            n_bytes: t.range.len() as u64,
        })
        .collect();
    Ok(FileInfo {
        paths: vec![f.path.clone()],
        format: "GGUF".into(),
        version: f.version,
        size: f.mmap().len() as u64,
        n_vocab,
        hparams: pick(&f.metadata, &arch),
        metadata: f.metadata.clone(),
        tensors,
    })
}

fn pick(meta: &[(String, Value)], arch: &str) -> Vec<(String, Value)> {
    let mut out = vec![("architecture".to_string(), Value::String(arch.to_string()))];
    for k in HPARAMS {
        let key = format!("{arch}.{k}");
        if let Some((_, v)) = meta.iter().find(|(m, _)| *m == key) {
            out.push((k.to_string(), v.clone()));
        }
    }
    out
}
