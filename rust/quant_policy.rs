//! Which type each tensor gets when a model is quantized to a file type: llama.cpp's
//! `llama_tensor_get_type` and the tensor loop of `llama_model_quantize_impl`
//! (src/llama-quant.cpp, c392e50) for the LLaMA architecture, without an importance matrix.
//!
//! - Only weights are quantized: names ending in `weight`, two or more dimensions, not norms.
//!   Everything else keeps its type.
//! - Every quantized weight starts at the file type's base type. Unless `pure`, the mixes then
//!   move some tensors up: `output.weight` (or `token_embd.weight` when the output is tied to
//!   it) to Q6_K; for the K-quant mixes some layers' `attn_v`, `ffn_down` and `attn_output`.
//!   Layers are counted as llama.cpp counts them: the i-th `attn_v` / `ffn_down` met in
//!   llama.cpp's tensor order (by layer number, then name).
//! - A row that is not a whole number of the chosen type's blocks falls back (Q2_K, Q3_K,
//!   IQ4_XS -> IQ4_NL; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0; F16 when even that does not
//!   fit); other types have no fallback and such a tensor is an error.
//!
//! The result is in [`TypeId`]s, so a plan can be made (and checked against llama.cpp) for types
//! this build has no kernels for; `quantize.rs` turns them into kernels.

use crate::error::{invalid, Result};
use crate::ggml_types::TypeId;
use crate::gguf::Value;
use std::cmp::Ordering;

/// llama.cpp's file types (`llama_ftype`) that llama-rs writes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

use FileType as F;

/// (file type, llama.cpp's name, `general.file_type` id, base type), in llama-quantize's
/// listing order.
const FILE_TYPES: [(FileType, &str, u32, TypeId); 19] = [
    (F::Q4_0, "Q4_0", 2, TypeId::Q4_0),
    (F::Q4_1, "Q4_1", 3, TypeId::Q4_1),
    (F::Q5_0, "Q5_0", 8, TypeId::Q5_0),
    (F::Q5_1, "Q5_1", 9, TypeId::Q5_1),
    (F::Q2_K, "Q2_K", 10, TypeId::Q2_K),
    (F::Q3_K_S, "Q3_K_S", 11, TypeId::Q3_K),
    (F::Q3_K_M, "Q3_K_M", 12, TypeId::Q3_K),
    (F::Q3_K_L, "Q3_K_L", 13, TypeId::Q3_K),
    (F::IQ4_NL, "IQ4_NL", 25, TypeId::IQ4_NL),
    (F::IQ4_XS, "IQ4_XS", 30, TypeId::IQ4_XS),
    (F::Q4_K_S, "Q4_K_S", 14, TypeId::Q4_K),
    (F::Q4_K_M, "Q4_K_M", 15, TypeId::Q4_K),
    (F::Q5_K_S, "Q5_K_S", 16, TypeId::Q5_K),
    (F::Q5_K_M, "Q5_K_M", 17, TypeId::Q5_K),
    (F::Q6_K, "Q6_K", 18, TypeId::Q6_K),
    (F::Q8_0, "Q8_0", 7, TypeId::Q8_0),
    (F::F16, "F16", 1, TypeId::F16),
    (F::BF16, "BF16", 32, TypeId::BF16),
    (F::F32, "F32", 0, TypeId::F32),
];

/// llama-quantize's short names for the medium mixes.
pub const ALIASES: [(&str, FileType); 3] = [
    ("Q3_K", F::Q3_K_M),
    ("Q4_K", F::Q4_K_M),
    ("Q5_K", F::Q5_K_M),
];

impl FileType {
    /// All file types, in llama-quantize's listing order.
    pub fn all() -> impl Iterator<Item = FileType> {
        FILE_TYPES.iter().map(|r| r.0)
    }

    fn row(self) -> &'static (FileType, &'static str, u32, TypeId) {
        FILE_TYPES.iter().find(|r| r.0 == self).expect("listed")
    }

    /// llama.cpp's name ("Q4_K_M").
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// `general.file_type` (`llama_ftype`).
    pub fn id(self) -> u32 {
        self.row().2
    }

    /// The type every quantized weight starts from (llama.cpp's `default_type`).
    pub fn base(self) -> TypeId {
        self.row().3
    }

    pub fn from_id(id: u32) -> Option<FileType> {
        FILE_TYPES.iter().find(|r| r.2 == id).map(|r| r.0)
    }

    /// A name as llama-quantize takes it: case-insensitive, an alias, or the numeric id.
    pub fn parse(name: &str) -> Result<FileType> {
        let by_name = FILE_TYPES
            .iter()
            .map(|r| (r.1, r.0))
            .chain(ALIASES)
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, f)| f);
        let by_id = || name.trim().parse::<u32>().ok().and_then(FileType::from_id);
        match by_name.or_else(by_id) {
            Some(f) => Ok(f),
            None => invalid(format!(
                "unknown type {name:?} (choose {}; aliases {})",
                FILE_TYPES.map(|r| r.1).join(", "),
                ALIASES
                    .map(|(a, f)| format!("{a} = {}", f.name()))
                    .join(", ")
            )),
        }
    }

    /// Whether the per-tensor mix applies (llama.cpp consults it for quantized base types).
    fn mixes(self, pure: bool) -> bool {
        !pure && self.base().is_quantized()
    }
}

