"""Load time and resident memory, llama_rs and llama-cpp-python, each in a fresh process.

    python bench/load_memory.py [--shape tinyllama|7b] [--model FILE] [-c 2048] [-r 3]

The file is read once first so it sits in the page cache (the target is "load under 1 s from
the page cache": a memory map, no copy). Each run is a new Python process that imports the
engine, then times the constructor and the end of the background repack (`wait_repacked`: the
weights in the layout this CPU's kernels read fastest; llama-cpp-python: the constructor again),
evaluates a 32-token prompt and generates 32 tokens, and reads /proc/self/status: VmRSS
(total), RssFile (mapped file pages) and RssAnon (heap: KV cache, scratch buffers, the
interpreter). The bound compared against is file size + KV cache
(f16, n_ctx positions) + 10%; the process's RSS before the model is loaded (interpreter and
imports) is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import SHAPES  # noqa: E402

CHILD = r"""
import json, sys, time
engine, path, n_ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssFile", "RssAnon"):
            out[k] = int(v.split()[0]) * 1024
    return out
if engine == "llama_rs":
    import llama_rs
    before = status()
    t = time.perf_counter()
    m = llama_rs.Model(path, n_ctx=n_ctx, n_threads=2)
    load = time.perf_counter() - t
    m.wait_repacked()
    ready = time.perf_counter() - t
    m.eval(list(range(1, 33)))
    for i in range(32):
        m.eval([100 + i])
else:
    import llama_cpp
    before = status()
    t = time.perf_counter()
    m = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=2, n_batch=32, verbose=False)
    load = ready = time.perf_counter() - t
    m.eval(list(range(1, 33)))
    for i in range(32):
        m.eval([100 + i])
print(json.dumps({"load": load, "ready": ready, "before": before, "after": status()}))
"""


def spread(secs: list[float]) -> str:
    """Mean ± stdev, 13 characters wide."""
    return f"{statistics.mean(secs):6.3f}±{statistics.stdev(secs) if len(secs) > 1 else 0:5.3f}"


def kv_bytes(path: Path, n_ctx: int) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("llama.")}
    dim, n_head = f["llama.embedding_length"], f["llama.attention.head_count"]
    n_kv = f.get("llama.attention.head_count_kv", n_head)
    return n_ctx * (dim // n_head) * n_kv * f["llama.block_count"] * 2 * 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    p.add_argument("--model", type=Path)
    p.add_argument("-c", "--ctx", type=int, default=2048)
    p.add_argument("-r", "--reps", type=int, default=3)
    a = p.parse_args()
    path = a.model or HERE / "out" / SHAPES[a.shape][0]
    if not path.exists():
        sys.exit(f"{path} does not exist: run bench/compare.py --shape {a.shape} once to write it")
    with open(path, "rb") as f:  # into the page cache
        while f.read(1 << 24):
            pass
    size, kv = path.stat().st_size, kv_bytes(path, a.ctx)
    bound = (size + kv) * 1.10
    mib = lambda b: f"{b / 2**20:7.0f} MiB"  # noqa: E731
    print(
        f"model {path.name}: file {mib(size)}, f16 KV cache for {a.ctx} positions {mib(kv)}, "
        f"bound file + KV + 10% = {mib(bound)}"
    )
    print(
        f"{'engine':>17} | {'load s':>13} | {'repacked s':>13} | {'RSS before':>11} | {'RSS after':>11} | {'file pages':>11} | "
        f"{'anon':>11} | RSS / bound"
    )
    # llama_rs twice: as it loads by default (on AVX-512 CPUs Q4_0/Q8_0 weights are repacked
    # into private memory) and with LLAMA_RS_REPACK=0 (the weights used in place from the map).
    variants = [("llama_rs", "llama_rs", {}), ("llama_rs REPACK=0", "llama_rs", {"LLAMA_RS_REPACK": "0"})]
    for label, engine, extra in [*variants, ("llama-cpp-python", "llama-cpp-python", {})]:
        runs = []
        for _ in range(a.reps):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, engine, str(path), str(a.ctx)],
                capture_output=True,
                text=True,
                env={**os.environ, **extra},
            )
            if out.returncode != 0:
                tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"{label:>17} | failed (exit {out.returncode}): {tail[:100]}")
                break
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not runs:
            continue
        last = runs[-1]
        rss = last["after"]["VmRSS"]
        print(
            f"{label:>17} | {spread([r['load'] for r in runs])} | {spread([r['ready'] for r in runs])} | "
            f"{mib(last['before']['VmRSS']):>11} | {mib(rss):>11} | {mib(last['after']['RssFile']):>11} | "
            f"{mib(last['after']['RssAnon']):>11} | {rss / bound:.2f}"
        )


if __name__ == "__main__":
    main()
