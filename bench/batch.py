"""Aggregate generation speed of `Model.complete_many` (continuous batching) against the same
prompts completed one at a time, same model, threads and seeds.

    python bench/batch.py MODEL [-n 4 8 16] [--tokens 32] [-t 2]
"""

from __future__ import annotations

import argparse
import time

import llama_rs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-n", "--prompts", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    m = llama_rs.Model(a.model, n_ctx=256, n_threads=a.threads)
    m.wait_repacked()
    for n in a.prompts:
        prompts = [f"Once upon a time number {i}" for i in range(n)]
        t = time.perf_counter()
        alone = sum(m.complete(p, max_tokens=a.tokens, temp=0.8, seed=1).tokens for p in prompts)
        t_alone = time.perf_counter() - t
        t = time.perf_counter()
        many = sum(c.tokens for c in m.complete_many(prompts, max_tokens=a.tokens, temp=0.8, seed=1))
        t_many = time.perf_counter() - t
        print(
            f"{n:>3} prompts x {a.tokens} tokens: one at a time {alone / t_alone:6.1f} tok/s, "
            f"batched {many / t_many:6.1f} tok/s, ratio {t_alone / t_many:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
