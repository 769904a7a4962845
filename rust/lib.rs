//! llama_rs: run LLaMA-family models on a CPU.
//!
//! Data flows one way: file -> (mmap) tensors -> model -> logits -> sampler -> tokens -> text.
#![feature(portable_simd)]

pub mod attention;
pub mod bandwidth;
pub mod error;
pub mod gguf;
pub mod info;
pub mod legacy;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod quantize;
pub mod quant;
pub mod sampling;
pub mod session;
pub mod tokenizer;

#[cfg(feature = "extension-module")]
mod python;
