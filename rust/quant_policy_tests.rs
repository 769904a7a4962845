//! The policy on shapes fortunes-4M does not have. Expected types were derived by reading
//! llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp, c392e50); the same shapes run
//! through `llama-quantize` itself are in tests/data/llama_cpp_policy.json
//! (tests/test_quant_policy.py checks every tensor of every file type against it).

use super::*;
use std::collections::HashMap;

fn plan(shape: &LlamaShape, ftype: FileType) -> HashMap<String, Choice> {
    shape.plan(ftype, false).unwrap().into_iter().collect()
}

fn ty(p: &HashMap<String, Choice>, name: &str) -> TypeId {
    p[name].ty
}

/// The types of one tensor kind, layer by layer.
fn layers(p: &HashMap<String, Choice>, n_layer: u64, kind: &str) -> Vec<TypeId> {
    (0..n_layer)
        .map(|i| ty(p, &format!("blk.{i}.{kind}.weight")))
        .collect()
}

const LLAMA3_8B: LlamaShape = LlamaShape {
    n_ff: 14336,
    n_vocab: 128256,
    n_head_kv: 8,
    ..LlamaShape::LLAMA2_7B
};

#[test]
fn names_aliases_and_ids() {
    assert_eq!(FileType::parse("q4_k_m").unwrap(), F::Q4_K_M);
    assert_eq!(FileType::parse("Q4_K").unwrap(), F::Q4_K_M);
    assert_eq!(FileType::parse("15").unwrap(), F::Q4_K_M);
    assert_eq!(FileType::parse("bf16").unwrap(), F::BF16);
    let e = FileType::parse("q9_0").unwrap_err().to_string();
    assert!(e.starts_with("unknown type \"q9_0\""), "{e}");
    assert!(
        e.contains("Q4_K_M") && e.contains("IQ4_XS") && e.contains("Q4_K = Q4_K_M"),
        "{e}"
    );
    for f in FileType::all() {
        assert_eq!(FileType::from_id(f.id()), Some(f));
        assert_eq!(FileType::parse(f.name()).unwrap(), f);
    }
    assert_eq!(FileType::all().count(), 19);
}

/// use_more_bits over 32 layers: the first 4, the last 4, and 4 + 3k + 2 between.
#[test]
fn q4_k_m_on_llama2_7b() {
    let s = LlamaShape::LLAMA2_7B;
    let p = plan(&s, F::Q4_K_M);
    let more = |i: u64| !(4..28).contains(&i) || (i - 4) % 3 == 2;
    let want: Vec<TypeId> = (0..32)
        .map(|i| if more(i) { TypeId::Q6_K } else { TypeId::Q4_K })
        .collect();
    assert_eq!(layers(&p, 32, "attn_v"), want);
    assert_eq!(layers(&p, 32, "ffn_down"), want);
    for k in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
        assert_eq!(layers(&p, 32, k), vec![TypeId::Q4_K; 32], "{k}");
    }
    assert_eq!(layers(&p, 32, "attn_norm"), vec![TypeId::F32; 32]);
    assert_eq!(ty(&p, "output.weight"), TypeId::Q6_K);
    assert_eq!(ty(&p, "token_embd.weight"), TypeId::Q4_K);
    assert_eq!(ty(&p, "output_norm.weight"), TypeId::F32);
    assert!(p.values().all(|c| c.fallback_from.is_none()));
    // 11008 = 43 * 256: no fallback for ffn_down either. Bits: Q4_K 4.5, Q6_K 6.5625.
    assert_eq!(want.iter().filter(|&&t| t == TypeId::Q6_K).count(), 16);
    let (e, f, v) = (4096.0, 11008.0, 32000.0);
    let layer_q4 = 3.0 * e * e + 2.0 * e * f; // q, k, o, gate, up
    let mixed = e * e + e * f; // v, down: half the layers Q6_K
    let bits = 32.0 * (4.5 * layer_q4 + (16.0 * 6.5625 + 16.0 * 4.5) / 32.0 * mixed)
        + 4.5 * e * v
        + 6.5625 * e * v
        + 32.0 * (65.0 * e);
    let elems = 32.0 * (layer_q4 + mixed) + 2.0 * e * v + 65.0 * e;
    let bpw = s.bits_per_weight(F::Q4_K_M).unwrap();
    assert!(
        (bpw - bits / elems).abs() < 1e-9,
        "{bpw} vs {}",
        bits / elems
    );
}