/// What the policy needs to know about the model (llama.cpp's hparams).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
}

impl ModelShape {
    /// From GGUF metadata; only the LLaMA architecture, without experts.
    pub fn from_metadata(meta: &[(String, Value)]) -> Result<ModelShape> {
        let get = |k: &str| meta.iter().find(|(m, _)| m == k).map(|(_, v)| v);
        let arch = get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if arch != "llama" {
            return invalid(format!(
                "the per-tensor type mixes follow llama.cpp's policy for the llama architecture, and this file's is {arch:?} (pass --pure to give every weight the one type)"
            ));
        }
        let num = |k: &str| -> Result<Option<u64>> {
            match get(&format!("llama.{k}")) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as u64)),
                    _ => invalid(format!("metadata llama.{k} is not a count: {v:?}")),
                },
            }
        };
        let need = |k: &str| -> Result<u64> {
            num(k)?.ok_or_else(|| {
                crate::error::Error::Invalid(format!(
                    "metadata llama.{k} is missing; the type mixes need it (pass --pure to give every weight the one type)"
                ))
            })
        };
        if num("expert_count")?.unwrap_or(0) > 1 {
            return invalid("mixture-of-experts models (llama.expert_count > 1) are not supported");
        }
        let n_head = need("attention.head_count")?;
        Ok(ModelShape {
            n_layer: need("block_count")?,
            n_head,
            n_head_kv: num("attention.head_count_kv")?.unwrap_or(n_head),
        })
    }

    /// Query heads per KV head (0 without KV heads), as `llama_hparams::n_gqa`.
    fn n_gqa(&self) -> u64 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// llama.cpp's `LLM_TYPE_70B` for LLaMA: 80 layers with grouped-query attention.
    fn is_70b(&self) -> bool {
        self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// One tensor as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct TensorDesc<'a> {
    pub name: &'a str,
    /// ggml order: `dims[0]` is the row length.
    pub dims: &'a [u64],
    pub ty: TypeId,
}

/// The type a tensor gets, and the type it would have had when its rows forced a fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ty: TypeId,
    pub fallback_from: Option<TypeId>,
}

/// The types for `tensors` (same order) in a file of `ftype`. `meta` is read only when the
/// mixes apply (a quantized file type without `pure`).
pub fn plan_types(
    meta: &[(String, Value)],
    tensors: &[TensorDesc],
    ftype: FileType,
    pure: bool,
) -> Result<Vec<Choice>> {
    let shape = match ftype.mixes(pure) {
        true => Some(ModelShape::from_metadata(meta)?),
        false => None,
    };
    choose(shape.as_ref(), tensors, ftype)
}

/// `ggml_n_dims`: dimensions up to the last one that is not 1.
fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
}

/// Whether llama.cpp quantizes a tensor at all (the checks before `llama_tensor_get_type`).
fn is_quantizable(t: &TensorDesc) -> bool {
    const KEPT: [&str; 10] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ssm_conv1d.weight",
        "time_mix_first.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
    ];
    t.name.ends_with("weight")
        && n_dims(t.dims) >= 2
        && !KEPT.iter().any(|k| t.name.contains(k))
        && t.name != "position_embd.weight"
        && t.name != "token_types.weight"
}

/// `blk.N.` -> N, else -1 (as the `sscanf("blk.%d.")` of llama.cpp's tensor order).
fn layer_of(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else {
        return -1;
    };
    let sign = usize::from(rest.starts_with(['-', '+']));
    let end = sign + rest[sign..].bytes().take_while(u8::is_ascii_digit).count();
    if end == sign {
        return -1;
    }
    rest[..end].parse().unwrap_or(-1)
}

/// llama.cpp's tensor order (`weight_name_comparer`): by layer (non-layer tensors first), then
/// by name. The layer counters below depend on it.
fn llama_cpp_order(a: &str, b: &str) -> Ordering {
    layer_of(a).cmp(&layer_of(b)).then_with(|| a.cmp(b))
}

/// llama.cpp's `quantize_state_impl`, the part the file types here use.
struct Counters {
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_ffn_down: i64,
    i_ffn_down: i64,
    has_output: bool,
}

