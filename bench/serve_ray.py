"""What Ray Serve costs on one machine: `llama-rs serve` directly against `llama-rs serve --ray
local` with 1 and 2 replicas, the same model and the same total threads, C concurrent
streaming clients (bench/serve_load.py's clients and figures).

    python bench/serve_ray.py MODEL [-c 1 4 16] [--tokens 48] [-t 2] [--parallel 16] [--rounds 2]

The servers run one after another (each alone on the machine: an idle Ray instance beside
the direct server would slow it). 1 replica gets all `-t` threads; 2 replicas get `-t / 2`
each, so both Ray setups use the threads the direct server has.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Server, cpu_line, eog_ids, free_port, level  # noqa: E402  (one client, one set of figures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("-c", "--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2, help="total threads (even, for 2 replicas)")
    ap.add_argument("--parallel", type=int, default=16, help="sequences at once per worker (-np)")
    ap.add_argument("--ctx", type=int, default=512, help="context per sequence")
    a = ap.parse_args()

    ban = {str(t): -100 for t in eog_ids(a.model)}
    common = ["-m", str(a.model.resolve()), "-np", str(a.parallel), "-c", str(a.ctx), "--queue", "256", "-q"]
    setups = [
        ("serve", ["-w", "1", "-t", str(a.threads)]),
        ("ray 1 replica", ["--ray", "local", "--replicas", "1", "-t", str(a.threads)]),
        ("ray 2 replicas", ["--ray", "local", "--replicas", "2", "-t", str(a.threads // 2)]),
    ]
    print(f"# {time.strftime('%Y-%m-%d')}  {cpu_line()}; {a.model.name}; {a.threads} threads in all, -np {a.parallel}")
    print(f"# {' '.join(sys.argv)}")
    print("| C | server | tok/s (aggregate) | p50 latency | p99 latency | TTFT p50 |")
    print("|---|---|---|---|---|---|")
    for name, args in setups:
        port = free_port()
        cmd = [sys.executable, "-m", "llama_rs_cli.app", "serve", *common, *args, "-l", f"127.0.0.1:{port}"]
        server = Server(name, cmd, port)
        try:
            for c in a.clients:
                try:
                    r = asyncio.run(level(server, c, a.rounds, a.tokens, ban, {}))
                except httpx.HTTPError as e:
                    raise SystemExit(f"{name} failed at C={c}: {e!r}; its log: {server.log.name}") from None
                print(
                    f"| {c} | {name} | {r['aggregate']:.1f} | {r['p50']:.2f} s | {r['p99']:.2f} s "
                    f"| {r['ttft_p50']:.2f} s |",
                    flush=True,
                )
        finally:
            server.stop(grace=90)  # Ray takes a while to shut down


if __name__ == "__main__":
    main()
