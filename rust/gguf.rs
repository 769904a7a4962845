//! GGUF files: read (v2, v3) over a memory map, write streaming.
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/values, the tensor infos (name, dims, type, offset), padding to `general.alignment`,
//! then the tensor data. Every count, length and offset is checked against the file size
//! before it is trusted, so a truncated or hostile file is an error, never a panic or a huge
//! allocation.

use crate::bytes::{map_file, Reader};
use crate::error::{format_err, Error, Result};
use crate::quant::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" read as little-endian u32
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: usize = 4;

/// The type tag of a metadata value, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Smallest number of bytes one value of this type takes in the file (bounds checks).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type (kept so that empty arrays round-trip) and the elements.
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value as i64 (u64 values above i64::MAX give None).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v as i64),
            Value::I8(v) => Some(v as i64),
            Value::U16(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::U32(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_i64().map(|v| v != 0),
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor as described in the header; `offset` is relative to the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (columns).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
    /// Absolute byte range of the data in the file (checked against the file size).
    pub range: Range<usize>,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file opened over a memory map. Tensor data is used in place.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    index: HashMap<String, usize>,
    meta_index: HashMap<String, usize>,
    mmap: Arc<Mmap>,
}

/// A string: u64 length, then that many bytes (checked against the rest of the file).
fn read_string(r: &mut Reader, what: &str) -> Result<String> {
    let len = r.u64(what)?;
    if len > r.remaining() as u64 {
        return r.err(&format!(
            "{what}: string length {len} runs past the end of the file"
        ));
    }
    // Lossy: a vocab piece that is not valid UTF-8 should not make the whole file unreadable.
    Ok(String::from_utf8_lossy(r.take(len, what)?).into_owned())
}

fn read_value(r: &mut Reader, ty: ValueType, what: &str, depth: usize) -> Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8(what)?),
        ValueType::I8 => Value::I8(r.u8(what)? as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(r.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.array(what)?)),
        ValueType::U32 => Value::U32(r.u32(what)?),
        ValueType::I32 => Value::I32(r.i32(what)?),
        ValueType::F32 => Value::F32(r.f32(what)?),
        ValueType::Bool => {
            let b = r.u8(what)?;
            if b > 1 {
                return r.err(&format!("{what}: bool value {b} is neither 0 nor 1"));
            }
            Value::Bool(b == 1)
        }
        ValueType::String => Value::String(read_string(r, what)?),
        ValueType::U64 => Value::U64(r.u64(what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.array(what)?)),
        ValueType::Array => {
            if depth > 2 {
                return r.err(&format!("{what}: arrays nested too deeply"));
            }
            let raw = r.u32(what)?;
            let Some(elem) = ValueType::from_id(raw) else {
                return r.err(&format!("{what}: unknown array element type {raw}"));
            };
            let n = r.u64(what)?;
            // Never allocate for more elements than the rest of the file could hold.
            if n.checked_mul(elem.min_size())
                .is_none_or(|b| b > r.remaining() as u64)
            {
                return r.err(&format!(
                    "{what}: array of {n} elements runs past the end of the file"
                ));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(r, elem, what, depth + 1)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// A tensor info as stored: name, dims, type, offset in the data section (not yet checked
/// against the file).
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let mmap = map_file(path)?;
        Self::parse(path, Arc::new(mmap))
    }

    fn parse(path: &Path, mmap: Arc<Mmap>) -> Result<GgufFile> {
        let mut r = Reader::new(&mmap, path);
        let (version, n_tensors, n_kv) = read_header(&mut r)?;
        let (metadata, meta_index) = read_metadata(&mut r, n_kv)?;
        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
                _ => {
                    return format_err(format!(
                        "{}: general.alignment {v:?} is not a power of two",
                        path.display()
                    ))
                }
            },
        };
        let raw = (0..n_tensors)
            .map(|i| read_tensor_info(&mut r, i))
            .collect::<Result<Vec<_>>>()?;
        let data_offset = align_up(r.pos() as u64, alignment);
        let mut tensors = Vec::with_capacity(raw.len());
        let mut index = HashMap::new();
        for t in raw {
            let t = place_tensor(path, t, data_offset, alignment, mmap.len() as u64)?;
            if index.insert(t.name.clone(), tensors.len()).is_some() {
                return format_err(format!(
                    "{}: tensor {:?} appears twice",
                    path.display(),
                    t.name
                ));
            }
            tensors.push(t);
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
            index,
            meta_index,
            mmap,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.range.clone()]
    }

    /// The shared map, so weights can borrow it for as long as the model lives.
    pub fn mmap(&self) -> Arc<Mmap> {
        self.mmap.clone()
    }
}

