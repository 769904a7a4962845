"""Test references: random LLaMA models written with `gguf`, and a torch forward pass with
Meta's semantics (the one in Meta's llama/model.py: adjacent-pair rotary, grouped KV heads).

The reference works in float64 on the weights exactly as stored (dequantized with
`gguf.quants`), so the only differences left against llama_rs are float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

QUANTIZED = {"Q4_0": QT.Q4_0, "Q4_1": QT.Q4_1, "Q8_0": QT.Q8_0}


@dataclass
class Shape:
    dim: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 4
    ffn: int = 96
    vocab: int = 300
    eps: float = 1e-5
    rope_base: float = 10000.0
    #: Llama 3.1's `rope_freqs.weight`: one divisor per rotary pair (head_dim / 2), or None.
    rope_factors: tuple[float, ...] | None = None
    #: Linear rope scaling (`llama.rope.scaling.factor`): positions are divided by it; or None.
    rope_scale: float | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


def random_weights(s: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights in GGUF names, numpy order [out, in] (= ggml ne [in, out])."""
    rng = np.random.default_rng(seed)
    kv = s.head_dim * s.n_head_kv

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((s.vocab, s.dim)).astype(np.float32)}
    for i in range(s.n_layer):
        w[f"blk.{i}.attn_norm.weight"] = norm(s.dim)
        w[f"blk.{i}.attn_q.weight"] = mat(s.dim, s.dim)
        w[f"blk.{i}.attn_k.weight"] = mat(kv, s.dim)
        w[f"blk.{i}.attn_v.weight"] = mat(kv, s.dim)
        w[f"blk.{i}.attn_output.weight"] = mat(s.dim, s.dim)
        w[f"blk.{i}.ffn_norm.weight"] = norm(s.dim)
        w[f"blk.{i}.ffn_gate.weight"] = mat(s.ffn, s.dim)
        w[f"blk.{i}.ffn_up.weight"] = mat(s.ffn, s.dim)
        w[f"blk.{i}.ffn_down.weight"] = mat(s.dim, s.ffn)
    w["output_norm.weight"] = norm(s.dim)
    w["output.weight"] = mat(s.vocab, s.dim)
    return w


def synthetic_vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, then distinct normal pieces (enough for models that are fed ids)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"▁t{i}" for i in range(3, n)]
    types = [2, 3, 3] + [1] * (n - 3)
    return tokens, [0.0] * n, types


def write_model(
    path: Path,
    s: Shape,
    weights: dict[str, np.ndarray],
    wtype: str = "F32",
    vocab: tuple[list[str], list[float], list[int]] | None = None,
    tie_output: bool = False,
    extra: dict[str, str | float] | None = None,
) -> dict[str, np.ndarray]:
    """Write a GGUF with 2-D weights in `wtype` (norms stay F32) using the `gguf` package,
    plus `extra` metadata (strings and float32s). Returns the weights as the file holds them
    (after quantization), in float64."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(s.dim)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.ffn)
    w.add_rope_dimension_count(s.head_dim)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_freq_base(s.rope_base)
    if s.rope_scale is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s.rope_scale)
    for k, v in (extra or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_float32(k, v)
    if s.rope_factors is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(s.rope_factors, dtype=np.float32))
    tokens, scores, types = vocab or synthetic_vocab(s.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    stored = {}
    for name, a in weights.items():
        if tie_output and name == "output.weight":
            continue
        if a.ndim == 1 or wtype == "F32":
            w.add_tensor(name, a.astype(np.float32))
            stored[name] = a.astype(np.float64)
        elif wtype == "F16":
            w.add_tensor(name, a.astype(np.float16))
            stored[name] = a.astype(np.float16).astype(np.float64)
        else:
            q = gguf.quants.quantize(a, QUANTIZED[wtype])
            w.add_tensor(name, q, raw_dtype=QUANTIZED[wtype])
            stored[name] = gguf.quants.dequantize(q, QUANTIZED[wtype]).astype(np.float64)
    if tie_output:
        stored["output.weight"] = stored["token_embd.weight"]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def q8_0_round_trip(x: torch.Tensor) -> torch.Tensor:
    """What llama.cpp (and llama_rs) does to activations before a quantized matmul."""
    a = x.to(torch.float32).numpy()
    q = gguf.quants.quantize(a, QT.Q8_0)
    return torch.from_numpy(gguf.quants.dequantize(q, QT.Q8_0).astype(np.float64)).reshape(x.shape)


def f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float64)


def reference_logits(
    s: Shape, w: dict[str, np.ndarray], tokens: list[int], quantized_acts: bool = False, f16_kv: bool = False
) -> np.ndarray:
    """Logits [len(tokens), vocab] of a Meta-semantics forward pass in float64.

    With `quantized_acts`, every matmul input is rounded through q8_0 first, as the engine
    does for quantized weights (the embedding lookup is not a matmul and is not rounded).
    With `f16_kv`, attention works as llama.cpp's with an f16 KV cache: queries, keys, values
    and the softmax probabilities are rounded to f16."""
    T = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in w.items()}
    hd, n = s.head_dim, len(tokens)

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        if quantized_acts:
            x = q8_0_round_trip(x)
        return x @ T[name].T

    def rms(x: torch.Tensor, name: str) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + s.eps) * T[name]

    freqs = 1.0 / (s.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    if s.rope_factors is not None:  # as stored: float32 divisors
        freqs = freqs / torch.tensor(np.asarray(s.rope_factors, dtype=np.float32).astype(np.float64))
    if s.rope_scale is not None:
        freqs = freqs / s.rope_scale
    angles = torch.outer(torch.arange(n, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)  # [n, hd/2]

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: [n, heads, hd], pairs (2i, 2i+1)
        xc = torch.view_as_complex(x.reshape(n, x.shape[1], hd // 2, 2).contiguous())
        return torch.view_as_real(xc * rot[:, None, :]).reshape(x.shape)

    x = T["token_embd.weight"][tokens]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    group = s.n_head // s.n_head_kv
    for i in range(s.n_layer):
        h = rms(x, f"blk.{i}.attn_norm.weight")
        q = rope(lin(h, f"blk.{i}.attn_q.weight").view(n, s.n_head, hd))
        k = rope(lin(h, f"blk.{i}.attn_k.weight").view(n, s.n_head_kv, hd))
        v = lin(h, f"blk.{i}.attn_v.weight").view(n, s.n_head_kv, hd)
        if f16_kv:
            q, k, v = f16(q), f16(k), f16(v)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        probs = torch.softmax(scores, -1)
        att = torch.einsum("hqk,khd->qhd", f16(probs) if f16_kv else probs, v).reshape(n, s.dim)
        x = x + lin(att, f"blk.{i}.attn_output.weight")
        h = rms(x, f"blk.{i}.ffn_norm.weight")
        g = lin(h, f"blk.{i}.ffn_gate.weight")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, f"blk.{i}.ffn_up.weight"), f"blk.{i}.ffn_down.weight")
    return lin(rms(x, "output_norm.weight"), "output.weight").numpy()
