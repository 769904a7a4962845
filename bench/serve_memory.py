"""Memory of `llama-rs serve` workers: the weights are memory-mapped, so w workers share one
copy in the page cache. Prints RSS and PSS (proportional set size: shared pages divided
among the processes that map them) of each worker, with 1 and with 2 workers.

    python bench/serve_memory.py [MODEL.gguf]   # default: bench/out/tinyllama-random-q4_0.gguf
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def mem_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key] = int(rest.split()[0])
    return out


def measure(model: Path, workers: int) -> list[dict[str, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_rs_cli.app",
            "serve",
            "-m",
            str(model),
            "-w",
            str(workers),
            "-t",
            "1",
            "-l",
            f"127.0.0.1:{port}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # One request per worker, at the same time, so every worker has touched every weight.
        import threading

        ts = [
            threading.Thread(
                target=lambda: httpx.post(url + "/api/completion", json={"prompt": "Hello", "tokens": 4}, timeout=600)
            )
            for _ in range(workers)
        ]
        [t.start() for t in ts]
        [t.join() for t in ts]
        pids = [w["pid"] for w in httpx.get(url + "/health").json()["workers"]]
        return [mem_kb(p) for p in pids]
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out" / "tinyllama-random-q4_0.gguf"
    print(f"model {model.name} ({model.stat().st_size / 2**20:.0f} MiB)")
    for w in (1, 2):
        rows = measure(model, w)
        for i, m in enumerate(rows):
            print(f"workers={w} worker {i}: RSS {m['Rss'] / 1024:.0f} MiB, PSS {m['Pss'] / 1024:.0f} MiB")
        print(
            f"workers={w} total: RSS {sum(m['Rss'] for m in rows) / 1024:.0f} MiB, "
            f"PSS {sum(m['Pss'] for m in rows) / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
