"""Two builds of the extension against each other, in alternating fresh processes.

    python bench/ab.py OLD.so NEW.so --model FILE [-t 2] [-r 6] [--prompt 64] [--gen 32]

Each round runs OLD then NEW, each in a new process that loads FILE (timed), evaluates a
`--prompt`-token prompt (best of 3, prompt tokens/s) and generates `--gen` tokens one at a time
(best of 3, tokens/s). Build the two with `cargo build --release --lib --features
extension-module` at the two commits and copy `target/release/libllama_rs.so` aside. Prints
every round and the medians' ratio NEW / OLD; timings on a shared machine move from minute to
minute, which is why the two alternate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import llama_rs
model, threads, n_prompt, n_gen = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t = time.perf_counter()
m = llama_rs.Model(model, n_ctx=n_prompt + 3 * n_gen + 16, n_threads=threads)
load = time.perf_counter() - t
m.repacked  # waits for a background repack (builds that have one), so runs compare layouts alike
prompt = [1] + [(i * 7919) % (m.n_vocab - 200) + 100 for i in range(n_prompt - 1)]
pp = tg = 0.0
for _ in range(3):
    m.reset()
    t = time.perf_counter()
    m.eval(prompt)
    pp = max(pp, n_prompt / (time.perf_counter() - t))
m.reset()
m.eval(prompt[:4])
for _ in range(3):
    t = time.perf_counter()
    for i in range(n_gen):
        m.eval([100 + i])
    tg = max(tg, n_gen / (time.perf_counter() - t))
print(json.dumps({"load": load, "pp": pp, "tg": tg}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="the extension module built at the base commit")
    ap.add_argument("new", type=Path, help="the extension module built with the change")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--rounds", type=int, default=6)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument("--gen", type=int, default=32, help="generated tokens (default 32)")
    a = ap.parse_args()
    for p in (a.old, a.new, a.model):
        if not p.is_file():
            raise SystemExit(f"{p}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        # A copy of the Python package per build, so the two never overwrite each other.
        dirs = {}
        for name, so in (("old", a.old), ("new", a.new)):
            d = Path(tmp) / name
            shutil.copytree(PYTHON_DIR / "llama_rs", d / "llama_rs")
            shutil.copy(so, d / "llama_rs" / "_core.abi3.so")
            dirs[name] = d
        res: dict[str, list[dict]] = {"old": [], "new": []}
        for r in range(a.rounds):
            for name in ("old", "new"):
                args = [str(dirs[name]), str(a.model), str(a.threads), str(a.prompt), str(a.gen)]
                out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{name} build failed:\n{out.stderr.strip()}")
                res[name].append(json.loads(out.stdout))
                x = res[name][-1]
                print(
                    f"round {r + 1} {name}: load {x['load']:.3f} s, pp{a.prompt} {x['pp']:.1f} tok/s, tg {x['tg']:.2f} tok/s"
                )
    print(f"{a.model.name}, {a.threads} threads, {a.rounds} rounds, medians new / old:")
    for k in ("load", "pp", "tg"):
        old, new = (statistics.median(x[k] for x in res[n]) for n in ("old", "new"))
        print(f"  {k}: {old:.3f} -> {new:.3f} ({new / old:.3f}x)")


if __name__ == "__main__":
    main()
