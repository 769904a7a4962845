"""llama_rs against llama.cpp, side by side: pp and tg at each thread count, ratios, memory
read bandwidth and tg as a fraction of its roofline.

    python bench/compare.py [--shape tinyllama|7b] [--type Q4_0|Q8_0] [--model FILE] [-p 512] [-n 128]
                            [-t 1 2] [-r 3] [--llama-cpp DIR] [--peer llama-bench|llama-cpp-python|both]

Peers: llama.cpp's own `llama-bench` built from source (DIR/build/bin/llama-bench, DIR from
--llama-cpp or LLAMA_CPP_DIR; build it natively as DEVELOPERS.md says), and llama-cpp-python
where it is installed and works on this CPU (0.3.x crashes on some AVX-512 Xeons). The default
is llama-bench when it is found, else llama-cpp-python. The ratio column is ours over the first
peer. Each llama-bench repetition is one `llama-bench -r 1` run (its model load is not timed).

pp: one prompt of `-p` tokens evaluated as one batch from an empty context (tokens/s).
tg: `-n` tokens evaluated one at a time from an empty context (tokens/s), as llama-bench does.
For each thread count and repetition the two engines run alternately (ours, theirs, ours,
theirs ...) in this one process, on the same file and the same token ids, so machine noise
hits both; the table shows mean +- standard deviation and the ratio of the means.

Roofline: generating one token reads every weight once (all tensors but token_embd, of which
one row is read); at the measured read bandwidth B that allows at most B / bytes tokens/s.
On a shared host B itself moves by up to 2x from minute to minute, so each engine's tg run is
bracketed by two probes, one just before and one just after it, and that run's fraction is
taken against their mean; the table gives the mean of those per-run fractions and the range
of every probe. A probe is the best of passes summing a 512 MiB buffer split over the threads
with the widest loads the kernels use (64 bytes with AVX-512): `llama_rs._core.read_bandwidth`.
Random-weight models are written once to bench/out/ (see bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import TINYLLAMA, write_random_q4_0  # noqa: E402

LLAMA7B = dict(dim=4096, n_layer=32, n_head=32, n_head_kv=32, ffn=11008, vocab=32000)
SHAPES = {"tinyllama": ("tinyllama-random-q4_0.gguf", TINYLLAMA), "7b": ("llama7b-random-q4_0.gguf", LLAMA7B)}


def weight_bytes_per_token(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            total += int(t.n_bytes) // int(t.shape[-1] if len(t.shape) > 1 else 1)  # one row
        else:
            total += int(t.n_bytes)
    return total


def read_bandwidth(threads: int, gib: float = 1.0, passes: int = 3) -> float:
    """Bytes/s reading a buffer larger than any cache with `threads` threads (llama_rs's
    streaming read probe: 64-byte loads with AVX-512, else 32, best of passes with and without prefetch)."""
    import llama_rs._core as core

    return core.read_bandwidth(int(gib * (1 << 30)), threads, passes)


class Roofline:
    """tg as a fraction of the read roofline, each run against probes taken just before and after it."""

    def __init__(self, threads: int, bytes_per_token: int, engines: list[str], enabled: bool = True):
        self.threads, self.bpt, self.enabled = threads, bytes_per_token, enabled
        self.probes: list[float] = []
        self.fractions: dict[str, list[float]] = {e: [] for e in engines}

    def bracket(self, engine: str, run, *args):
        """Run `run(*args)` (tg tokens/s, or a (pp, tg) pair) between two probes."""
        if not self.enabled:
            return run(*args)
        before = read_bandwidth(self.threads, gib=0.5, passes=2)
        out = run(*args)
        after = read_bandwidth(self.threads, gib=0.5, passes=2)
        self.probes += [before, after]
        tg = out[1] if isinstance(out, tuple) else out
        self.fractions[engine].append(tg * self.bpt / ((before + after) / 2))
        return out

    def summary(self) -> str:
        if not self.probes:
            return ""
        runs = ", ".join(f"{e} {statistics.mean(f):.0%} ({min(f):.0%}-{max(f):.0%})" for e, f in self.fractions.items())
        return f"bw {min(self.probes) / 1e9:.1f}-{max(self.probes) / 1e9:.1f} GB/s; {runs}"


class Ours:
    name = "llama_rs"

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_rs

        self.m = llama_rs.Model(path, n_ctx=n_ctx, n_threads=threads)
        self.m.wait_repacked()  # timed runs read the layout every later run reads
        self.m.eval([1, 2, 3, 4])  # page cache and thread pool warm
        self.m.reset()

    def pp(self, prompt: list[int]) -> float:
        self.m.reset()
        t = time.perf_counter()
        self.m.eval(prompt)
        return len(prompt) / (time.perf_counter() - t)

    def tg(self, ids: list[int]) -> float:
        self.m.reset()
        t = time.perf_counter()
        for i in ids:
            self.m.eval([i])
        return len(ids) / (time.perf_counter() - t)


class Theirs:
    name = "llama-cpp-python"

    def __init__(self, path: Path, threads: int, n_ctx: int, n_batch: int):
        import llama_cpp

        self.m = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=n_batch,
            n_ubatch=n_batch,
            verbose=False,
            logits_all=False,
        )
        self.m.eval([1, 2, 3, 4])
        self.m.reset()

    def pp(self, prompt: list[int]) -> float:
        self.m.reset()
        t = time.perf_counter()
        self.m.eval(prompt)
        return len(prompt) / (time.perf_counter() - t)

    def tg(self, ids: list[int]) -> float:
        self.m.reset()
        t = time.perf_counter()
        for i in ids:
            self.m.eval([i])
        return len(ids) / (time.perf_counter() - t)


class LlamaBench:
    """llama.cpp's llama-bench, one process per repetition (pp and tg of the same sizes)."""

    name = "llama-bench"

    def __init__(self, exe: Path, path: Path, threads: int):
        self.cmd = [str(exe), "-m", str(path), "-t", str(threads), "-r", "1", "-o", "json"]

    def both(self, n_prompt: int, n_gen: int) -> tuple[float, float]:
        p = subprocess.run(
            [*self.cmd, "-p", str(n_prompt), "-n", str(n_gen)], capture_output=True, text=True, timeout=3600
        )
        if p.returncode != 0:
            raise SystemExit(f"llama-bench failed ({p.returncode}): {p.stderr.strip()[-500:]}")
        rows = json.loads(p.stdout)
        by = {("pp" if r["n_gen"] == 0 else "tg"): r["avg_ts"] for r in rows}
        return by["pp"], by["tg"]