#[test]
fn gqa_moves_attn_v_up() {
    // n_gqa 32/8 = 4: Q2_K gives attn_v Q4_K (Q3_K at GQA 1); IQ4_XS/IQ4_NL give Q5_K.
    let (a, b) = (LlamaShape::LLAMA2_7B, LLAMA3_8B);
    assert_eq!(
        layers(&plan(&a, F::Q2_K), 32, "attn_v"),
        vec![TypeId::Q3_K; 32]
    );
    assert_eq!(
        layers(&plan(&b, F::Q2_K), 32, "attn_v"),
        vec![TypeId::Q4_K; 32]
    );
    assert_eq!(
        layers(&plan(&a, F::IQ4_XS), 32, "attn_v"),
        vec![TypeId::IQ4_XS; 32]
    );
    assert_eq!(
        layers(&plan(&b, F::IQ4_XS), 32, "attn_v"),
        vec![TypeId::Q5_K; 32]
    );
    // IQ4_XS: the first eighth of ffn_down is Q5_K (no importance matrix).
    let d = layers(&plan(&b, F::IQ4_XS), 32, "ffn_down");
    assert_eq!(&d[..4], &[TypeId::Q5_K; 4]);
    assert_eq!(&d[4..], &[TypeId::IQ4_XS; 28]);
    // Q2_K: ffn_down and attn_output Q3_K, whatever the GQA.
    let p = plan(&b, F::Q2_K);
    assert_eq!(layers(&p, 32, "ffn_down"), vec![TypeId::Q3_K; 32]);
    assert_eq!(layers(&p, 32, "attn_output"), vec![TypeId::Q3_K; 32]);
    assert_eq!(layers(&p, 32, "attn_q"), vec![TypeId::Q2_K; 32]);
}

#[test]
fn seventy_b_attn_v_is_q5_k() {
    let s = LlamaShape {
        n_layer: 80,
        n_embd: 8192,
        n_ff: 28672,
        n_head: 64,
        n_head_kv: 8,
        ..LlamaShape::LLAMA2_7B
    };
    for f in [F::Q3_K_S, F::Q4_K_S, F::Q3_K_M] {
        assert_eq!(
            layers(&plan(&s, f), 80, "attn_v"),
            vec![TypeId::Q5_K; 80],
            "{f:?}"
        );
    }
    // 65B (no GQA) is not 70B: Q3_K_S keeps attn_v Q3_K.
    let s65 = LlamaShape { n_head_kv: 64, ..s };
    assert_eq!(
        layers(&plan(&s65, F::Q3_K_S), 80, "attn_v"),
        vec![TypeId::Q3_K; 80]
    );
}

/// Counters follow llama.cpp's order (blk.2 before blk.10), not the string order.
#[test]
fn layers_counted_in_numeric_order() {
    let s = LlamaShape {
        n_layer: 12,
        n_embd: 256,
        n_ff: 768,
        n_vocab: 512,
        n_head: 4,
        n_head_kv: 4,
        tied: false,
    };
    let p = plan(&s, F::Q3_K_M);
    let v = layers(&p, 12, "attn_v");
    assert_eq!(&v[..2], &[TypeId::Q5_K; 2]);
    assert_eq!(&v[2..], &[TypeId::Q4_K; 10]);
    // Q4_K_S: the first 4 attn_v and the first 12/8 = 1 ffn_down are Q5_K.
    let p = plan(&s, F::Q4_K_S);
    assert_eq!(
        &layers(&p, 12, "attn_v")[..5],
        &[
            TypeId::Q5_K,
            TypeId::Q5_K,
            TypeId::Q5_K,
            TypeId::Q5_K,
            TypeId::Q4_K
        ]
    );
    assert_eq!(
        &layers(&p, 12, "ffn_down")[..2],
        &[TypeId::Q5_K, TypeId::Q4_K]
    );
    // The same tensors listed in string order give the same plan.
    let mut tensors = s.tensors();
    tensors.sort();
    let descs: Vec<TensorDesc> = tensors
        .iter()
        .map(|(n, d)| TensorDesc {
            name: n,
            dims: d,
            ty: TypeId::F32,
        })
        .collect();
    let sorted = plan_types(&s.metadata(), &descs, F::Q3_K_M, false).unwrap();
    let want = plan(&s, F::Q3_K_M);
    for ((n, _), c) in tensors.iter().zip(sorted) {
        assert_eq!(c, want[n], "{n}");
    }
}