/// Magic, version, tensor count, metadata count (both counts checked against the file size).
fn read_header(r: &mut Reader) -> Result<(u32, u64, u64)> {
    let magic = r.u32("the magic number")?;
    if magic != GGUF_MAGIC {
        let shown: String = magic
            .to_le_bytes()
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        return r.err_file(&format!(
            "not a GGUF file (magic {shown:?}, expected \"GGUF\")"
        ));
    }
    let version = r.u32("the version")?;
    if version != 2 && version != 3 {
        return r.err_file(&format!(
            "unsupported GGUF version {version} (supported: 2 and 3)"
        ));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // Each key/value takes at least 12 bytes and each tensor info at least 24.
    if n_kv
        .checked_mul(12)
        .is_none_or(|b| b > r.remaining() as u64)
    {
        return r.err(&format!(
            "metadata count {n_kv} is larger than the file can hold"
        ));
    }
    if n_tensors
        .checked_mul(24)
        .is_none_or(|b| b > r.remaining() as u64)
    {
        return r.err(&format!(
            "tensor count {n_tensors} is larger than the file can hold"
        ));
    }
    Ok((version, n_tensors, n_kv))
}

type Metadata = (Vec<(String, Value)>, HashMap<String, usize>);

fn read_metadata(r: &mut Reader, n_kv: u64) -> Result<Metadata> {
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut index = HashMap::new();
    for i in 0..n_kv {
        let key = read_string(r, &format!("metadata key {i}"))?;
        let raw = r.u32(&format!("the type of metadata {key:?}"))?;
        let Some(ty) = ValueType::from_id(raw) else {
            return r.err(&format!("metadata {key:?} has unknown value type {raw}"));
        };
        let value = read_value(r, ty, &format!("metadata {key:?}"), 0)?;
        if index.insert(key.clone(), metadata.len()).is_some() {
            return r.err(&format!("metadata key {key:?} appears twice"));
        }
        metadata.push((key, value));
    }
    Ok((metadata, index))
}

fn read_tensor_info(r: &mut Reader, i: u64) -> Result<RawTensor> {
    let name = read_string(r, &format!("the name of tensor {i}"))?;
    let n_dims = r.u32(&format!("the dimension count of tensor {name:?}"))? as usize;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return r.err(&format!(
            "tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
        ));
    }
    let dims = (0..n_dims)
        .map(|_| r.u64(&format!("the shape of tensor {name:?}")))
        .collect::<Result<Vec<_>>>()?;
    let raw_ty = r.u32(&format!("the type of tensor {name:?}"))?;
    let Some(ty) = GgmlType::from_id(raw_ty) else {
        let known: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
        return r.err(&format!(
            "tensor {name:?} has type {} which llama-rs does not support (supported: {})",
            ggml_type_name(raw_ty),
            known.join(", ")
        ));
    };
    let offset = r.u64(&format!("the offset of tensor {name:?}"))?;
    Ok(RawTensor {
        name,
        dims,
        ty,
        offset,
    })
}

