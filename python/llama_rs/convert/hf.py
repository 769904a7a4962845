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

from .errors import ConvertError
from .vocab import load_vocab
from .writer import Hparams, Plan, Tensor, canonical_order

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
    if "LlamaForCausalLM" not in archs and not (not archs and cfg.get("model_type") == "llama"):
        what = ", ".join(archs) if archs else f"model_type {cfg.get('model_type')!r}"
        raise ConvertError(f"{path}: architecture {what} is not LLaMA (LlamaForCausalLM)")
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


def plan(src: Path, vocab_path: Optional[Path] = None) -> Plan:
    cfg_path = src / "config.json"
    cfg = read_config(cfg_path)
    files, weight_map, listing = weight_files(src)
    tok = vocab_path or src / "tokenizer.model"
    if not tok.is_file():
        raise ConvertError(f"{tok}: missing (the vocab comes from the SentencePiece model; or pass --vocab)")
    vocab = load_vocab(tok)

    dim, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or (
        dim // n_head if isinstance(dim, int) and isinstance(n_head, int) and n_head else 0
    )
    if isinstance(dim, int) and isinstance(n_head, int) and n_head and head_dim * n_head != dim:
        raise ConvertError(f"{cfg_path}: head_dim {head_dim} * {n_head} heads != hidden_size {dim} (not supported)")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        raise ConvertError(
            f"{cfg_path}: rope scaling {scaling.get('rope_type') or scaling.get('type')!r} is not supported"
        )
    theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConvertError(f"{cfg_path}: attention or MLP biases are not supported")
    h = Hparams(
        name=src.resolve().name,
        context_length=cfg.get("max_position_embeddings") or 2048,
        dim=dim,
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_head_kv=n_head_kv,
        ffn=cfg["intermediate_size"],
        eps=float(cfg.get("rms_norm_eps") or 1e-6),
        rope_base=float(theta),
    )

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
    # Write shard by shard (so one shard's mapping is live at a time), in LLaMA order within.
    rank = {n: i for i, n in enumerate(canonical_order([t.name for t in tensors]))}
    shard = {f: i for i, f in enumerate(files)}
    tensors.sort(key=lambda t: (shard[t.source], rank[t.name]))
    for t in tensors:
        if t.name == "blk.0.attn_q.weight" and len(t.shape) == 2 and t.shape[0] % (2 * n_head):
            raise ConvertError(
                f"{t.source}: tensor {t.name} has shape {list(t.shape)}, not divisible into {n_head} heads"
            )

    def close() -> None:
        for r in readers.values():
            r.close()
        readers.clear()

    return Plan(h, vocab, tensors, list(files) + [listing, cfg_path, vocab.path], cfg_path, close)


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
