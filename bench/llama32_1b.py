"""A random-weight model of Llama-3.2-1B's shape, quantized, then `bench/compare.py` on it
against llama.cpp's llama-bench.

    python bench/llama32_1b.py [--type q4_0 q4_k_m] [-p 64] [-n 16] [-t 1 2] [-r 3] [--llama-cpp DIR]

The shape: dim 2048, 16 layers, 32 heads, 8 KV heads, ffn 8192, Meta's 128256-token Llama 3
vocab (from the `llama-models` package, through our convert's reader), tied embeddings (no
`output.weight`: the output matmul reads `token_embd`), rope base 500000 with Llama 3.2's
`rope_freqs` (factor 32). The F16 file is written once to bench/out/ with normal(0, 0.02)
weights; each type is made from it by `llama-rs quantize` (llama.cpp's per-tensor policy, so
`token_embd` is Q6_K in both, as in the files people download).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SHAPE = dict(dim=2048, n_layer=16, n_head=32, n_head_kv=8, ffn=8192)
ROPE_BASE = 500000.0


def write_f16(path: Path) -> None:
    import gguf
    import llama_models

    from llama_rs.convert.bpe_vocab import read_tiktoken
    from llama_rs.convert.rope import llama3_rope_factors
    from llama_rs.convert.writer import add_vocab

    vocab = read_tiktoken(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model")
    dim, n_layer, n_head, n_kv, ffn = (SHAPE[k] for k in ("dim", "n_layer", "n_head", "n_head_kv", "ffn"))
    head_dim, n_vocab = dim // n_head, len(vocab.tokens)
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("llama3.2-1b-random")
    w.add_context_length(131072)
    w.add_embedding_length(dim)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_file_type(1)  # mostly F16
    add_vocab(w, vocab)
    w.add_tensor("token_embd.weight", normal(n_vocab, dim))
    w.add_tensor("rope_freqs.weight", llama3_rope_factors(ROPE_BASE, head_dim, factor=32.0))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", normal(dim, dim))
        w.add_tensor(f"blk.{i}.attn_k.weight", normal(n_kv * head_dim, dim))
        w.add_tensor(f"blk.{i}.attn_v.weight", normal(n_kv * head_dim, dim))
        w.add_tensor(f"blk.{i}.attn_output.weight", normal(dim, dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal(ffn, dim))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal(ffn, dim))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal(dim, ffn))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", nargs="+", default=["q4_0", "q4_k_m"])
    ap.add_argument("-p", "--prompt", type=int, default=64)
    ap.add_argument("-n", "--gen", type=int, default=16)
    ap.add_argument("-t", "--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp checkout with build/bin/llama-bench (or LLAMA_CPP_DIR)")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    f16 = OUT / "llama3.2-1b-random-f16.gguf"
    if not f16.exists():
        print(f"writing {f16} ...", file=sys.stderr)
        write_f16(f16)
    for t in a.type:
        q = OUT / f"llama3.2-1b-random-{t}.gguf"
        if not q.exists():
            subprocess.run([sys.executable, "-m", "llama_rs_cli.app", "quantize", str(f16), str(q), t], check=True)
        cmd = [sys.executable, str(HERE / "compare.py"), "--model", str(q), "-p", str(a.prompt), "-n", str(a.gen)]
        cmd += ["-t", *map(str, a.threads), "-r", str(a.reps)]
        if a.llama_cpp:
            cmd += ["--llama-cpp", str(a.llama_cpp)]
        print(f"# {q.name}", flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