/// Check a tensor's shape, block fit, alignment and data range against the file.
fn place_tensor(
    path: &Path,
    t: RawTensor,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<TensorInfo> {
    let shown = path.display();
    let RawTensor {
        name,
        dims,
        ty,
        offset,
    } = t;
    let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let Some(n_elements) = n_elements.filter(|_| dims.iter().all(|&d| d > 0)) else {
        return format_err(format!(
            "{shown}: tensor {name:?} has an invalid shape {dims:?}"
        ));
    };
    if !dims[0].is_multiple_of(ty.block_size() as u64) {
        return format_err(format!(
            "{shown}: tensor {name:?} of type {} has rows of {} elements, not a multiple of the block size {}",
            ty.name(),
            dims[0],
            ty.block_size()
        ));
    }
    let n_bytes = (n_elements / ty.block_size() as u64).checked_mul(ty.type_size() as u64);
    let start = data_offset.checked_add(offset);
    let end = start.zip(n_bytes).and_then(|(s, n)| s.checked_add(n));
    match (start, end) {
        (Some(s), Some(e)) if e <= file_len => {
            if !offset.is_multiple_of(alignment) {
                return format_err(format!(
                    "{shown}: tensor {name:?} starts at offset {offset}, not a multiple of the alignment {alignment}"
                ));
            }
            Ok(TensorInfo { name, dims, ty, offset, range: s as usize..e as usize })
        }
        _ => format_err(format!(
            "{shown}: data of tensor {name:?} ({} bytes at offset {offset}) runs past the end of the file ({file_len} bytes): the file is truncated or corrupt",
            n_bytes.map_or("too many".to_string(), |n| n.to_string())
        )),
    }
}

pub fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Names of ggml types we do not run, so the error says what the file holds.
pub fn ggml_type_name(id: u32) -> String {
    let known = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    match known.get(id as usize) {
        Some(n) => format!("{n} (id {id})"),
        None => format!("id {id} (unknown)"),
    }
}

// ---------------------------------------------------------------------------------------
// Writer

/// What the header says about one tensor; its bytes follow later, in the same order.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn n_bytes(&self) -> Option<u64> {
        let n: u64 = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        if self.dims.is_empty() || !self.dims[0].is_multiple_of(self.ty.block_size() as u64) {
            return None;
        }
        (n / self.ty.block_size() as u64).checked_mul(self.ty.type_size() as u64)
    }
}