def find_llama_bench(given: Path | None) -> Path | None:
    d = given or (Path(os.environ["LLAMA_CPP_DIR"]) if os.environ.get("LLAMA_CPP_DIR") else None)
    if d is None:
        return None
    exe = Path(d).expanduser() / "build" / "bin" / "llama-bench"
    if not exe.exists():
        raise SystemExit(f"{exe} not found: build it with `cmake --build build --target llama-bench` in {d}")
    return exe


def fmt(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):8.2f} ± {sd:5.2f}"


def cpu_line() -> str:
    """The CPU for the header of a benchmark: its name with family and model (the name alone,
    "AMD EPYC", does not tell Zen 3, 4 and 5 apart) and the number of CPUs."""
    name = platform.processor() or platform.machine()
    try:
        first = open("/proc/cpuinfo").read().split("\n\n")[0]
        info = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
        name = f"{info['model name']} (family {info['cpu family']} model {info['model']})"
    except (OSError, KeyError):
        pass
    return f"{name}, {os.cpu_count()} cpus"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    p.add_argument("--model", type=Path, help="a GGUF file instead of a random-weight model")
    p.add_argument("--type", choices=["Q4_0", "Q8_0"], default="Q4_0", help="block type of the random-weight model")
    p.add_argument("-p", "--prompt", type=int, default=512)
    p.add_argument("-n", "--gen", type=int, default=128)
    p.add_argument("-t", "--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("-r", "--reps", type=int, default=3)
    p.add_argument("--no-bandwidth", action="store_true")
    p.add_argument("--llama-cpp", type=Path, help="llama.cpp checkout with build/bin/llama-bench (or LLAMA_CPP_DIR)")
    p.add_argument("--peer", choices=["auto", "llama-bench", "llama-cpp-python", "both"], default="auto")
    a = p.parse_args()
    exe = find_llama_bench(a.llama_cpp)
    peers = {"auto": ["llama-bench" if exe else "llama-cpp-python"], "both": ["llama-bench", "llama-cpp-python"]}.get(
        a.peer, [a.peer]
    )
    if "llama-bench" in peers and exe is None:
        p.error("--peer llama-bench needs --llama-cpp DIR or LLAMA_CPP_DIR")

    path = a.model
    if path is None:
        fname, shape = SHAPES[a.shape]
        path = HERE / "out" / (fname if a.type == "Q4_0" else fname.replace("q4_0", a.type.lower()))
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            print(f"writing {path} ...", file=sys.stderr)
            write_random_q4_0(path, **shape, qtype=a.type)
    import gguf

    import llama_rs

    versions = []
    if "llama-cpp-python" in peers:
        import llama_cpp

        versions.append(f"llama-cpp-python {llama_cpp.__version__}")
    if "llama-bench" in peers:
        versions.append(f"llama-bench {exe}")

    n_vocab = len(gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(1)
    hi = min(30000, n_vocab)
    prompt = [1] + rng.integers(min(100, hi - 1), hi, a.prompt - 1).tolist()
    gen_ids = [1] + rng.integers(min(100, hi - 1), hi, a.gen - 1).tolist()
    n_ctx = max(a.prompt, a.gen) + 8
    bpt = weight_bytes_per_token(path)
    print(
        f"{time.strftime('%Y-%m-%d')}  {cpu_line()}; llama_rs {getattr(llama_rs, '__version__', '?')} "
        f"(kernels {llama_rs._core.kernel_level()[0]}, generation prefetch hints {'on' if llama_rs._core.prefetch_hints()[0] else 'off'}); "
        + ", ".join(versions)
    )
    print(
        f"model {path.name} ({path.stat().st_size / 2**20:.0f} MiB, {bpt / 2**20:.0f} MiB read per generated token); "
        f"pp{a.prompt} tg{a.gen}, {a.reps} reps, engines alternating"
    )
    head = " | ".join(f"{n + ' tok/s':>22}" for n in ["llama_rs", *peers])
    print(f"{'threads':>7} | {'test':>6} | {head} | {'ratio':>5} | roofline")
    for th in a.threads:
        ours = Ours(path, th, n_ctx)
        others = {}
        if "llama-bench" in peers:
            others["llama-bench"] = LlamaBench(exe, path, th)
        if "llama-cpp-python" in peers:
            others["llama-cpp-python"] = Theirs(path, th, n_ctx, a.prompt)
        res = {(e, k): [] for e in ["ours", *peers] for k in ("pp", "tg")}
        roof = Roofline(th, bpt, ["ours", *peers], enabled=not a.no_bandwidth)

        for _ in range(a.reps):  # alternating: ours, each peer, ours, ...
            res["ours", "pp"].append(ours.pp(prompt))
            res["ours", "tg"].append(roof.bracket("ours", ours.tg, gen_ids))
            for name, peer in others.items():
                if isinstance(peer, LlamaBench):
                    pp, tg = roof.bracket(name, peer.both, a.prompt, a.gen)
                else:
                    pp = peer.pp(prompt)
                    tg = roof.bracket(name, peer.tg, gen_ids)
                res[name, "pp"].append(pp)
                res[name, "tg"].append(tg)
        del ours, others
        for k in ("pp", "tg"):
            o = res["ours", k]
            ratio = statistics.mean(o) / statistics.mean(res[peers[0], k])
            roofline = ""
            if k == "tg":
                roofline = roof.summary()
            name = f"{k}{a.prompt if k == 'pp' else a.gen}"
            cols = " | ".join(f"{fmt(res[n, k]):>22}" for n in ["ours", *peers])
            print(f"{th:>7} | {name:>6} | {cols} | {ratio:5.2f} | {roofline}", flush=True)


if __name__ == "__main__":
    main()
