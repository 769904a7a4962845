"""Regenerate the demo model shipped in the wheel (python/llama_rs/data/fortunes-1M.gguf).

fortunes-1M is a 1M-parameter LLaMA trained on Debian's fortune cookies; its Meta-layout
checkpoint lives in ../shared/models/fortunes-1M. This writes it as GGUF with F16 matrices
and F32 norms (the file is committed, so a fresh clone has it).

    python scripts/make_demo_model.py [SRC_DIR] [OUT]

Needs torch, sentencepiece and gguf (the test extras). Once `llama-rs convert` exists this
script should call it instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm
import torch

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT.parent / "shared" / "models" / "fortunes-1M"
OUT = ROOT / "python" / "llama_rs" / "data" / "fortunes-1M.gguf"

# Meta names -> GGUF names, per layer.
LAYER_NAMES = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}


def vocab(sp: spm.SentencePieceProcessor):
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_unused(i):
            types.append(5)
        elif sp.is_byte(i):
            types.append(6)
        else:
            types.append(1)
    return tokens, scores, types


def main(src: Path = SRC, out: Path = OUT) -> None:
    params = json.loads((src / "params.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    sd = torch.load(src / "consolidated.00.pth", map_location="cpu", weights_only=True, mmap=True)
    dim, n_head = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_head
    ffn = sd["layers.0.feed_forward.w1.weight"].shape[0]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("fortunes-1M")
    w.add_context_length(params.get("max_seq_len", 256))
    w.add_embedding_length(dim)
    w.add_block_count(params["n_layers"])
    w.add_feed_forward_length(ffn)
    w.add_rope_dimension_count(dim // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(params["norm_eps"])
    w.add_rope_freq_base(params.get("rope_theta", 10000.0))
    w.add_file_type(1)  # mostly F16
    tokens, scores, types = vocab(sp)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)

    def put(name: str, t: torch.Tensor) -> None:
        a = t.float().numpy()
        w.add_tensor(name, a.astype(np.float16) if a.ndim == 2 else a.astype(np.float32))

    put("token_embd.weight", sd["tok_embeddings.weight"])
    for i in range(params["n_layers"]):
        for meta, ours in LAYER_NAMES.items():
            put(f"blk.{i}.{ours}.weight", sd[f"layers.{i}.{meta}.weight"])
    put("output_norm.weight", sd["norm.weight"])
    put("output.weight", sd["output.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    main(*args)