fn choose(
    shape: Option<&ModelShape>,
    tensors: &[TensorDesc],
    ftype: FileType,
) -> Result<Vec<Choice>> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| llama_cpp_order(tensors[a].name, tensors[b].name));
    let mut c = Counters {
        n_attention_wv: tensors
            .iter()
            .filter(|t| {
                ["attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"]
                    .iter()
                    .any(|k| t.name.contains(k))
            })
            .count() as i64,
        i_attention_wv: 0,
        n_ffn_down: shape.map_or(0, |s| s.n_layer as i64),
        i_ffn_down: 0,
        has_output: tensors.iter().any(|t| t.name == "output.weight"),
    };
    if let Some(s) = shape {
        // llama.cpp asserts this (every LLaMA layer has attention).
        if c.n_attention_wv != 0 && c.n_attention_wv != s.n_layer as i64 {
            return invalid(format!(
                "the file has {} attn_v tensors for {} layers (llama.block_count)",
                c.n_attention_wv, s.n_layer
            ));
        }
    }
    let mut out = vec![None; tensors.len()];
    for i in order {
        let t = &tensors[i];
        out[i] = Some(if !is_quantizable(t) {
            Choice {
                ty: t.ty,
                fallback_from: None,
            }
        } else {
            let mut choice = match shape {
                Some(s) => mixed_type(&mut c, s, t, ftype)?,
                None => Choice {
                    ty: ftype.base(),
                    fallback_from: None,
                },
            };
            if choice.ty == t.ty {
                choice.fallback_from = None;
            }
            if !choice.ty.fits_row(t.dims[0]) {
                return invalid(format!(
                    "tensor {} has rows of {} values, not a multiple of {}: it cannot be {}",
                    t.name,
                    t.dims[0],
                    choice.ty.block_size().unwrap_or(0),
                    choice.ty
                ));
            }
            choice
        });
    }
    Ok(out.into_iter().map(|c| c.expect("every tensor")).collect())
}

/// `use_more_bits`: the first and last eighth of the layers and every third one between.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `llama_tensor_get_type` for the file types here (LLaMA, one expert, no importance matrix).
fn mixed_type(c: &mut Counters, s: &ModelShape, t: &TensorDesc, ftype: FileType) -> Result<Choice> {
    let name = t.name;
    let nx = t.dims[0];
    let mut ty = ftype.base();
    if name == "output.weight" || (!c.has_output && name == "token_embd.weight") {
        // (the IQ1/IQ2/IQ3_XXS file types would take Q5_K here; none is offered)
        if !ty.fits_row(nx) {
            ty = TypeId::Q8_0;
        } else if ty != TypeId::Q8_0 {
            ty = TypeId::Q6_K;
        }
    } else if name == "token_embd.weight" {
        // Changed only for IQ1/IQ2/IQ3_XXS/TQ file types.
    } else if name.contains("attn_v.weight") {
        let gqa = s.n_gqa();
        ty = match ftype {
            F::Q2_K if gqa >= 4 => TypeId::Q4_K,
            F::Q2_K => TypeId::Q3_K,
            F::Q3_K_M if c.i_attention_wv < 2 => TypeId::Q5_K,
            F::Q3_K_M => TypeId::Q4_K,
            F::Q3_K_L => TypeId::Q5_K,
            F::IQ4_NL | F::IQ4_XS if gqa >= 4 => TypeId::Q5_K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(c.i_attention_wv, c.n_attention_wv) => {
                TypeId::Q6_K
            }
            F::Q4_K_S if c.i_attention_wv < 4 => TypeId::Q5_K,
            _ => ty,
        };
        // 70B: eight query heads share each attn_v, so more bits there cost little.
        if s.is_70b() && (ty == TypeId::Q3_K || ty == TypeId::Q4_K) {
            ty = TypeId::Q5_K;
        }
        c.i_attention_wv += 1;
    } else if name.contains("attn_k.weight") || name.contains("attn_q.weight") {
        // Changed only for IQ3_XS/IQ3_XXS and eight experts.
    } else if name.contains("ffn_down") {
        let (i, n) = (c.i_ffn_down, c.n_ffn_down);
        ty = match ftype {
            F::Q2_K => TypeId::Q3_K,
            F::Q3_K_M if i < n / 16 => TypeId::Q5_K,
            F::Q3_K_M => TypeId::Q4_K,
            F::Q3_K_L => TypeId::Q5_K,
            F::Q4_K_M if use_more_bits(i, n) => TypeId::Q6_K,
            F::IQ4_NL | F::IQ4_XS if i < n / 8 => TypeId::Q5_K,
            F::Q5_K_M if use_more_bits(i, n) => TypeId::Q6_K,
            F::Q4_K_S if i < n / 8 => TypeId::Q5_K,
            _ => ty,
        };
        c.i_ffn_down += 1;
    } else if name.contains("attn_output.weight") {
        ty = match ftype {
            F::Q2_K => TypeId::Q3_K,
            F::Q3_K_M => TypeId::Q4_K,
            F::Q3_K_L => TypeId::Q5_K,
            _ => ty,
        };
    } else if name.contains("attn_qkv.weight") {
        ty = match ftype {
            F::Q3_K_M | F::Q3_K_L => TypeId::Q4_K,
            F::Q4_K_M => TypeId::Q5_K,
            F::Q5_K_M => TypeId::Q6_K,
            _ => ty,
        };
    }
    if ty.fits_row(nx) {
        return Ok(Choice {
            ty,
            fallback_from: None,
        });
    }
    let fallback = match ty {
        TypeId::Q2_K | TypeId::Q3_K | TypeId::IQ4_XS => TypeId::IQ4_NL,
        TypeId::Q4_K => TypeId::Q5_0,
        TypeId::Q5_K => TypeId::Q5_1,
        TypeId::Q6_K => TypeId::Q8_0,
        _ => {
            return invalid(format!(
                "tensor {name} has rows of {nx} values, not a multiple of {}: it cannot be {ty}, and {ty} has no fallback type",
                ty.block_size().unwrap_or(0)
            ))
        }
    };
    Ok(Choice {
        ty: if fallback.fits_row(nx) {
            fallback
        } else {
            TypeId::F16
        },
        fallback_from: Some(ty),
    })
}

