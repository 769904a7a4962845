"""Hugging Face checkpoints: `config.json` + `model.safetensors` (or sharded
`model-0000K-of-0000N.safetensors` with `model.safetensors.index.json`), or
`pytorch_model.bin` (or its shards with `pytorch_model.bin.index.json`), and `tokenizer.model`.

Hugging Face permutes the rows of q_proj and k_proj so that rotate-half rotary (pairs
`(i, i + head_dim/2)`) computes what Meta's adjacent-pair rotary computes; GGUF keeps Meta's
layout, so the permutation is undone per head (k with the KV head count).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import rope
from .errors import ConvertError
from .vocab import (
    Vocab,
    apply_added_tokens,
    hf_tokenizer_json_is_bpe,
    load_any_vocab,
    load_hf_bpe,
    load_vocab,
    tokenizer_kind,
)
from .writer import Hparams, Plan, Tensor, canonical_order, rope_tensors

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_SHARD_RE = re.compile(r"^(model|pytorch_model)-(\d+)-of-(\d+)\.(safetensors|bin)$")


def is_hf(src: Path) -> bool:
    return src.is_dir() and (
        (src / "config.json").exists() or any(src.glob("*.safetensors")) or any(src.glob("pytorch_model*.bin"))
    )


def gguf_name(name: str) -> Optional[str]:
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.weight"
    return None


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo transformers' convert_llama_weights_to_hf permute: rows of each head go from
    [first halves of the pairs, second halves] back to interleaved pairs."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_config(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path}: missing (a Hugging Face checkpoint needs config.json)")
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path}: not a JSON object")
    archs = cfg.get("architectures") or []
    # Mistral's dense models are LLaMA's architecture (llama.cpp converts them as LLaMA too).
    if not set(archs) & {"LlamaForCausalLM", "MistralForCausalLM"} and not (
        not archs and cfg.get("model_type") in ("llama", "mistral")
    ):
        what = ", ".join(archs) if archs else f"model_type {cfg.get('model_type')!r}"
        raise ConvertError(f"{path}: architecture {what} is not LLaMA (LlamaForCausalLM, MistralForCausalLM)")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if k not in cfg:
            raise ConvertError(f"{path}: no {k!r}")
    return cfg


def weight_files(src: Path) -> tuple[list[Path], Optional[dict[str, str]], Path]:
    """The weight files, the index's weight map (None when unsharded), and the file that
    lists them (the index, or the single file)."""
    shards = sorted(p for p in src.iterdir() if _SHARD_RE.match(p.name))
    for kind, single in (("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin")):
        index = src / f"{single}.index.json"
        mine = [p for p in shards if p.name.endswith("." + kind)]
        if index.exists():
            try:
                wm = json.loads(index.read_text())["weight_map"]
                assert isinstance(wm, dict) and all(isinstance(v, str) for v in wm.values())
            except Exception:
                raise ConvertError(f"{index}: not a valid index (no weight_map)") from None
            files = sorted(set(wm.values()))
            for f in files:
                if "/" in f or not (src / f).is_file():
                    raise ConvertError(f"{src / f}: missing shard (listed in {index.name})")
            for p in mine:
                if p.name not in files:
                    raise ConvertError(f"{p}: extra shard, not listed in {index.name}")
            for f in files:
                m = _SHARD_RE.match(f)
                if m and int(m.group(3)) != len(files):
                    raise ConvertError(
                        f"{src / f}: shard of {int(m.group(3))} but {index.name} lists {len(files)} files"
                    )
            return [src / f for f in files], wm, index
        if mine:
            raise ConvertError(f"{index}: missing (needed for the shards {mine[0].name} ...)")
        if (src / single).is_file():
            return [src / single], None, src / single
    raise ConvertError(f"{src}: no model.safetensors or pytorch_model.bin (Hugging Face layout)")


class _Safetensors:
    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            self.f = safe_open(str(path), framework="pt")
            self.names = list(self.f.keys())
            self.shapes = {n: tuple(self.f.get_slice(n).get_shape()) for n in self.names}
        except Exception as e:
            raise ConvertError(
                f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None

    def get(self, name: str) -> np.ndarray:
        from ._torch import to_numpy

        return to_numpy(self.f.get_tensor(name))

    def close(self) -> None:
        self.f = None


class _TorchBin:
    def __init__(self, path: Path):
        from ._torch import load_state_dict

        self.path = path
        self.sd = load_state_dict(path)
        self.names = list(self.sd)
        self.shapes = {n: tuple(t.shape) for n, t in self.sd.items()}

    def get(self, name: str) -> np.ndarray:
        from ._torch import to_numpy

        return to_numpy(self.sd[name])

    def close(self) -> None:
        self.sd = {}


def read_json(path: Path) -> dict:
    """An optional JSON object file ({} when absent)."""
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return d


def find_vocab(src: Path, vocab_path: Optional[Path]) -> tuple[Vocab, list[Path]]:
    """The vocab and the files it comes from: `--vocab`, else a SentencePiece `tokenizer.model`
    (LLaMA 1/2, Mistral; Mistral v3's may be named `tokenizer.model.v3`), else a byte-level BPE
    `tokenizer.json` (Llama 3), else Meta's tiktoken `tokenizer.model`. The SentencePiece
    model comes first: Llama 2's tokenizer.json is a BPE too, converted from it."""
    if vocab_path is not None:
        return load_any_vocab(vocab_path), [vocab_path]
    spm = [p for p in (src / "tokenizer.model", src / "tokenizer.model.v3") if p.is_file()]
    for p in spm:
        if tokenizer_kind(p) == "sentencepiece":
            return load_vocab(p), [p]
    if hf_tokenizer_json_is_bpe(src):
        return load_hf_bpe(src), [src / "tokenizer.json"]
    for p in spm:
        return load_any_vocab(p), [p]
    raise ConvertError(
        f"{src / 'tokenizer.model'}: missing (the vocab comes from tokenizer.model or a BPE tokenizer.json; or pass --vocab)"
    )


def _token_id(path: Path, key: str, v, n: int) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
        raise ConvertError(f"{path}: {key} = {v!r} is not a token id of the {n}-token vocab")
    return v


def apply_special_ids(v: Vocab, src: Path, cfg: dict) -> None:
    """BOS and EOS from generation_config.json, else config.json, else the tokenizer's own. A
    list of EOS ids (Llama 3.1 instruct: end_of_text, eom, eot) gives EOS its first, and
    `<|eot_id|>` / `<|eom_id|>` among them are the end-of-turn / end-of-message ids."""
    gen_path = src / "generation_config.json"
    gen = read_json(gen_path)
    for key in ("bos_token_id", "eos_token_id"):
        path, value = (gen_path, gen[key]) if gen.get(key) is not None else (src / "config.json", cfg.get(key))
        ids = value if isinstance(value, list) else [value]
        if not ids:
            continue
        ids = [_token_id(path, key, i, len(v)) for i in ids]
        if ids[0] is None:
            continue
        if key == "bos_token_id":
            v.bos = ids[0]
            continue
        v.eos = ids[0]
        for i in ids[1:]:
            if v.tokens[i] == "<|eot_id|>":
                v.eot = i
            elif v.tokens[i] == "<|eom_id|>":
                v.eom = i


def chat_templates(src: Path, tok_cfg: dict) -> dict[str, str]:
    """tokenizer_config.json's `chat_template` (a string, or named templates: a list of
    {name, template}), else `chat_template.jinja` / `chat_template.json` (where transformers 5
    saves it); "" names the default, as llama.cpp writes `tokenizer.chat_template`."""
    path = src / "tokenizer_config.json"
    t = tok_cfg.get("chat_template")
    if t is None:
        jinja = src / "chat_template.jinja"
        if jinja.is_file():
            return {"": jinja.read_text(encoding="utf-8")}
        t = read_json(src / "chat_template.json").get("chat_template")
        path = src / "chat_template.json"
    if t is None:
        return {}
    if isinstance(t, str):
        return {"": t}
    if isinstance(t, list) and all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("template"), str) for e in t
    ):
        return {("" if e["name"] == "default" else e["name"]): e["template"] for e in t}
    raise ConvertError(f"{path}: chat_template is neither a string nor a list of {{name, template}}")


