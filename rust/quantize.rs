//! `llama-rs quantize`: GGUF in, GGUF out, one tensor at a time.
//!
//! Each tensor's type comes from llama.cpp's per-tensor policy for the file type
//! (`quant_policy.rs`); a tensor already of its type is copied; converting an already quantized
//! tensor is refused unless `allow_requantize`. Metadata is copied with `general.file_type`
//! set (and `general.quantization_version` 2 when the output holds quantized blocks).
//!
//! The output is written under a temporary name in the target folder and renamed at the end;
//! any failure (or dropping the job) removes it, so nothing partial is left behind.

use crate::error::{Error, Result};
use crate::ggml_types::TypeId;
use crate::gguf::{GgufFile, GgufWriter, TensorSpec, Value};
use crate::quant::{dequantize_row, quantize_row, GgmlType};
use crate::quant_policy::{plan_types, FileType, TensorDesc};
use rayon::prelude::*;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PlanItem {
    pub name: String,
    pub dims: Vec<u64>,
    pub from: TypeId,
    pub to: TypeId,
    /// The type the policy wanted when the rows forced a fallback (llama.cpp warns of these).
    pub fallback_from: Option<TypeId>,
}

/// What each tensor of `f` becomes in a file of `ftype`, in file order, whether or not this
/// build can compute the types (see [`Quantizer::new`] for that).
pub fn plan(f: &GgufFile, ftype: FileType, pure: bool) -> Result<Vec<PlanItem>> {
    let descs: Vec<TensorDesc> = f
        .tensors
        .iter()
        .map(|t| TensorDesc {
            name: &t.name,
            dims: &t.dims,
            ty: t.ty.into(),
        })
        .collect();
    let choices = plan_types(&f.metadata, &descs, ftype, pure)
        .map_err(|e| Error::Invalid(format!("{}: {e}", f.path.display())))?;
    Ok(f.tensors
        .iter()
        .zip(choices)
        .map(|(t, c)| PlanItem {
            name: t.name.clone(),
            dims: t.dims.clone(),
            from: t.ty.into(),
            to: c.ty,
            fallback_from: c.fallback_from,
        })
        .collect())
}

pub struct Options {
    pub ftype: FileType,
    pub pure: bool,
    pub allow_requantize: bool,
    pub force: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub n_tensors: usize,
    pub n_elements: u64,
    /// Tensor data bytes, before and after.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whole files, before and after.
    pub file_in: u64,
    pub file_out: u64,
}

