"""Prompt and generation speed of llama_rs against llama-cpp-python, side by side.

    python bench/bench.py [--threads 1 2] [--prompt 128] [--gen 32] [--model FILE]

Without --model it writes (once, to bench/out/) a random-weight model with TinyLlama-1.1B's
shape (dim 2048, 22 layers, 32 heads, 4 KV heads, ffn 5632) in Q4_0, with LLaMA's real
32000-piece vocab (from ../shared/models/ggml-vocab-llama-spm.gguf) so llama.cpp accepts it.
Both engines run the same file, the same token ids, greedy, in this one process; the numbers
that matter are the ratios (timings on a shared 2-core machine are noisy).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VOCAB = HERE.parent.parent / "shared" / "models" / "ggml-vocab-llama-spm.gguf"
TINYLLAMA = dict(dim=2048, n_layer=22, n_head=32, n_head_kv=4, ffn=5632, vocab=32000)


def write_random_q4_0(
    path: Path, dim: int, n_layer: int, n_head: int, n_head_kv: int, ffn: int, vocab: int, qtype: str = "Q4_0"
) -> None:
    """A random-weight LLaMA of this shape, every matrix in `qtype` (Q4_0 or Q8_0) blocks."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    src = gguf.GGUFReader(str(VOCAB))
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_rope_dimension_count(dim // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type({"Q4_0": 2, "Q8_0": 7}[qtype])
    w.add_tokenizer_model("llama")
    w.add_token_list(
        [bytes(src.fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in src.fields["tokenizer.ggml.tokens"].data]
    )
    w.add_token_scores(src.fields["tokenizer.ggml.scores"].contents())
    w.add_token_types(src.fields["tokenizer.ggml.token_type"].contents())
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    block_bytes, scale = {"Q4_0": (18, 8), "Q8_0": (34, 128)}[qtype]

    def q4(rows: int, cols: int) -> np.ndarray:
        # Random blocks directly: f16 scale ~ 1/(range*sqrt(cols)), random quants.
        blocks = rng.integers(0, 256, size=(rows, cols // 32, block_bytes), dtype=np.uint8)
        d = np.float16(1.0 / (scale * np.sqrt(cols)))
        blocks[:, :, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        return blocks.reshape(rows, -1)

    kv = dim // n_head * n_head_kv
    w.add_tensor("token_embd.weight", q4(vocab, dim), raw_dtype=QT[qtype])
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", q4(dim, dim), raw_dtype=QT[qtype])
        w.add_tensor(f"blk.{i}.attn_k.weight", q4(kv, dim), raw_dtype=QT[qtype])
        w.add_tensor(f"blk.{i}.attn_v.weight", q4(kv, dim), raw_dtype=QT[qtype])
        w.add_tensor(f"blk.{i}.attn_output.weight", q4(dim, dim), raw_dtype=QT[qtype])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", q4(ffn, dim), raw_dtype=QT[qtype])
        w.add_tensor(f"blk.{i}.ffn_up.weight", q4(ffn, dim), raw_dtype=QT[qtype])
        w.add_tensor(f"blk.{i}.ffn_down.weight", q4(dim, ffn), raw_dtype=QT[qtype])
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", q4(vocab, dim), raw_dtype=QT[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bench_llama_rs(path: Path, threads: int, prompt: list[int], n_gen: int) -> tuple[float, float]:
    import llama_rs

    m = llama_rs.Model(path, n_ctx=len(prompt) + n_gen + 1, n_threads=threads)
    m.wait_repacked()
    m.eval(prompt[:8])  # warm the page cache and the thread pool
    m.reset()
    t = time.perf_counter()
    logits = m.eval(prompt)
    t_prompt = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_gen):
        logits = m.eval([int(np.argmax(logits))])
    t_gen = time.perf_counter() - t
    return len(prompt) / t_prompt, n_gen / t_gen


def bench_llama_cpp(path: Path, threads: int, prompt: list[int], n_gen: int) -> tuple[float, float] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    m = llama_cpp.Llama(
        str(path),
        n_ctx=len(prompt) + n_gen + 1,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=len(prompt),
        verbose=False,
        logits_all=False,
    )
    m.eval(prompt[:8])
    m.reset()
    t = time.perf_counter()
    m.eval(prompt)
    t_prompt = time.perf_counter() - t
    n_vocab = m.n_vocab()

    def last_logits() -> np.ndarray:  # llama-cpp-python keeps only the last row without logits_all
        return np.ctypeslib.as_array(m._ctx.get_logits(), shape=(n_vocab,))

    t = time.perf_counter()
    for _ in range(n_gen):
        tok = int(np.argmax(last_logits()))
        m.eval([tok])
    t_gen = time.perf_counter() - t
    return len(prompt) / t_prompt, n_gen / t_gen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a GGUF file (default: random TinyLlama-shaped Q4_0)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--gen", type=int, default=32, help="generated tokens")
    a = p.parse_args()
    path = a.model
    if path is None:
        path = HERE / "out" / "tinyllama-random-q4_0.gguf"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            print(f"writing {path} ...", file=sys.stderr)
            write_random_q4_0(path, **TINYLLAMA)
    prompt = [1] + list(np.random.default_rng(1).integers(100, 30000, a.prompt - 1).tolist())
    print(f"model {path.name}, prompt {a.prompt} tokens, {a.gen} generated")
    print(f"{'threads':>7} | {'engine':<16} | {'prompt tok/s':>12} | {'gen tok/s':>9}")
    for th in a.threads:
        ours = bench_llama_rs(path, th, prompt, a.gen)
        peer = bench_llama_cpp(path, th, prompt, a.gen)
        print(f"{th:>7} | {'llama_rs':<16} | {ours[0]:>12.1f} | {ours[1]:>9.2f}")
        if peer:
            print(f"{th:>7} | {'llama-cpp-python':<16} | {peer[0]:>12.1f} | {peer[1]:>9.2f}")
            print(f"{th:>7} | {'ratio (ours/peer)':<16} | {ours[0] / peer[0]:>12.2f} | {ours[1] / peer[1]:>9.2f}")
        else:
            print(f"{th:>7} | llama-cpp-python not installed: pip install llama-cpp-python")


if __name__ == "__main__":
    main()
