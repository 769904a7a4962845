//! Pre-GGUF model files, read only: unversioned `ggml`, `ggmf` v1, `ggjt` v1-v3, and models
//! split into parts (`model.bin`, `model.bin.1`, ...). See DESIGN.md, "Legacy files".
//!
//! Layout: u32 magic (+ u32 version), seven i32 hyperparameters, the vocab (i32 length +
//! bytes, + f32 score except in `ggml`), then tensors until the end of the file: i32 n_dims,
//! i32 name length, i32 type, i32 ne[n_dims], the name, (ggjt: padding to 32 bytes), data.
//!
//! A pure reader, like `gguf.rs`: it describes what the file holds and where (every count,
//! length and range checked against the file size). Turning that into engine weights, config
//! and tokenizer (block repacking, joining parts, names) is `load.rs`'s job.

use crate::bytes::{map_file, Reader};
use crate::error::{format_err, Error, Result};
use crate::gguf::ggml_type_name;
use memmap2::Mmap;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC_GGML: u32 = 0x6767_6d6c;
pub const MAGIC_GGMF: u32 = 0x6767_6d66;
pub const MAGIC_GGJT: u32 = 0x6767_6a74;

/// Most parts a model was ever split into (65B: 8).
const MAX_PARTS: usize = 64;