/// A quantization in progress: `step` writes one tensor, `finish` renames the output.
pub struct Quantizer {
    src: GgufFile,
    pub plan: Vec<PlanItem>,
    /// The plan's output types, as kernels.
    kernels: Vec<GgmlType>,
    writer: Option<GgufWriter<BufWriter<File>>>,
    tmp: PathBuf,
    out: PathBuf,
    next: usize,
    summary: Summary,
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = p
            .parent()
            .filter(|x| !x.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

impl Quantizer {
    pub fn new(input: &Path, output: &Path, opts: &Options) -> Result<Quantizer> {
        let out_shown = output.display();
        if same_file(input, output) {
            return Err(Error::Invalid(format!(
                "{out_shown}: the output is the input file; choose another output name"
            )));
        }
        if output.is_dir() {
            return Err(Error::Io(format!(
                "{out_shown}: is a directory; give the output file's name"
            )));
        }
        if output.exists() && !opts.force {
            return Err(Error::Io(format!(
                "{out_shown}: already exists (pass --force to overwrite it)"
            )));
        }
        let src = GgufFile::open(input)?;
        let plan = plan(&src, opts.ftype, opts.pure)?;
        let mut kernels = Vec::with_capacity(plan.len());
        for p in &plan {
            let to = p.to.kernel().map_err(|e| {
                Error::Invalid(format!("{}: tensor {}: {e}", input.display(), p.name))
            })?;
            if p.from != p.to && p.from.is_quantized() && !opts.allow_requantize {
                return Err(Error::Invalid(format!(
                    "{}: tensor {} is already quantized ({}); requantizing to {} loses quality (pass --allow-requantize to do it anyway, or start from the F16/F32 file)",
                    input.display(),
                    p.name,
                    p.from,
                    p.to
                )));
            }
            kernels.push(to);
        }
        let mut meta: Vec<(String, Value)> = src.metadata.clone();
        set_meta(&mut meta, "general.file_type", opts.ftype.id());
        if kernels.iter().any(|k| k.is_quantized()) {
            set_meta(&mut meta, "general.quantization_version", 2);
        }
        let specs = plan
            .iter()
            .zip(&kernels)
            .map(|(p, &ty)| TensorSpec {
                name: p.name.clone(),
                dims: p.dims.clone(),
                ty,
            })
            .collect();

        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = output
            .file_name()
            .ok_or_else(|| Error::Io(format!("{out_shown}: not a file name")))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp)
            .map_err(|e| Error::Io(format!("{out_shown}: cannot create: {e}")))?;
        let mut q = Quantizer {
            summary: Summary {
                file_in: src.mmap().len() as u64,
                n_tensors: plan.len(),
                ..Default::default()
            },
            src,
            plan,
            kernels,
            writer: None,
            tmp,
            out: output.to_path_buf(),
            next: 0,
        };
        // On error `q` is dropped here, which removes the temporary file.
        let w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file), &meta, specs)
            .map_err(|e| q.name_err(e))?;
        q.writer = Some(w);
        Ok(q)
    }

    fn name_err(&self, e: Error) -> Error {
        match e {
            Error::Io(m) => Error::Io(format!("{}: {m}", self.out.display())),
            e => e,
        }
    }

    pub fn n_tensors(&self) -> usize {
        self.plan.len()
    }

    /// Convert and write the next tensor; its index, or None when all are written.
    pub fn step(&mut self) -> Result<Option<usize>> {
        let i = self.next;
        let Some(p) = self.plan.get(i) else {
            return Ok(None);
        };
        let t = self.src.tensor(&p.name).expect("planned from this file");
        let data = self.src.tensor_data(t);
        let converted;
        let to = self.kernels[i];
        let bytes: &[u8] = if t.ty == to {
            data
        } else {
            converted = convert(data, t.ty, to, p.dims[0] as usize);
            &converted
        };
        self.summary.n_elements += t.n_elements();
        self.summary.bytes_in += data.len() as u64;
        self.summary.bytes_out += bytes.len() as u64;
        let r = self.writer.as_mut().expect("writer").write_tensor(bytes);
        r.map_err(|e| self.name_err(e))?;
        self.next += 1;
        Ok(Some(i))
    }

    /// Write what is left, flush, and move the output into place.
    pub fn finish(mut self) -> Result<Summary> {
        while self.step()?.is_some() {}
        let w = self.writer.take().expect("writer");
        let buf = w.finish().map_err(|e| self.name_err(e))?;
        let file = buf.into_inner().map_err(|e| {
            Error::Io(format!(
                "{}: write failed: {}",
                self.out.display(),
                e.error()
            ))
        })?;
        file.sync_all()
            .map_err(|e| Error::Io(format!("{}: write failed: {e}", self.out.display())))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.out).map_err(|e| {
            Error::Io(format!(
                "{}: cannot move the finished file into place: {e}",
                self.out.display()
            ))
        })?;
        self.summary.file_out = std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0);
        self.tmp = PathBuf::new();
        Ok(self.summary.clone())
    }
}

fn set_meta(meta: &mut Vec<(String, Value)>, key: &str, v: u32) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = Value::U32(v),
        None => meta.push((key.into(), Value::U32(v))),
    }
}

impl Drop for Quantizer {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.writer.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Rows of `cols` values from `from` to `to`, in parallel (via f32, exact for F16/F32 input).
pub fn convert(data: &[u8], from: GgmlType, to: GgmlType, cols: usize) -> Vec<u8> {
    let rb_in = from.row_bytes(cols).expect("checked");
    let rb_out = to.row_bytes(cols).expect("checked");
    let rows = data.len() / rb_in;
    let mut out = vec![0u8; rows * rb_out];
    const ROWS: usize = 16;
    crate::threads::install_shared(|| {
        out.par_chunks_mut(rb_out * ROWS)
            .zip(data.par_chunks(rb_in * ROWS))
            .for_each(|(o, i)| {
                let mut x = vec![0f32; cols];
                for (orow, irow) in o.chunks_exact_mut(rb_out).zip(i.chunks_exact(rb_in)) {
                    dequantize_row(from, irow, &mut x);
                    quantize_row(to, &x, orow);
                }
            })
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A writer that fails once `limit` bytes were written, like a full disk.
    struct Full {
        limit: usize,
        n: usize,
    }
    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.n + b.len() > self.limit {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.n += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn full_disk_is_an_error() {
        let specs = vec![TensorSpec {
            name: "x".into(),
            dims: vec![64, 4],
            ty: GgmlType::Q4_0,
        }];
        let mut w = GgufWriter::new(Full { limit: 100, n: 0 }, &[], specs).unwrap();
        let e = w.write_tensor(&[0u8; 4 * 2 * 18]).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
    }
}
