"""Write tests/data/llama_cpp_kquant_logprobs.json: llama.cpp's greedy ids and top-5 logprobs at
each step for the `kquants` prompts of ../shared/models/expected.json, per llama.cpp build.

Why: on these K-quant files greedy ids are not a fixed property of llama.cpp. Each matmul
rounds its input to Q8_K (256 values, 8 bits), so a last-bit difference upstream sometimes
moves a rounded activation by one step, and the logits move by up to ~0.3. The same commit
built natively (AMX kernels) and for AVX2 only agrees on 20, 11 and 40 of the 40 ids.
tests/test_kquant_models.py checks our logprobs against these, with that tolerance.

llama.cpp is not committed; build it as DEVELOPERS.md says (and, for the second row, an
AVX2-only build: `cmake -B build-avx2 -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON
-DGGML_F16C=ON ...`), then:

    python scripts/llama_cpp_kquant_logprobs.py --build native=~/llama.cpp/build \
        --build avx2=~/llama.cpp/build-avx2

Made with llama.cpp c392e50, `llama-server -t 2 -c 256 -np 1`, f16 KV cache, temperature 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "models"
OUT = ROOT / "tests" / "data" / "llama_cpp_kquant_logprobs.json"
TOP = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def record(server: Path, model: Path, cases: dict) -> dict:
    port = free_port()
    cmd = [str(server), "-m", str(model), "--port", str(port), "-t", "2", "-c", "256", "-np", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"{server} did not come up")
        out = {}
        for name, case in cases.items():
            r = post(
                port,
                dict(
                    prompt=case["prompt_ids"],
                    n_predict=len(case["continuation"]),
                    temperature=0,
                    cache_prompt=False,
                    return_tokens=True,
                    n_probs=TOP,
                ),
            )
            out[name] = {
                "ids": r["tokens"],
                "top": [
                    [[t["id"], round(t["logprob"], 6)] for t in s["top_logprobs"]]
                    for s in r["completion_probabilities"]
                ],
            }
        return out
    finally:
        p.terminate()
        p.wait()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, metavar="NAME=DIR", help="a llama.cpp build directory")
    args = ap.parse_args()
    expected = json.loads((MODELS / "expected.json").read_text())["kquants"]["greedy"]
    by_file: dict[str, dict] = {}
    for name, case in expected.items():
        by_file.setdefault(case["file"], {})[name] = case
    builds = {}
    for spec in args.build:
        label, _, d = spec.partition("=")
        server = Path(d).expanduser() / "bin" / "llama-server"
        cases = {}
        for file, group in by_file.items():
            cases.update(record(server, MODELS / file, group))
        builds[label] = cases
    OUT.write_text(
        json.dumps(
            {
                "llama_cpp": "c392e50",
                "settings": "llama-server -t 2 -c 256 -np 1, f16 KV, temperature 0",
                "cpu": cpu_name(),
                "builds": builds,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