/// Whether the first bytes of a file are a legacy magic.
pub fn is_legacy_magic(head: &[u8]) -> bool {
    head.len() >= 4
        && matches!(
            u32::from_le_bytes(head[..4].try_into().unwrap()),
            MAGIC_GGML | MAGIC_GGMF | MAGIC_GGJT
        )
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
    /// Vocab entries carry a score (all but unversioned ggml).
    pub fn has_scores(self) -> bool {
        !matches!(self, Format::Ggml)
    }
    fn aligned(self) -> bool {
        matches!(self, Format::Ggjt(_))
    }
    /// Quantized blocks with the old nibble order (weights 2j, 2j+1 in byte j).
    pub fn old_nibbles(self) -> bool {
        matches!(self, Format::Ggml | Format::Ggmf(_) | Format::Ggjt(1))
    }
    /// Quantized blocks with f16 scales (today's blocks).
    pub fn f16_scales(self) -> bool {
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
    pub ty: StoredType,
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
        self.ty.name().to_string()
    }
    pub fn n_bytes(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

/// The tensor types legacy files hold that llama-rs reads (the file's type id in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl StoredType {
    pub fn from_id(id: u32) -> Option<StoredType> {
        Some(match id {
            0 => StoredType::F32,
            1 => StoredType::F16,
            2 => StoredType::Q4_0,
            3 => StoredType::Q4_1,
            7 => StoredType::Q8_0,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            StoredType::F32 => "F32",
            StoredType::F16 => "F16",
            StoredType::Q4_0 => "Q4_0",
            StoredType::Q4_1 => "Q4_1",
            StoredType::Q8_0 => "Q8_0",
        }
    }

    /// Bytes per block and elements per block in a file of `format` (f32 scales before
    /// ggjt v3, f16 from it on).
    fn block_layout(self, format: Format) -> (usize, usize) {
        let v3 = format.f16_scales();
        match self {
            StoredType::F32 => (4, 1),
            StoredType::F16 => (2, 1),
            StoredType::Q4_0 => (if v3 { 18 } else { 20 }, 32),
            StoredType::Q4_1 => (if v3 { 20 } else { 24 }, 32),
            StoredType::Q8_0 => (if v3 { 34 } else { 36 }, 32),
        }
    }
}

/// Name of any type id a legacy file may hold (for the error about one we do not read).
pub fn raw_type_name(id: u32) -> String {
    if let Some(t) = StoredType::from_id(id) {
        return t.name().into();
    }
    match id {
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
    tensors: Vec<PartTensor>,
}

/// A tensor as one part holds it: its shape in this part and its absolute byte range.
struct PartTensor {
    name: String,
    ty: StoredType,
    ne: Vec<u64>,
    range: Range<usize>,
}

fn parse_part(path: &Path, buf: &[u8]) -> Result<Part> {
    let mut r = Reader::new(buf, path);
    let format = read_format(&mut r)?;
    let hparams = read_hparams(&mut r)?;
    let vocab = read_vocab(&mut r, format, hparams.n_vocab)?;
    let mut tensors = Vec::new();
    while r.remaining() > 0 {
        tensors.push(read_tensor(&mut r, format, tensors.len())?);
    }
    Ok(Part {
        format,
        hparams,
        vocab,
        tensors,
    })
}

/// Magic and (except for unversioned ggml) version.
fn read_format(r: &mut Reader) -> Result<Format> {
    let magic = r.u32("the magic number")?;
    match magic {
        MAGIC_GGML => Ok(Format::Ggml),
        MAGIC_GGMF | MAGIC_GGJT => {
            let v = r.u32("the version")?;
            let ok = if magic == MAGIC_GGMF {
                v == 1
            } else {
                (1..=3).contains(&v)
            };
            let f = if magic == MAGIC_GGMF {
                Format::Ggmf(v)
            } else {
                Format::Ggjt(v)
            };
            if !ok {
                return r.err_file(&format!(
                    "unsupported legacy file version: {} v{v} (llama-rs reads ggml, ggmf v1 and ggjt v1 to v3)",
                    f.name()
                ));
            }
            Ok(f)
        }
        _ => r.err_file(&format!(
            "not a ggml, ggmf or ggjt model file (magic {magic:#010x})"
        )),
    }
}

fn read_hparams(r: &mut Reader) -> Result<Hparams> {
    let mut h = [0i32; 7];
    let names = [
        "n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype",
    ];
    for (v, n) in h.iter_mut().zip(names) {
        *v = r.i32(&format!("the header ({n})"))?;
    }
    for (i, n) in names.iter().enumerate().take(6) {
        if h[i] <= 0 || h[i] > (1 << 24) {
            return r.err_file(&format!(
                "header value {n} = {} is not a sensible positive count",
                h[i]
            ));
        }
    }
    Ok(Hparams {
        n_vocab: h[0] as usize,
        n_embd: h[1] as usize,
        n_mult: h[2] as usize,
        n_head: h[3] as usize,
        n_layer: h[4] as usize,
        n_rot: h[5] as usize,
        ftype: h[6],
    })
}

/// `n_vocab` entries of i32 length + bytes (+ f32 score when the format has scores).
fn read_vocab(r: &mut Reader, format: Format, n_vocab: usize) -> Result<Vec<(Vec<u8>, f32)>> {
    let entry = if format.has_scores() { 8 } else { 4 };
    if n_vocab.saturating_mul(entry) > r.remaining() {
        return r.err(&format!(
            "vocab of {n_vocab} entries is larger than the file can hold"
        ));
    }
    let mut vocab = Vec::with_capacity(n_vocab);
    for i in 0..n_vocab {
        let len = r.i32(&format!("the length of vocab entry {i}"))?;
        if len < 0 || len as usize > r.remaining() {
            return r.err(&format!("vocab entry {i} has an impossible length {len}"));
        }
        let text = r.take(len as u64, &format!("vocab entry {i}"))?.to_vec();
        let score = if format.has_scores() {
            r.f32(&format!("the score of vocab entry {i}"))?
        } else {
            0.0
        };
        vocab.push((text, score));
    }
    Ok(vocab)
}

/// One tensor header and the range of its data (the `i`-th tensor of the part).
fn read_tensor(r: &mut Reader, format: Format, i: usize) -> Result<PartTensor> {
    let n_dims = r.i32("a tensor header")?;
    let name_len = r.i32("a tensor header")?;
    let raw_type = r.i32("a tensor header")? as u32;
    if !(1..=4).contains(&n_dims) {
        return r.err(&format!(
            "tensor {i} has {n_dims} dimensions (1 to 4 allowed)"
        ));
    }
    if name_len <= 0 || name_len > 4096 {
        return r.err(&format!(
            "tensor {i} has an impossible name length {name_len}"
        ));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = r.i32("a tensor shape")?;
        if d <= 0 {
            return r.err(&format!("tensor {i} has a dimension of {d}"));
        }
        ne.push(d as u64);
    }
    let name = String::from_utf8_lossy(r.take(name_len as u64, "a tensor name")?).into_owned();
    let Some(ty) = StoredType::from_id(raw_type) else {
        return r.err(&format!(
            "tensor {name:?} has type {} which llama-rs does not read (legacy files: F32, F16, Q4_0, Q4_1, Q8_0)",
            raw_type_name(raw_type)
        ));
    };
    let (bb, bs) = ty.block_layout(format);
    if format.aligned() {
        let pad = (32 - r.pos() % 32) % 32;
        r.take(pad as u64, &format!("the padding before tensor {name:?}"))?;
    }
    if !ne[0].is_multiple_of(bs as u64) {
        return r.err(&format!(
            "tensor {name:?} has rows of {} elements, not a multiple of the block size {bs}",
            ne[0]
        ));
    }
    let n: u64 = ne.iter().product(); // each dim < 2^31, at most 4 dims: fits with checks below
    let n_bytes = ne
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| (n / bs as u64).checked_mul(bb as u64));
    let Some(n_bytes) = n_bytes.filter(|&b| b <= r.remaining() as u64) else {
        return r.err(&format!(
            "data of tensor {name:?} ({n} elements of {}) runs past the end of the file: the file is truncated or corrupt",
            ty.name()
        ));
    };
    let start = r.pos();
    r.take(n_bytes, "tensor data")?;
    Ok(PartTensor {
        name,
        ty,
        ne,
        range: start..r.pos(),
    })
}

fn split_of(name: &str, n_dims: usize, n_parts: usize) -> Split {
    if n_dims == 1 || n_parts == 1 {
        Split::Whole
    } else if name.contains("tok_embeddings")
        || name.contains(".attention.wo.")
        || name.contains(".feed_forward.w2.")
    {
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

/// How many parts the model is split into: n_embd over the embedding's row length in the
/// first part. Refuses a later part opened on its own.
fn count_parts(path: &Path, first: &Part) -> Result<usize> {
    let shown = path.display();
    let n_embd = first.hparams.n_embd;
    let n_parts = match first
        .tensors
        .iter()
        .find(|t| t.name == "tok_embeddings.weight")
    {
        Some(PartTensor { ne, .. }) if ne.len() == 2 => {
            let part_cols = ne[0] as usize;
            if part_cols == 0 || !n_embd.is_multiple_of(part_cols) || n_embd / part_cols > MAX_PARTS
            {
                return format_err(format!(
                    "{shown}: tok_embeddings.weight has rows of {part_cols}, which does not divide n_embd {n_embd}"
                ));
            }
            n_embd / part_cols
        }
        _ => {
            return format_err(format!(
                "{shown}: tensor tok_embeddings.weight is missing or not 2-D"
            ))
        }
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
    Ok(n_parts)
}

/// Map and parse part `k` (from 0) of `n_parts`, which must match the first part in header,
/// vocab and tensor names, types and shapes.
fn open_part(
    path: &Path,
    k: usize,
    n_parts: usize,
    first: &Part,
) -> Result<(PathBuf, Arc<Mmap>, Part)> {
    let shown = path.display();
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
    if part.format != first.format || part.hparams != first.hparams {
        return format_err(format!(
            "{ps}: header differs from the first part {shown}: not parts of the same model"
        ));
    }
    if part.vocab != first.vocab {
        return format_err(format!(
            "{ps}: vocab differs from the first part {shown}: not parts of the same model"
        ));
    }
    if part.tensors.len() != first.tensors.len()
        || part
            .tensors
            .iter()
            .zip(&first.tensors)
            .any(|(a, b)| a.name != b.name || a.ty != b.ty || a.ne != b.ne)
    {
        return format_err(format!("{ps}: its tensors (names, types or shapes) differ from those of the first part {shown}"));
    }
    Ok((p, m, part))
}

/// The tensors of the whole model: shapes of the parts joined, one range per part.
fn join_tensors(
    path: &Path,
    parts: &[Part],
) -> Result<(Vec<LegacyTensor>, HashMap<String, usize>)> {
    let n_parts = parts.len();
    let mut tensors = Vec::with_capacity(parts[0].tensors.len());
    let mut index = HashMap::new();
    for (i, PartTensor { name, ty, ne, .. }) in parts[0].tensors.iter().enumerate() {
        let split = split_of(name, ne.len(), n_parts);
        let mut full = ne.clone();
        match split {
            Split::Whole => {}
            Split::Columns => full[0] *= n_parts as u64,
            Split::Rows => full[1] *= n_parts as u64,
        }
        let ranges = parts.iter().map(|p| p.tensors[i].range.clone()).collect();
        if index.insert(name.clone(), tensors.len()).is_some() {
            return format_err(format!("{}: tensor {name:?} appears twice", path.display()));
        }
        tensors.push(LegacyTensor {
            name: name.clone(),
            ty: *ty,
            ne: full,
            split,
            ranges,
        });
    }
    Ok((tensors, index))
}

impl LegacyFile {
    /// Open a legacy model; further parts (`path.1`, `path.2`, ...) are found beside it.
    pub fn open(path: impl AsRef<Path>) -> Result<LegacyFile> {
        let path = path.as_ref();
        let map0 = Arc::new(map_file(path)?);
        let first = parse_part(path, &map0)?;
        let n_parts = count_parts(path, &first)?;
        let mut paths = vec![path.to_path_buf()];
        let mut maps = vec![map0];
        let mut parts = vec![first];
        for k in 1..n_parts {
            let (p, m, part) = open_part(path, k, n_parts, &parts[0])?;
            paths.push(p);
            maps.push(m);
            parts.push(part);
        }
        let (tensors, index) = join_tensors(path, &parts)?;
        let first = parts.swap_remove(0);
        Ok(LegacyFile {
            paths,
            maps,
            format: first.format,
            hparams: first.hparams,
            vocab: first.vocab,
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

    /// The bytes of a tensor in each part, in part order.
    pub fn part_bytes(&self, t: &LegacyTensor) -> Vec<&[u8]> {
        t.ranges
            .iter()
            .zip(&self.maps)
            .map(|(r, m)| &m[r.clone()])
            .collect()
    }

    /// The first part's map (for tensors used in place).
    pub fn map(&self) -> &Arc<Mmap> {
        &self.maps[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ggjt v3 file: 2-piece vocab, a 4 x 2 f32 embedding and a 4-element norm.
    fn sample() -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::new();
        let i32s = |b: &mut Vec<u8>, xs: &[i32]| {
            xs.iter()
                .for_each(|x| b.extend_from_slice(&x.to_le_bytes()))
        };
        b.extend_from_slice(&MAGIC_GGJT.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        i32s(&mut b, &[2, 4, 1, 1, 1, 4, 0]);
        for piece in [&b"a"[..], b" b"] {
            i32s(&mut b, &[piece.len() as i32]);
            b.extend_from_slice(piece);
            b.extend_from_slice(&(-1.5f32).to_le_bytes());
        }
        let mut ends = Vec::new();
        for (name, ne) in [
            ("tok_embeddings.weight", &[4, 2][..]),
            ("norm.weight", &[4][..]),
        ] {
            i32s(&mut b, &[ne.len() as i32, name.len() as i32, 0]);
            i32s(&mut b, ne);
            b.extend_from_slice(name.as_bytes());
            b.resize(b.len().next_multiple_of(32), 0);
            let n: i32 = ne.iter().product();
            b.extend((0..n * 4).map(|i| i as u8));
            ends.push(b.len());
        }
        (b, ends)
    }

    fn open_bytes(bytes: &[u8]) -> Result<LegacyFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "llama_rs_legacy_test_{}_{n}.bin",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        let r = LegacyFile::open(&path);
        std::fs::remove_file(&path).ok();
        r
    }

    #[test]
    fn reads_a_ggjt_file() {
        let (bytes, _) = sample();
        let f = open_bytes(&bytes).unwrap();
        assert_eq!(f.format, Format::Ggjt(3));
        assert_eq!(f.hparams.n_embd, 4);
        assert_eq!(f.vocab, vec![(b"a".to_vec(), -1.5), (b" b".to_vec(), -1.5)]);
        let t = f.tensor("tok_embeddings.weight").unwrap();
        assert_eq!(
            (t.ne.clone(), t.split, t.type_name()),
            (vec![4, 2], Split::Whole, "F32".to_string())
        );
        assert_eq!(f.part_bytes(t)[0], &(0..32u8).collect::<Vec<_>>()[..]);
        assert_eq!(t.ranges[0].start % 32, 0);
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_file() {
        let (bytes, ends) = sample();
        for n in 0..bytes.len() {
            match open_bytes(&bytes[..n]) {
                // Tensors run to the end of the file: a cut right after the first one leaves a
                // file that holds just that tensor.
                Ok(f) => assert!(
                    n == ends[0] && f.tensors.len() == 1,
                    "truncated at {n} loaded"
                ),
                Err(e) => assert!(matches!(e, Error::Format(_) | Error::Io(_)), "{e}"),
            }
        }
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let (mut bytes, _) = sample();
        bytes[8..12].copy_from_slice(&(1i32 << 24).to_le_bytes()); // n_vocab
        let e = open_bytes(&bytes).err().unwrap().to_string();
        assert!(e.contains("larger than the file can hold"), "{e}");
        let (mut bytes, _) = sample();
        bytes[8 + 28..8 + 32].copy_from_slice(&i32::MAX.to_le_bytes()); // first piece's length
        let e = open_bytes(&bytes).err().unwrap().to_string();
        assert!(e.contains("impossible length"), "{e}");
    }
}
