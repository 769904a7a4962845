"""llama2.c checkpoints (Karpathy's `run.c`, legacy export version 0): a header of 7 int32
`dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len` (a negative vocab size
means the classifier is not shared with the embedding), then float32 weights:
token_embedding_table, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 (each for all layers),
rms_final, freq_cis_real, freq_cis_imag, and wcls when unshared. run.c uses adjacent-pair
rotary, which is GGUF's layout. The vocab comes from a SentencePiece model file.

Tensors are read with plain file reads, one at a time (no mapping at all).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import ConvertError
from .vocab import load_vocab
from .writer import Hparams, Plan, Tensor, canonical_order

HEADER = struct.Struct("<7i")
MAGIC_V1 = 0x616B3432  # "ak42": llama2.c's newer export versions


def plan(src: Path, vocab_path: Optional[Path] = None) -> Plan:
    size = src.stat().st_size
    with open(src, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < 4:
        raise ConvertError(f"{src}: too short to be a llama2.c checkpoint ({size} bytes)")
    if struct.unpack("<I", head[:4])[0] == MAGIC_V1:
        raise ConvertError(
            f"{src}: llama2.c export version >= 1 is not supported (export with --version 0, the legacy format)"
        )
    if len(head) < HEADER.size:
        raise ConvertError(f"{src}: too short to be a llama2.c checkpoint ({size} bytes)")
    dim, hidden, n_layer, n_head, n_kv, vocab_size, seq_len = HEADER.unpack(head)
    shared = vocab_size > 0
    n_vocab = abs(vocab_size)
    if (
        min(dim, hidden, n_layer, n_head, n_kv, n_vocab, seq_len) < 1
        or dim % n_head
        or n_head % n_kv
        or (dim // n_head) % 2
    ):
        raise ConvertError(
            f"{src}: not a llama2.c checkpoint (header dim={dim} hidden_dim={hidden} n_layers={n_layer} "
            f"n_heads={n_head} n_kv_heads={n_kv} vocab_size={vocab_size} seq_len={seq_len})"
        )
    if vocab_path is None:
        raise ConvertError(
            f"{src}: a llama2.c checkpoint carries no SentencePiece vocab: pass its tokenizer.model with --vocab"
        )
    head_dim = dim // n_head
    kv = head_dim * n_kv

    # (GGUF name pattern, per-layer shape, layered?) in file order.
    layout: list[tuple[str, tuple[int, ...], bool]] = [
        ("token_embd.weight", (n_vocab, dim), False),
        ("blk.{}.attn_norm.weight", (dim,), True),
        ("blk.{}.attn_q.weight", (dim, dim), True),
        ("blk.{}.attn_k.weight", (kv, dim), True),
        ("blk.{}.attn_v.weight", (kv, dim), True),
        ("blk.{}.attn_output.weight", (dim, dim), True),
        ("blk.{}.ffn_norm.weight", (dim,), True),
        ("blk.{}.ffn_gate.weight", (hidden, dim), True),
        ("blk.{}.ffn_down.weight", (dim, hidden), True),
        ("blk.{}.ffn_up.weight", (hidden, dim), True),
        ("output_norm.weight", (dim,), False),
        (None, (seq_len, head_dim // 2), False),  # freq_cis_real: recomputed at run time
        (None, (seq_len, head_dim // 2), False),  # freq_cis_imag
    ]
    if not shared:
        layout.append(("output.weight", (n_vocab, dim), False))

    tensors = []
    offset = HEADER.size
    for name, shape, layered in layout:
        n = int(np.prod(shape))
        for i in range(n_layer if layered else 1):
            if name is not None:
                tensors.append(Tensor(name.format(i), shape, _reader(src, offset, shape), src))
            offset += 4 * n
    if offset != size:
        raise ConvertError(
            f"{src}: {size} bytes, but a llama2.c checkpoint with this header "
            f"({'shared' if shared else 'separate'} classifier) has {offset} bytes: truncated or not llama2.c"
        )
    h = Hparams(
        name=src.stem,
        context_length=seq_len,
        dim=dim,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_kv,
        ffn=hidden,
        eps=1e-5,
        rope_base=10000.0,
    )
    vocab = load_vocab(vocab_path)
    by_name = {t.name: t for t in tensors}
    tensors = [by_name[n] for n in canonical_order(list(by_name))]
    return Plan(h, vocab, tensors, [src, vocab.path], src)


def _reader(path: Path, offset: int, shape: tuple[int, ...]):
    def load() -> np.ndarray:
        count = int(np.prod(shape))
        with open(path, "rb") as f:
            a = np.fromfile(f, dtype="<f4", count=count, offset=offset)
        if a.size != count:
            raise ConvertError(f"{path}: truncated while reading tensor data")
        return a.reshape(shape)

    return load