/// The tensors of a LLaMA model of this shape, as a converter writes them (F32), with the
/// metadata the policy reads: for tests and for the bits-per-weight figures in `--help`.
pub struct LlamaShape {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// No `output.weight`: the output reuses `token_embd.weight`.
    pub tied: bool,
}

impl LlamaShape {
    /// LLaMA-2 7B.
    pub const LLAMA2_7B: LlamaShape = LlamaShape {
        n_layer: 32,
        n_embd: 4096,
        n_ff: 11008,
        n_vocab: 32000,
        n_head: 32,
        n_head_kv: 32,
        tied: false,
    };

    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (e, kv) = (self.n_embd, self.n_embd / self.n_head * self.n_head_kv);
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![e, self.n_vocab]),
            ("output_norm.weight".to_string(), vec![e]),
        ];
        if !self.tied {
            out.push(("output.weight".to_string(), vec![e, self.n_vocab]));
        }
        for i in 0..self.n_layer {
            for (n, d) in [
                ("attn_norm", vec![e]),
                ("attn_q", vec![e, e]),
                ("attn_k", vec![e, kv]),
                ("attn_v", vec![e, kv]),
                ("attn_output", vec![e, e]),
                ("ffn_norm", vec![e]),
                ("ffn_gate", vec![e, self.n_ff]),
                ("ffn_up", vec![e, self.n_ff]),
                ("ffn_down", vec![self.n_ff, e]),
            ] {
                out.push((format!("blk.{i}.{n}.weight"), d));
            }
        }
        out
    }

    pub fn metadata(&self) -> Vec<(String, Value)> {
        vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("llama.block_count".into(), Value::U32(self.n_layer as u32)),
            (
                "llama.attention.head_count".into(),
                Value::U32(self.n_head as u32),
            ),
            (
                "llama.attention.head_count_kv".into(),
                Value::U32(self.n_head_kv as u32),
            ),
        ]
    }

    /// The policy's types for this model quantized from F32, by tensor name.
    pub fn plan(&self, ftype: FileType, pure: bool) -> Result<Vec<(String, Choice)>> {
        let tensors = self.tensors();
        let descs: Vec<TensorDesc> = tensors
            .iter()
            .map(|(n, d)| TensorDesc {
                name: n,
                dims: d,
                ty: TypeId::F32,
            })
            .collect();
        let plan = plan_types(&self.metadata(), &descs, ftype, pure)?;
        Ok(tensors.into_iter().map(|(n, _)| n).zip(plan).collect())
    }

    /// Tensor bits per element of the model in `ftype`, as llama.cpp's BPW.
    pub fn bits_per_weight(&self, ftype: FileType) -> Result<f64> {
        let tensors = self.tensors();
        let plan = self.plan(ftype, false)?;
        let (mut bytes, mut elems) = (0u64, 0u64);
        for ((_, dims), (_, c)) in tensors.iter().zip(&plan) {
            let n: u64 = dims.iter().product();
            elems += n;
            bytes += c.ty.bytes(n).unwrap_or(0);
        }
        Ok(8.0 * bytes as f64 / elems as f64)
    }
}

#[cfg(test)]
#[path = "quant_policy_tests.rs"]
mod tests;