/// Rows of 3200 (OpenLLaMA 3B) are not whole K-quant blocks; ffn_down rows of 8640 neither.
#[test]
fn fallbacks_for_rows_of_3200() {
    let s = LlamaShape {
        n_layer: 26,
        n_embd: 3200,
        n_ff: 8640,
        ..LlamaShape::LLAMA2_7B
    };
    let p = plan(&s, F::Q4_K_M);
    // output: rows not a multiple of 256 go straight to Q8_0 (not counted as a fallback).
    assert_eq!(
        p["output.weight"],
        Choice {
            ty: TypeId::Q8_0,
            fallback_from: None
        }
    );
    let fb = |t, from| Choice {
        ty: t,
        fallback_from: Some(from),
    };
    assert_eq!(p["token_embd.weight"], fb(TypeId::Q5_0, TypeId::Q4_K));
    assert_eq!(p["blk.5.attn_q.weight"], fb(TypeId::Q5_0, TypeId::Q4_K));
    assert_eq!(p["blk.0.attn_v.weight"], fb(TypeId::Q8_0, TypeId::Q6_K));
    assert_eq!(p["blk.0.ffn_down.weight"], fb(TypeId::Q8_0, TypeId::Q6_K));
    let p = plan(&s, F::Q2_K);
    assert_eq!(p["blk.0.attn_q.weight"], fb(TypeId::IQ4_NL, TypeId::Q2_K));
    assert_eq!(p["blk.0.attn_v.weight"], fb(TypeId::IQ4_NL, TypeId::Q3_K));
    let p = plan(&s, F::Q5_K_S);
    assert_eq!(p["blk.0.attn_q.weight"], fb(TypeId::Q5_1, TypeId::Q5_K));
    let p = plan(&s, F::IQ4_XS);
    assert_eq!(p["blk.0.attn_q.weight"], fb(TypeId::IQ4_NL, TypeId::IQ4_XS));
    // 32-element types fit 3200.
    assert_eq!(ty(&plan(&s, F::Q4_0), "blk.0.attn_q.weight"), TypeId::Q4_0);
}

#[test]
fn f16_fallback_and_refusals() {
    // ffn_down rows of 400: not 256, not 32 -> F16.
    let s = LlamaShape {
        n_layer: 4,
        n_embd: 512,
        n_ff: 400,
        n_vocab: 300,
        n_head: 8,
        n_head_kv: 2,
        tied: false,
    };
    let p = plan(&s, F::Q4_K_M);
    assert_eq!(ty(&p, "blk.1.ffn_down.weight"), TypeId::F16);
    assert_eq!(p["blk.1.ffn_down.weight"].fallback_from, Some(TypeId::Q4_K));
    // Q4_0 has no fallback: llama.cpp refuses ("Unsupported tensor size encountered").
    let e = s.plan(F::Q4_0, false).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.ffn_down.weight") && e.contains("400") && e.contains("Q4_0"),
        "{e}"
    );
    // Rows of 144 do not fit the output's Q8_0 either.
    let s = LlamaShape {
        n_embd: 144,
        n_head: 4,
        ..s
    };
    let e = s.plan(F::Q4_K_M, false).unwrap_err().to_string();
    assert!(
        e.contains("output.weight") && e.contains("no fallback"),
        "{e}"
    );
    // Float file types take any row.
    assert_eq!(ty(&plan(&s, F::F16), "blk.0.ffn_down.weight"), TypeId::F16);
}