def _context_length(cfg: dict):
    """max_position_embeddings, capped by Mistral v0.1's sliding window: full attention
    computes what windowed attention does up to the window's length."""
    n = cfg.get("max_position_embeddings") or 2048
    window = cfg.get("sliding_window")
    if isinstance(n, int) and isinstance(window, int) and not isinstance(window, bool) and 0 < window < n:
        return window
    return n


def plan(src: Path, vocab_path: Optional[Path] = None) -> Plan:
    cfg_path = src / "config.json"
    cfg = read_config(cfg_path)
    files, weight_map, listing = weight_files(src)
    vocab, vocab_files = find_vocab(src, vocab_path)
    tok_cfg_path = src / "tokenizer_config.json"
    tok_cfg = read_json(tok_cfg_path)
    if vocab.model == "llama":
        apply_added_tokens(vocab, tok_cfg_path, tok_cfg)
    if isinstance(tok_cfg.get("add_bos_token"), bool):
        vocab.add_bos = tok_cfg["add_bos_token"]
    apply_special_ids(vocab, src, cfg)
    templates = chat_templates(src, tok_cfg)

    dim, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or (
        dim // n_head if isinstance(dim, int) and isinstance(n_head, int) and n_head else 0
    )
    if isinstance(dim, int) and isinstance(n_head, int) and n_head and head_dim * n_head != dim:
        raise ConvertError(f"{cfg_path}: head_dim {head_dim} * {n_head} heads != hidden_size {dim} (not supported)")
    rope_params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta") or rope_params.get("rope_theta") or 10000.0
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConvertError(f"{cfg_path}: attention or MLP biases are not supported")
    h = Hparams(
        name=src.resolve().name,
        # Mistral v0.1's sliding window: full attention equals it up to the window's length.
        context_length=_context_length(cfg),
        dim=dim,
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_head_kv=n_head_kv,
        ffn=cfg["intermediate_size"],
        eps=float(cfg.get("rms_norm_eps") or 1e-6),
        rope_base=float(theta),
    )
    if isinstance(head_dim, int) and head_dim > 0:
        h.rope_scaling = rope.from_hf(cfg_path, cfg, head_dim, h.rope_base)

    readers: dict[Path, object] = {}
    for f in files:
        readers[f] = _Safetensors(f) if f.suffix == ".safetensors" else _TorchBin(f)
    if weight_map is not None:
        for name, f in weight_map.items():
            if name not in readers[src / f].shapes:
                raise ConvertError(f"{src / f}: tensor {name} is missing (listed in {listing.name})")

    tensors: list[Tensor] = []
    remaining: dict[Path, int] = {}
    for f, r in readers.items():
        for name in r.names:
            if weight_map is not None and weight_map.get(name) != f.name:
                raise ConvertError(f"{f}: tensor {name} is not listed for this file in {listing.name}")
            if _IGNORED.match(name):
                continue
            g = gguf_name(name)
            if g is None:
                raise ConvertError(f"{f}: unexpected tensor {name} (shape {list(r.shapes[name])})")
            fix = None
            if g.endswith("attn_q.weight"):
                fix = n_head
            elif g.endswith("attn_k.weight"):
                fix = n_head_kv
            tensors.append(Tensor(g, r.shapes[name], _loader(readers, f, name, fix, remaining), f, (f,), name))
            remaining[f] = remaining.get(f, 0) + 1
    if cfg.get("vocab_size") != next((t.shape[0] for t in tensors if t.name == "token_embd.weight"), None):
        emb = next((t for t in tensors if t.name == "token_embd.weight"), None)
        if emb is not None:
            raise ConvertError(
                f"{cfg_path}: vocab_size {cfg.get('vocab_size')} but the embedding in {emb.source} has {emb.shape[0]} rows"
            )
    if not cfg.get("tie_word_embeddings", True) and not any(t.name == "output.weight" for t in tensors):
        raise ConvertError(f"{listing}: lm_head.weight is missing ({cfg_path.name} says tie_word_embeddings false)")
    tensors += rope_tensors(h, cfg_path)
    # Write shard by shard (so one shard's mapping is live at a time), in LLaMA order within.
    rank = {n: i for i, n in enumerate(canonical_order([t.name for t in tensors]))}
    shard = {f: i for i, f in enumerate(files)}
    tensors.sort(key=lambda t: (shard.get(t.source, -1), rank[t.name]))
    for t in tensors:
        if t.name == "blk.0.attn_q.weight" and len(t.shape) == 2 and t.shape[0] % (2 * n_head):
            raise ConvertError(
                f"{t.source}: tensor {t.name} has shape {list(t.shape)}, not divisible into {n_head} heads"
            )

    def close() -> None:
        for r in readers.values():
            r.close()
        readers.clear()

    return Plan(
        h, vocab, tensors, list(files) + [listing, cfg_path, *vocab_files], cfg_path, close, chat_templates=templates
    )


def _loader(
    readers: dict, f: Path, name: str, heads: Optional[int], remaining: dict[Path, int]
) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        r = readers[f]
        a = r.get(name)
        if heads is not None:
            a = unpermute(a, heads)
        remaining[f] -= 1
        if remaining[f] == 0:  # the last tensor of this shard: let its mapping go
            r.close()
        return a

    return load