/// Streaming GGUF v3 writer: the header (metadata and tensor infos) goes out first, then
/// each tensor's bytes in order, so a converter never holds more than one tensor.
pub struct GgufWriter<W: Write> {
    out: W,
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    next: usize,
    alignment: u64,
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    pub fn new(mut out: W, metadata: &[(String, Value)], specs: Vec<TensorSpec>) -> Result<Self> {
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .map(|(_, v)| v.as_i64().unwrap_or(-1))
            .map_or(Ok(DEFAULT_ALIGNMENT), |a| {
                if a > 0 && (a as u64).is_power_of_two() {
                    Ok(a as u64)
                } else {
                    Err(Error::Invalid(format!(
                        "general.alignment {a} is not a power of two"
                    )))
                }
            })?;
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(specs.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_string(&mut head, k);
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut head, v)?;
        }
        let mut sizes = Vec::with_capacity(specs.len());
        let mut offset = 0u64;
        for s in &specs {
            let Some(n) = s.n_bytes() else {
                return Err(Error::Invalid(format!(
                    "tensor {:?}: shape {:?} does not fit type {}",
                    s.name,
                    s.dims,
                    s.ty.name()
                )));
            };
            if !s.ty.is_gguf() {
                return Err(Error::Invalid(format!(
                    "tensor {:?}: type {} cannot be stored in GGUF",
                    s.name,
                    s.ty.name()
                )));
            }
            if s.dims.len() > MAX_DIMS {
                return Err(Error::Invalid(format!(
                    "tensor {:?}: more than {MAX_DIMS} dimensions",
                    s.name
                )));
            }
            put_string(&mut head, &s.name);
            head.extend_from_slice(&(s.dims.len() as u32).to_le_bytes());
            for d in &s.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&s.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + n, alignment);
            sizes.push(n);
        }
        let padded = align_up(head.len() as u64, alignment);
        head.resize(padded as usize, 0);
        out.write_all(&head).map_err(io_err)?;
        Ok(GgufWriter {
            out,
            specs,
            sizes,
            next: 0,
            alignment,
            written: padded,
        })
    }

    /// Write the next tensor's bytes (exactly its size), padded to the alignment.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(spec) = self.specs.get(self.next) else {
            return Err(Error::Invalid("more tensors written than declared".into()));
        };
        if bytes.len() as u64 != self.sizes[self.next] {
            return Err(Error::Invalid(format!(
                "tensor {:?}: got {} bytes, expected {}",
                spec.name,
                bytes.len(),
                self.sizes[self.next]
            )));
        }
        self.out.write_all(bytes).map_err(io_err)?;
        self.written += bytes.len() as u64;
        let pad = align_up(self.written, self.alignment) - self.written;
        self.out
            .write_all(&vec![0u8; pad as usize])
            .map_err(io_err)?;
        self.written += pad;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        if self.next != self.specs.len() {
            return Err(Error::Invalid(format!(
                "only {} of {} tensors were written",
                self.next,
                self.specs.len()
            )));
        }
        self.out.flush().map_err(io_err)?;
        Ok(self.out)
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::Io(format!("write failed: {e}"))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                if it.value_type() != *elem {
                    return Err(Error::Invalid(format!(
                        "array of {elem:?} holds a {:?}",
                        it.value_type()
                    )));
                }
                put_value(out, it)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("a.u8".to_string(), Value::U8(7)),
            ("a.i64".to_string(), Value::I64(-5)),
            ("a.f64".to_string(), Value::F64(0.25)),
            (
                "a.arr".to_string(),
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
            ),
            (
                "a.empty".to_string(),
                Value::Array(ValueType::String, vec![]),
            ),
            ("a.bool".to_string(), Value::Bool(true)),
        ];
        let specs = vec![
            TensorSpec {
                name: "x".into(),
                dims: vec![3, 2],
                ty: GgmlType::F32,
            },
            TensorSpec {
                name: "y".into(),
                dims: vec![5],
                ty: GgmlType::F16,
            },
        ];
        let mut w = GgufWriter::new(Vec::new(), &meta, specs).unwrap();
        w.write_tensor(&[1u8; 24]).unwrap();
        w.write_tensor(&[2u8; 10]).unwrap();
        w.finish().unwrap()
    }

    fn parse_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        let dir = std::env::temp_dir().join(format!(
            "llama_rs_gguf_test_{}_{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&dir, &bytes).unwrap();
        let r = GgufFile::open(&dir);
        std::fs::remove_file(&dir).ok();
        r
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn round_trip() {
        let f = parse_bytes(sample()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.get("a.u8"), Some(&Value::U8(7)));
        assert_eq!(f.get("a.i64").unwrap().as_i64(), Some(-5));
        assert_eq!(
            f.get("a.empty"),
            Some(&Value::Array(ValueType::String, vec![]))
        );
        let x = f.tensor("x").unwrap();
        assert_eq!(x.dims, vec![3, 2]);
        assert_eq!(f.tensor_data(x), &[1u8; 24]);
        assert_eq!(f.tensor_data(f.tensor("y").unwrap()), &[2u8; 10]);
        assert_eq!(f.data_offset % 32, 0);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        // The padding after the last tensor is not data: cutting it off is harmless.
        let data_end = parse_bytes(bytes.clone())
            .unwrap()
            .tensors
            .iter()
            .map(|t| t.range.end)
            .max()
            .unwrap();
        assert!(data_end < bytes.len());
        for n in 0..data_end {
            assert!(
                parse_bytes(bytes[..n].to_vec()).is_err(),
                "truncated at {n} loaded"
            );
        }
        assert!(parse_bytes(bytes[..data_end].to_vec()).is_ok());
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut bytes = sample();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // metadata count
        let e = parse_bytes(bytes).err().unwrap();
        assert!(e.to_string().contains("metadata count"), "{e}");
        let mut bytes = sample();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(parse_bytes(bytes)
            .err()
            .unwrap()
            .to_string()
            .contains("unsupported GGUF version 1"));
    }
}