#[test]
fn tied_output_takes_the_output_type() {
    let s = LlamaShape {
        n_layer: 16,
        n_embd: 2048,
        n_ff: 8192,
        n_vocab: 128256,
        n_head: 32,
        n_head_kv: 8,
        tied: true,
    };
    assert_eq!(ty(&plan(&s, F::Q4_K_M), "token_embd.weight"), TypeId::Q6_K);
    assert_eq!(ty(&plan(&s, F::Q8_0), "token_embd.weight"), TypeId::Q8_0);
    let untied = LlamaShape { tied: false, ..s };
    assert_eq!(
        ty(&plan(&untied, F::Q4_K_M), "token_embd.weight"),
        TypeId::Q4_K
    );
}

#[test]
fn pure_and_float_types_skip_the_mix() {
    let s = LlamaShape::LLAMA2_7B;
    for (f, t) in [(F::Q4_K_M, TypeId::Q4_K), (F::Q4_0, TypeId::Q4_0)] {
        let p: HashMap<_, _> = s.plan(f, true).unwrap().into_iter().collect();
        assert_eq!(ty(&p, "output.weight"), t);
        assert_eq!(ty(&p, "blk.0.attn_v.weight"), t);
        assert_eq!(ty(&p, "blk.0.attn_norm.weight"), TypeId::F32);
    }
    for (f, t) in [
        (F::F16, TypeId::F16),
        (F::BF16, TypeId::BF16),
        (F::F32, TypeId::F32),
    ] {
        let p = plan(&s, f);
        assert_eq!(ty(&p, "output.weight"), t);
        assert_eq!(ty(&p, "blk.3.ffn_down.weight"), t);
    }
    // The mix needs llama metadata; pure and float types do not.
    let d = [7u64, 7];
    let t = [TensorDesc {
        name: "w.weight",
        dims: &d,
        ty: TypeId::F32,
    }];
    let e = plan_types(&[], &t, F::Q4_0, false).unwrap_err().to_string();
    assert!(e.contains("--pure"), "{e}");
    assert_eq!(
        plan_types(&[], &t, F::F16, false).unwrap()[0].ty,
        TypeId::F16
    );
}

#[test]
fn metadata_checks() {
    let mut m = LlamaShape::LLAMA2_7B.metadata();
    assert_eq!(
        ModelShape::from_metadata(&m).unwrap(),
        ModelShape {
            n_layer: 32,
            n_head: 32,
            n_head_kv: 32
        }
    );
    m.push(("llama.expert_count".into(), Value::U32(8)));
    let e = ModelShape::from_metadata(&m).unwrap_err().to_string();
    assert!(e.contains("mixture-of-experts"), "{e}");
    let m = vec![(
        "general.architecture".into(),
        Value::String("falcon".into()),
    )];
    assert!(ModelShape::from_metadata(&m)
        .unwrap_err()
        .to_string()
        .contains("\"falcon\""));
    // attn_v count must match the layer count, as llama.cpp asserts.
    let s = LlamaShape::LLAMA2_7B;
    let mut meta = s.metadata();
    meta[1].1 = Value::U32(31);
    let tensors = s.tensors();
    let descs: Vec<TensorDesc> = tensors
        .iter()
        .map(|(n, d)| TensorDesc {
            name: n,
            dims: d,
            ty: TypeId::F32,
        })
        .collect();
    let e = plan_types(&meta, &descs, F::Q4_K_M, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("32 attn_v tensors for 31 layers"), "{e}");
}

#[test]
fn layer_numbers() {
    assert_eq!(layer_of("blk.12.attn_v.weight"), 12);
    assert_eq!(layer_of("blk.x.attn_v.weight"), -1);
    assert_eq!(layer_of("output.weight"), -1);
    assert_eq!(llama_cpp_order("blk.2.a", "blk.10.a"), Ordering::Less);
    assert_eq!(llama_cpp_order("output.weight", "blk.0.a"), Ordering::Less);
    assert!(
        use_more_bits(0, 32)
            && !use_more_bits(4, 32)
            && use_more_bits(6, 32)
            && use_more_bits(31, 32)
    );
}
