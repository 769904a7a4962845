"""Checkpoints in the shapes users bring, written by the tools that define them: Meta's
layout with torch.save (1 or more model-parallel parts), Hugging Face folders with
transformers' save_pretrained, and a SentencePiece tokenizer trained on the spot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from reference import Shape

WORDS = (
    "the a llama runs on every CPU never trust computer you can throw out of window quick brown fox "
    "jumps over lazy dog model weights tensor convert file fortune cookie wisdom is when"
).split()


def train_tokenizer(prefix: Path, vocab_size: int = 320, seed: int = 0, normalizer: str = "identity") -> Path:
    """A small BPE SentencePiece model with byte fallback and the identity normalizer (as LLaMA's)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
        normalization_rule_name=normalizer,
        remove_extra_whitespaces=False,
    )
    return prefix.with_suffix(".model")


# GGUF name -> (Meta name, model-parallel split dim in torch order or None)
def _meta_names(n_layer: int) -> dict[str, tuple[str, int | None]]:
    names = {
        "token_embd.weight": ("tok_embeddings.weight", 1),
        "output_norm.weight": ("norm.weight", None),
        "output.weight": ("output.weight", 0),
    }
    layer = {
        "attn_norm": ("attention_norm", None),
        "attn_q": ("attention.wq", 0),
        "attn_k": ("attention.wk", 0),
        "attn_v": ("attention.wv", 0),
        "attn_output": ("attention.wo", 1),
        "ffn_norm": ("ffn_norm", None),
        "ffn_gate": ("feed_forward.w1", 0),
        "ffn_down": ("feed_forward.w2", 1),
        "ffn_up": ("feed_forward.w3", 0),
    }
    for i in range(n_layer):
        for g, (m, d) in layer.items():
            names[f"blk.{i}.{g}.weight"] = (f"layers.{i}.{m}.weight", d)
    return names


def meta_parts(s: Shape, weights: dict[str, np.ndarray], n_parts: int) -> list[dict[str, torch.Tensor]]:
    """Split GGUF-named weights into Meta's model-parallel parts: column-parallel tensors
    (wq, wk, wv, w1, w3, output) by output rows, row-parallel ones (wo, w2, tok_embeddings)
    by input columns, norms whole in every part."""
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(n_parts)]
    for g, (m, d) in _meta_names(s.n_layer).items():
        t = torch.from_numpy(np.ascontiguousarray(weights[g]))
        chunks = [t] * n_parts if d is None else list(torch.chunk(t, n_parts, dim=d))
        for p, c in zip(parts, chunks):
            p[m] = c.clone().contiguous()
    for p in parts:
        p["rope.freqs"] = torch.zeros(s.head_dim // 2)  # Meta's files carry it; converters skip it
    return parts


def write_meta(
    folder: Path,
    s: Shape,
    weights: dict[str, np.ndarray],
    n_parts: int = 1,
    tokenizer: Path | None = None,
    max_seq_len: int | None = 128,
    extra_params: dict | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # Meta's FeedForward: multiple_of * ceil(int(mult * int(8 * dim / 3)) / multiple_of); these
    # two give the shape's ffn for any shape (int(ffn / hidden * hidden) is ffn or ffn - 1).
    hidden = int(2 * (4 * s.dim) / 3)
    params = {
        "dim": s.dim,
        "n_layers": s.n_layer,
        "n_heads": s.n_head,
        "n_kv_heads": s.n_head_kv,
        "vocab_size": s.vocab,
        "multiple_of": s.ffn,
        "ffn_dim_multiplier": s.ffn / hidden,
        "norm_eps": s.eps,
        "rope_theta": s.rope_base,
    }
    if max_seq_len:
        params["max_seq_len"] = max_seq_len
    params.update(extra_params or {})
    (folder / "params.json").write_text(json.dumps(params))
    for i, part in enumerate(meta_parts(s, weights, n_parts)):
        torch.save(part, folder / f"consolidated.{i:02d}.pth")
    if tokenizer is not None:
        (folder / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    return folder


def random_hf_llama(vocab: int, seed: int = 0, tie: bool = False, rope_theta: float = 5000.0):
    """A tiny random LlamaForCausalLM with GQA (4 heads, 2 KV heads), weights scaled so that
    the logits are O(1) (transformers' own init gives near-zero logits that compare too easily)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        max_position_embeddings=96,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """transformers' own forward, in float64."""
    import copy

    m = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


def save_hf_bin(model, folder: Path, shards: int = 1) -> Path:
    """What save_pretrained(safe_serialization=False) wrote before transformers 5 removed it:
    pytorch_model.bin, or pytorch_model-0000K-of-0000N.bin with pytorch_model.bin.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    if shards == 1:
        torch.save(sd, folder / "pytorch_model.bin")
        return folder
    names = list(sd)
    weight_map = {}
    for k in range(shards):
        fname = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: sd[n] for n in names[k::shards]}
        torch.save(part, folder / fname)
        weight_map.update({n: fname for n in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return folder
