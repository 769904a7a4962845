"""Write tests/data/llama_cpp_policy.json: the type llama.cpp's `llama-quantize` gives every
tensor of model shapes fortunes-4M does not have (LLaMA-2 7B, Llama 3 8B, a 70B, OpenLLaMA
3B's rows of 3200, a tied-embedding Llama 3.2 1B, rows that fit no K-quant nor 32, and rows
llama.cpp refuses), for every file type `llama-rs quantize` offers. The reference for tests/test_quant_policy.py.

The policy looks only at names, row lengths (ne[0]) and the hyperparameters, so each file has
the model's real row lengths but two rows per tensor (a few MB); the files are written to a
temporary folder and removed. Run once when llama.cpp's commit changes:

    python scripts/llama_cpp_policy_cases.py --llama-cpp ~/llama.cpp   # or LLAMA_CPP_DIR

Made with llama.cpp c392e50, no importance matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "llama_cpp_policy.json"
FTYPES = [
    "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "iq4_nl", "iq4_xs",
    "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32",
]  # fmt: skip
# name: (n_layer, n_embd, n_ff, n_vocab, n_head, n_head_kv, tied output)
CASES = {
    "llama2-7b": (32, 4096, 11008, 32000, 32, 32, False),
    "llama3-8b": (32, 4096, 14336, 128256, 32, 8, False),
    "llama2-70b": (80, 8192, 28672, 32000, 64, 8, False),
    "openllama-3b": (26, 3200, 8640, 32000, 32, 32, False),
    "llama3.2-1b-tied": (16, 2048, 8192, 128256, 32, 8, True),
    "ffn-400": (4, 512, 400, 300, 8, 2, False),  # ffn_down rows fit no K-quant and not 32: F16
    "rows-144": (4, 144, 400, 300, 4, 2, False),  # output rows do not fit Q8_0: llama.cpp refuses
}
KINDS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


def tensors(shape: tuple) -> dict[str, tuple[int, ...]]:
    """name -> numpy shape (rows, row length): the model's row lengths, two rows each."""
    n_layer, e, ff, _, _, _, tied = shape
    out = {"token_embd.weight": (2, e), "output_norm.weight": (e,)}
    if not tied:
        out["output.weight"] = (2, e)
    for i in range(n_layer):
        for k in KINDS:
            cols = ff if k == "ffn_down" else e
            out[f"blk.{i}.{k}.weight"] = (cols,) if k.endswith("norm") else (2, cols)
    return out


def write(path: Path, shape: tuple) -> None:
    n_layer, e, ff, vocab, n_head, n_head_kv, _ = shape
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(e)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_rope_dimension_count(e // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(0)
    rng = np.random.default_rng(0)
    for name, s in tensors(shape).items():
        w.add_tensor(name, rng.standard_normal(s).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def summarize(types: dict[str, str], shape: tuple) -> dict[str, str]:
    """Per kind, the types of layers 0.. as one space-separated string; others by name."""
    out = {n: t for n, t in types.items() if not n.startswith("blk.")}
    for k in KINDS:
        out[k] = " ".join(types[f"blk.{i}.{k}.weight"] for i in range(shape[0]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", type=Path, default=Path(os.environ.get("LLAMA_CPP_DIR", "~/llama.cpp")))
    args = ap.parse_args()
    exe = args.llama_cpp.expanduser() / "build" / "bin" / "llama-quantize"
    if not exe.exists():
        sys.exit(f"{exe}: not found (build llama.cpp first)")
    result = {"llama_cpp": "c392e50", "command": "llama-quantize IN.gguf OUT.gguf TYPE 2", "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case, shape in CASES.items():
            src = Path(tmp) / f"{case}.gguf"
            write(src, shape)
            got = {}
            for ft in FTYPES:
                dst = Path(tmp) / f"{case}-{ft}.gguf"
                p = subprocess.run([str(exe), str(src), str(dst), ft, "2"], capture_output=True, text=True)
                if p.returncode != 0:
                    got[ft] = "error"
                    print(f"{case} {ft}: llama-quantize failed", file=sys.stderr)
                    continue
                r = gguf.GGUFReader(dst)
                got[ft] = summarize({t.name: t.tensor_type.name for t in r.tensors}, shape)
                dst.unlink()
            src.unlink()
            keys = ["n_layer", "n_embd", "n_ff", "n_vocab", "n_head", "n_head_kv", "tied"]
            result["cases"][case] = {"shape": dict(zip(keys, shape)), "ftypes": got}
            print(case, "done", file=sys.stderr)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
