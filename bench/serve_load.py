"""Concurrent streaming clients against `llama-rs serve` and llama.cpp's `llama-server`, on
the same model file and thread count, alternating by level in one run: aggregate tokens/s,
p50/p99 request latency and p50 time to first token for each number of clients C.

    python bench/serve_load.py MODEL [--llama-cpp DIR] [-c 1 2 4 8 16 32] [--tokens 48]
        [-t 2] [--parallel 16] [--rounds 2] [--vs-bench ROUNDS]

Each of the C clients sends `--rounds` streaming /v1/completions requests one after another
(a different prompt each, `--tokens` tokens, temperature 0.8, end of generation banned so
every request makes exactly that many tokens). Aggregate = all tokens / wall time of the
level. Without --llama-cpp (or LLAMA_CPP_DIR) only llama-rs runs. `--vs-bench N` first runs N
alternating rounds of one client against our server and of `llama-rs bench` tg, and prints the
ratio of their decode speeds (issue 16's "C = 1 within 5% of bench").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_line, find_llama_bench  # noqa: E402  (one way to find llama.cpp's binaries, one CPU line)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int):
        self.name, self.url, self.cmd = name, f"http://127.0.0.1:{port}", cmd
        self.start()

    def start(self) -> None:
        name, cmd = self.name, self.cmd
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"serve-load-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{name} did not start")

    def stop(self, grace: float = 20) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float, int]:
    """(latency, time to first token, tokens) of one streaming request."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                tokens += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return end - t0, (first or end) - t0, tokens


async def level(server: Server, clients: int, rounds: int, tokens: int, ban: dict, extra: dict) -> dict:
    # A new connection per request: llama-server c392e50 closes idle keep-alive connections,
    # and a request sent on one as it closes fails with "Server disconnected without sending
    # a response" while the server runs on.
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as client:

        async def user(i: int) -> list[tuple[float, float, int]]:
            out = []
            for r in range(rounds):
                body = {
                    "prompt": f"Client {i} asks question {r}: tell me a story about the number {i * 31 + r}.",
                    "max_tokens": tokens,
                    "temperature": 0.8,
                    "seed": i * 1000 + r,
                    "stream": True,
                    "logit_bias": ban,
                    **extra,
                }
                out.append(await one_request(client, server.url, body))
            return out

        t0 = time.perf_counter()
        results = [x for per in await asyncio.gather(*(user(i) for i in range(clients))) for x in per]
        wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    made = sum(r[2] for r in results)
    # Per request: the tokens after the first over the time after the first.
    decode = [(n - 1) / (t - first) for t, first, n in results if n > 1 and t > first]
    return {
        "server": server.name,
        "clients": clients,
        "tokens": made,
        "aggregate": made / wall,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "ttft_p50": statistics.median(r[1] for r in results),
        "decode_p50": statistics.median(decode) if decode else float("nan"),
    }


def run_level(server: Server, clients: int, a: argparse.Namespace, ban: dict, extra: dict) -> dict:
    """One level; a server that died during it is started again and the level run once more
    (llama-server c392e50 sometimes exits with `terminate called without an active exception`
    between requests), and the restart is printed with the dead one's log."""
    for attempt in (1, 2):
        try:
            return asyncio.run(level(server, clients, a.rounds, a.tokens, ban, extra))
        except httpx.HTTPError as e:
            try:  # a dying llama-server takes a while to exit after its last response
                server.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            if attempt == 2 or server.proc.poll() is None:
                raise SystemExit(f"{server.name} failed at C={clients}: {e!r}; its log: {server.log.name}") from None
            print(
                f"# {server.name} exited ({server.proc.returncode}) during C={clients}, log {server.log.name}; "
                "restarted, level run again",
                flush=True,
            )
            server.start()
    raise AssertionError("unreachable")


