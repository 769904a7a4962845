//! llama_rs: run LLaMA-family models on a CPU.
//!
//! Data flows one way: file -> (mmap) tensors -> model -> logits -> sampler -> tokens -> text.
#![feature(portable_simd)]
// AMX tile intrinsics (quant/amx.rs), under the same RUSTC_BOOTSTRAP switch.
#![cfg_attr(target_arch = "x86_64", feature(x86_amx_intrinsics))]

pub mod attention;
pub mod bandwidth;
pub mod batch;
pub mod bytes;
pub mod config;
pub mod error;
pub mod ggml_types;
pub mod gguf;
pub mod info;
pub mod legacy;
pub mod load;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod quant;
pub mod quant_policy;
pub mod quantize;
pub mod sampling;
pub mod session;
pub mod threads;
pub mod tokenizer;
pub mod weights;

#[cfg(feature = "extension-module")]
mod python;
