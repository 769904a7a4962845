"""KV memory of a batch engine: the anonymous memory (RssAnon, so not the memory-mapped
weights) a batch of sequences adds, with caches sized up front (llama-rs before the KV pool)
or grown on demand within a `kv_cells` pool. Each configuration runs in a fresh process.

    python bench/kv_memory.py [MODEL.gguf]   # default: bench/out/tinyllama-random-q4_0.gguf

Per configuration: n_parallel sequences of a 32-token prompt generating 64 tokens each (all
admitted at once when the pool allows, the rest as others finish), in a context of n_ctx.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, re, sys
import llama_rs
KvFull = getattr(llama_rs, "KvFull", RuntimeError)  # (before the pool: never raised)

def anon():
    return int(re.search(r"RssAnon:\s+(\d+) kB", open("/proc/self/status").read())[1]) * 1024

path, n_parallel, n_ctx, kv_cells = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
m = llama_rs.Model(path, n_ctx=8, n_threads=2)
m.eval([1]); m.reset()
before = anon()
kw = {} if kv_cells == "none" else {"kv_cells": int(kv_cells)}
b = m.batch_engine(n_parallel, n_ctx=n_ctx, **kw)
waiting = [[1] + [(7 * i + k) % 1000 + 3 for i in range(31)] for k in range(n_parallel)]
params = {"max_tokens": 64, "temp": 0}
most = steps = 0
while waiting or b.active:
    while waiting and b.active < b.capacity:
        try:
            b.add(waiting[0], params)
        except KvFull:
            break
        waiting.pop(0)
    most = max(most, b.active)
    b.step()
    steps += 1
print(json.dumps({
    "anon_mib": (anon() - before) / 2**20,
    "kv_mib": getattr(b, "kv_bytes", 0) / 2**20,
    "at_once": most,
    "steps": steps,
}))
"""


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out" / "tinyllama-random-q4_0.gguf"
    configs = [(8, 2048, "none"), (8, 2048, 1024), (8, 8192, "none"), (8, 8192, 1024), (8, 8192, 512)]
    print(f"{'parallel':>8} {'n_ctx':>6} {'kv_cells':>9} {'RssAnon MiB':>12} {'KV MiB':>7} {'at once':>7} {'steps':>6}")
    for n_parallel, n_ctx, kv_cells in configs:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(model), str(n_parallel), str(n_ctx), str(kv_cells)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{n_parallel:>8} {n_ctx:>6} {kv_cells:>9} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout)
        print(
            f"{n_parallel:>8} {n_ctx:>6} {kv_cells:>9} {r['anon_mib']:>12.1f} {r['kv_mib']:>7.1f} "
            f"{r['at_once']:>7} {r['steps']:>6}"
        )


if __name__ == "__main__":
    main()