def vs_bench(server: Server, a: argparse.Namespace, ban: dict) -> None:
    """Issue 16's "C = 1 within 5% of `llama-rs bench`": `--vs-bench` rounds, alternating, of
    one request from one client (its decode speed after the first token) and of `llama-rs
    bench`'s tg measurement (`run_once`, on the same file and threads, loaded here once so a
    round takes seconds: this host's speed moves from minute to minute)."""
    import random

    import llama_rs
    from llama_rs_cli.bench import random_prompt, run_once

    m = llama_rs.Model(a.model, n_ctx=16 + a.tokens + 1, n_threads=a.threads)
    m.wait_repacked()
    prompt = random_prompt(m, random.Random(0), 16)
    run_once(m, prompt, 1)  # warm up
    one = argparse.Namespace(**{**vars(a), "rounds": 1})
    served, benched = [], []
    for _ in range(a.vs_bench):
        served.append(run_level(server, 1, one, ban, {})["decode_p50"])
        benched.append(a.tokens / run_once(m, prompt, a.tokens)[1])
    paired = statistics.median(s / b for s, b in zip(served, benched))
    print(f"# C = 1 against llama-rs bench, {a.vs_bench} alternating rounds: one client decodes at "
          f"{statistics.median(served):.1f} tok/s after its first token ({min(served):.1f}-{max(served):.1f}), "
          f"bench tg{a.tokens} {statistics.median(benched):.1f} ({min(benched):.1f}-{max(benched):.1f}); "
          f"median ratio of a round's pair {paired:.3f}", flush=True)  # fmt: skip


def eog_ids(model: Path) -> list[int]:
    import llama_rs

    return llama_rs.Tokenizer(model).eog_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp checkout with build/bin/llama-server (or LLAMA_CPP_DIR)")
    ap.add_argument("-c", "--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=16, help="sequences at once, both servers (-np)")
    ap.add_argument("--ctx", type=int, default=512, help="context per sequence")
    ap.add_argument("--vs-bench", type=int, default=0, metavar="ROUNDS",
                    help="first, ROUNDS alternating runs of one client and of `llama-rs bench` tg")  # fmt: skip
    a = ap.parse_args()

    ban = {str(t): -100 for t in eog_ids(a.model)}
    port = free_port()
    ours = Server(
        "llama-rs",
        [sys.executable, "-m", "llama_rs_cli.app", "serve", "-m", str(a.model), "-w", "1", "-t", str(a.threads),
         "-np", str(a.parallel), "-c", str(a.ctx), "--queue", "256", "-q", "-l", f"127.0.0.1:{port}"],
        port,
    )  # fmt: skip
    servers = [(ours, {})]
    bench_bin = find_llama_bench(a.llama_cpp)
    if bench_bin is not None:
        server_bin = bench_bin.parent / "llama-server"
        if not server_bin.exists():
            raise SystemExit(f"{server_bin} is missing: cmake --build build --target llama-server")
        port = free_port()
        peer = Server(
            "llama.cpp",
            [str(server_bin), "-m", str(a.model), "-t", str(a.threads), "-np", str(a.parallel),
             "-c", str(a.ctx * a.parallel), "-cb", "--port", str(port), "--host", "127.0.0.1",
             # One HTTP thread per client: its default (cores - 1) drops connections beyond that.
             "--threads-http", str(max(a.clients) + 4)],
            port,
        )  # fmt: skip
        servers.append((peer, {"ignore_eos": True}))
    print(f"# {time.strftime('%Y-%m-%d')}  {cpu_line()}; {a.model.name}; -t {a.threads} -np {a.parallel}")
    print(f"# {' '.join(sys.argv)}")
    try:
        if a.vs_bench:
            vs_bench(ours, a, ban)
        print("| C | server | tok/s (aggregate) | p50 latency | p99 latency | TTFT p50 |")
        print("|---|---|---|---|---|---|")
        for c in a.clients:
            for server, extra in servers:  # alternating: the same moment of the machine for both
                r = run_level(server, c, a, ban, extra)
                print(
                    f"| {c} | {r['server']} | {r['aggregate']:.1f} | {r['p50']:.2f} s | {r['p99']:.2f} s "
                    f"| {r['ttft_p50']:.2f} s |",
                    flush=True,
                )
    finally:
        for server, _ in servers:
            server.stop()


if __name__ == "__main__":
    main()
