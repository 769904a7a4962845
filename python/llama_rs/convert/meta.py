"""Meta's original release: `params.json` + `consolidated.00.pth` ... `consolidated.NN.pth`.

Model-parallel parts (13B: 2, 30B: 4, 65B: 8) each hold a slice of the column-parallel
tensors (wq, wk, wv, w1, w3, output) along the output dimension (torch dim 0) and of the
row-parallel ones (wo, w2, tok_embeddings) along the input dimension (torch dim 1); the
norms are whole in every part. q and k are already in Meta's (GGUF's) rotary layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from ._torch import load_state_dict, to_numpy
from . import rope
from .errors import ConvertError
from .vocab import load_any_vocab
from .writer import Hparams, Plan, Tensor, canonical_order, rope_tensors

# Meta name -> (GGUF name, concatenation dim across parts or None for whole tensors)
_LAYER = {
    "attention_norm": ("attn_norm", None),
    "attention.wq": ("attn_q", 0),
    "attention.wk": ("attn_k", 0),
    "attention.wv": ("attn_v", 0),
    "attention.wo": ("attn_output", 1),
    "ffn_norm": ("ffn_norm", None),
    "feed_forward.w1": ("ffn_gate", 0),
    "feed_forward.w2": ("ffn_down", 1),
    "feed_forward.w3": ("ffn_up", 0),
}
_GLOBAL = {
    "tok_embeddings.weight": ("token_embd.weight", 1),
    "norm.weight": ("output_norm.weight", None),
    "output.weight": ("output.weight", 0),
}
_IGNORED = re.compile(r"^(rope\.freqs|layers\.\d+\.attention\.inner_attention\.rope\.freqs)$")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")
_PART_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


def is_meta(src: Path) -> bool:
    return src.is_dir() and (any(src.glob("consolidated.*.pth")) or (src / "params.json").exists())


def gguf_name(name: str) -> Optional[tuple[str, Optional[int]]]:
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER:
        g, dim = _LAYER[m.group(2)]
        return f"blk.{m.group(1)}.{g}.weight", dim
    return None


def find_parts(src: Path) -> list[Path]:
    found = {}
    for p in src.glob("consolidated.*.pth"):
        m = _PART_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise ConvertError(f"{src}: no consolidated.00.pth (Meta layout)")
    for i in range(max(found) + 1):
        if i not in found:
            raise ConvertError(
                f"{src / f'consolidated.{i:02d}.pth'}: missing (parts found: {', '.join(sorted(p.name for p in found.values()))})"
            )
    return [found[i] for i in range(len(found))]


def find_tokenizer(src: Path, vocab: Optional[Path]) -> Path:
    if vocab is not None:
        return vocab
    for d in (src, src.parent):
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    raise ConvertError(f"{src / 'tokenizer.model'}: missing (looked in {src} and {src.parent}; or pass --vocab)")


def read_params(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path}: missing (Meta layout needs params.json beside consolidated.00.pth)")
    try:
        params = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(params, dict):
        raise ConvertError(f"{path}: not a JSON object")
    for k in ("dim", "n_layers", "n_heads"):
        if k not in params:
            raise ConvertError(f"{path}: no {k!r}")
    return params


def params_ffn(path: Path, params: dict) -> Optional[int]:
    """The feed-forward width Meta's FeedForward derives from `dim`, `multiple_of` and
    `ffn_dim_multiplier` (llama/model.py), or None without `multiple_of`."""
    dim, multiple_of, mult = params["dim"], params.get("multiple_of"), params.get("ffn_dim_multiplier")
    if multiple_of is None:
        return None
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ConvertError(f"{path}: multiple_of = {multiple_of!r} is not a positive integer")
    if mult is not None and (isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0):
        raise ConvertError(f"{path}: ffn_dim_multiplier = {mult!r} is not a positive number")
    if not isinstance(dim, int):
        return None  # check_hparams names it
    hidden = int(2 * (4 * dim) / 3)
    if mult is not None:
        hidden = int(mult * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def plan(src: Path, vocab_path: Optional[Path] = None) -> Plan:
    params_path = src / "params.json"
    params = read_params(params_path)
    parts = find_parts(src)
    # SentencePiece (LLaMA 1/2) or tiktoken (Llama 3: the bpe_vocab readers).
    vocab = load_any_vocab(find_tokenizer(src, vocab_path))
    dicts = [load_state_dict(p) for p in parts]

    first = dicts[0]
    for p, d in zip(parts[1:], dicts[1:]):
        for name in d:
            if name not in first:
                raise ConvertError(f"{p}: unexpected tensor {name} (not in {parts[0].name})")
        for name in first:
            if name not in d:
                raise ConvertError(f"{p}: tensor {name} is missing (present in {parts[0].name})")

    tensors = []
    for name, t0 in first.items():
        if _IGNORED.match(name):
            continue
        mapped = gguf_name(name)
        if mapped is None:
            raise ConvertError(f"{parts[0]}: unexpected tensor {name} (shape {list(t0.shape)})")
        gname, cat = mapped
        pieces = [d[name] for d in dicts]
        shape = list(t0.shape)
        for p, t in zip(parts[1:], pieces[1:]):
            same = len(t.shape) == len(t0.shape) and all(
                a == b for j, (a, b) in enumerate(zip(t.shape, t0.shape)) if j != cat
            )
            if not same or (cat is None and t.shape != t0.shape):
                raise ConvertError(
                    f"{p}: tensor {name} has shape {list(t.shape)} but {list(t0.shape)} in {parts[0].name}: the parts disagree"
                )
            if cat is not None and len(shape) > cat:
                shape[cat] += t.shape[cat]
        if cat is not None and len(pieces) > 1 and len(t0.shape) != 2:
            raise ConvertError(f"{parts[0]}: tensor {name} has shape {list(t0.shape)}, expected a matrix")
        tensors.append(Tensor(gname, tuple(shape), _loader(pieces, cat), parts[0], tuple(parts), name))

    if _output_is_embedding(dicts):
        # Tied embeddings (Llama 3.2 1B/3B): as the Hugging Face convert, no output.weight.
        tensors = [t for t in tensors if t.name != "output.weight"]
    n_head = params["n_heads"]
    n_head_kv = params.get("n_kv_heads") or n_head
    by_name = {t.name: t for t in tensors}
    emb = by_name.get("token_embd.weight")
    gate = by_name.get("blk.0.ffn_gate.weight")
    if emb is None or gate is None:
        raise ConvertError(
            f"{parts[0]}: not a LLaMA checkpoint (no {'tok_embeddings' if emb is None else 'layers.0.feed_forward.w1'})"
        )
    if emb.shape[-1] != params["dim"]:
        raise ConvertError(
            f"{parts[0]}: {len(parts)} part(s) give tok_embeddings.weight {emb.shape[-1]} columns but "
            f"{params_path.name} says dim {params['dim']}: a part is missing or extra"
        )
    n_vocab_params = params.get("vocab_size", -1)
    if isinstance(n_vocab_params, int) and n_vocab_params > 0 and n_vocab_params != emb.shape[0]:
        raise ConvertError(f"{params_path}: vocab_size {n_vocab_params} but the embedding has {emb.shape[0]} rows")
    ffn = params_ffn(params_path, params)
    if ffn is not None and ffn != gate.shape[0]:
        raise ConvertError(
            f"{parts[0]}: layers.0.feed_forward.w1.weight has {gate.shape[0]} rows but {params_path.name}'s "
            f"multiple_of {params['multiple_of']} and ffn_dim_multiplier {params.get('ffn_dim_multiplier')} give {ffn}"
        )
    h = Hparams(
        name=src.resolve().name,
        context_length=params.get("max_seq_len") or 2048,
        dim=params["dim"],
        n_layer=params["n_layers"],
        n_head=n_head,
        n_head_kv=n_head_kv,
        ffn=gate.shape[0],
        eps=float(params.get("norm_eps", 1e-6)),
        rope_base=float(params.get("rope_theta") or 10000.0),
    )
    if isinstance(h.dim, int) and isinstance(n_head, int) and n_head > 0:
        h.rope_scaling = rope.from_meta(params_path, params, h.dim // n_head, h.rope_base)
    tensors += rope_tensors(h, params_path)
    by_name = {t.name: t for t in tensors}
    order = canonical_order([t.name for t in tensors])
    tensors = [by_name[n] for n in order]

    def close() -> None:
        dicts.clear()

    return Plan(h, vocab, tensors, parts + [params_path, vocab.path], params_path, close)


def _output_is_embedding(dicts: list[dict]) -> bool:
    """Whether `output.weight` is a copy of `tok_embeddings.weight`, as in Meta's checkpoints of
    models with tied embeddings (its Transformer always has an output layer). The parts split
    them differently (rows and columns), so the first row is compared before the whole."""
    outs = [d.get("output.weight") for d in dicts]
    embs = [d.get("tok_embeddings.weight") for d in dicts]
    if any(t is None or t.ndim != 2 for t in outs + embs):
        return False
    if outs[0].dtype != embs[0].dtype or not torch.equal(outs[0][0], torch.cat([e[0] for e in embs])):
        return False
    out, emb = torch.cat(outs, dim=0), torch.cat(embs, dim=1)
    return out.shape == emb.shape and torch.equal(out, emb)


def _loader(pieces: list[torch.Tensor], cat: Optional[int]):
    def load():
        if len(pieces) == 1 or cat is None:  # norms are whole in every part
            return to_numpy(pieces[0])
        return to_numpy(torch.cat(pieces, dim=cat))

    return load
