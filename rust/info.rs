//! What `llama-rs info` shows about a model file of any supported format, without loading
//! the weights: format and version, hyperparameters, vocab size, tensors.

use crate::bytes::read_head;
use crate::error::Result;
use crate::gguf::{GgufFile, Value};
use crate::legacy::{is_legacy_magic, LegacyFile};
use crate::load::legacy_metadata;
use crate::quant_policy::FileType;
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

impl FileInfo {
    /// Elements of all tensors.
    pub fn n_elements(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum()
    }

    /// Bytes of all tensor data (padding between tensors not counted).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    /// Tensor bits per element: llama.cpp's "BPW" (0 for a file without tensors).
    pub fn bits_per_weight(&self) -> f64 {
        let n = self.n_elements();
        if n == 0 {
            return 0.0;
        }
        8.0 * self.tensor_bytes() as f64 / n as f64
    }

    /// (type, tensor count, elements) per tensor type, most elements first.
    pub fn types(&self) -> Vec<(String, usize, u64)> {
        let mut out: Vec<(String, usize, u64)> = vec![];
        for t in &self.tensors {
            let n: u64 = t.dims.iter().product();
            match out.iter_mut().find(|(ty, _, _)| *ty == t.ty) {
                Some(row) => {
                    row.1 += 1;
                    row.2 += n;
                }
                None => out.push((t.ty.clone(), 1, n)),
            }
        }
        out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// `general.file_type` as llama.cpp names it ("Q4_K_M"), when the file says and it is one
    /// llama-rs writes.
    pub fn file_type(&self) -> Option<&'static str> {
        let id = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.file_type")?
            .1
            .as_i64()?;
        FileType::from_id(u32::try_from(id).ok()?).map(|f| f.name())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, ty: &str, dims: Vec<u64>, n_bytes: u64) -> TensorRow {
        TensorRow {
            name: name.into(),
            ty: ty.into(),
            dims,
            offset: 0,
            n_bytes,
        }
    }

    #[test]
    fn bits_per_weight_and_types() {
        let info = FileInfo {
            paths: vec![],
            format: "GGUF".into(),
            version: 3,
            size: 0,
            n_vocab: 0,
            hparams: vec![],
            metadata: vec![("general.file_type".into(), Value::U32(15))],
            tensors: vec![
                row("a", "Q4_0", vec![64, 4], 4 * 2 * 18),
                row("b", "F32", vec![64], 256),
                row("c", "Q4_0", vec![32, 2], 2 * 18),
            ],
        };
        assert_eq!(info.n_elements(), 256 + 64 + 64);
        assert_eq!(info.tensor_bytes(), 144 + 256 + 36);
        assert_eq!(info.bits_per_weight(), 8.0 * 436.0 / 384.0);
        assert_eq!(
            info.types(),
            vec![("Q4_0".to_string(), 2, 320), ("F32".to_string(), 1, 64)]
        );
        assert_eq!(info.file_type(), Some("Q4_K_M"));
    }
}
