"""Time to first token over a 10-turn chat, with the prefix cache and without it.

    python bench/chat_ttft.py MODEL [--turns 10] [--tokens 32] [-t 2] [-c 2048] [-w 1] [-np 1]
                                    [--reuse-only]

One `llama-rs serve -np 1` (one sequence slot, so what the slot holds is known; `-w` and
`-np` for more workers and slots, where routing decides which cache a turn finds). Each turn
sends the whole conversation so far to /v1/chat/completions (streaming) and appends the
reply. "reuse": the turns one after another, so the slot still holds the previous turn's
tokens and only the new ones are evaluated. "no reuse": the same conversation, with an
unrelated request between turns that takes the slot's cache, so every turn evaluates its
whole prompt (with -w 2 the unrelated request may go to the other worker). Prints each
turn's prompt tokens, TTFT and the worker that served it, both ways (or only "reuse").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Server, cpu_line, free_port  # noqa: E402

QUESTIONS = [
    "Tell me about the history of the city you like most.",
    "Why do cats sleep so much during the day?",
    "What is the best way to learn a new language as an adult?",
    "Explain how a bicycle stays upright when it moves.",
    "Which books would you take to a desert island, and why?",
    "How do bees decide where to build a new hive?",
    "What makes a good cup of coffee?",
    "Describe the sound of rain on a tin roof.",
    "How would you explain the internet to someone from 1900?",
    "What is the most surprising fact you know about the ocean?",
    "Why is the sky blue in the day and red at sunset?",
    "What should I cook tonight with rice, eggs and spinach?",
]


def turn(url: str, messages: list[dict], tokens: int) -> tuple[float, str, int]:
    """(TTFT, reply, prompt tokens) of one streaming chat turn."""
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0.7, "seed": 1, "stream": True}
    body["stream_options"] = {"include_usage": True}
    t0, first, reply, prompt_tokens = time.perf_counter(), None, "", 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            e = json.loads(line[6:])
            if e.get("usage"):
                prompt_tokens = e["usage"]["prompt_tokens"]
            for c in e.get("choices") or []:
                piece = (c.get("delta") or {}).get("content") or ""
                if piece and first is None:
                    first = time.perf_counter()
                reply += piece
    return (first or time.perf_counter()) - t0, reply, prompt_tokens


def conversation(url: str, turns: int, tokens: int, evict: bool) -> list[tuple[int, float, int]]:
    messages: list[dict] = [{"role": "system", "content": "You are a helpful assistant who answers briefly."}]
    out = []
    for k in range(turns):
        if evict:  # another client takes the only slot: its cache no longer starts with our chat
            httpx.post(url + "/v1/completions", json={"prompt": f"Unrelated request {k}", "max_tokens": 2}, timeout=600)
        messages.append({"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]})
        ttft, reply, n = turn(url, messages, tokens)
        messages.append({"role": "assistant", "content": reply})
        worker = httpx.get(url + "/health", timeout=60).json()["recent"][-1]["worker"]
        out.append((n, ttft, worker))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx", type=int, default=2048)
    ap.add_argument("-w", "--workers", type=int, default=1)
    ap.add_argument("-np", "--parallel", type=int, default=1)
    ap.add_argument("--reuse-only", action="store_true", help="only the conversation without unrelated requests")
    a = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "llama_rs_cli.app", "serve", "-m", str(a.model), "-w", str(a.workers)]
    cmd += ["-t", str(a.threads), "-np", str(a.parallel), "-c", str(a.ctx), "-q", "-l", f"127.0.0.1:{port}"]
    server = Server("llama-rs", cmd, port)
    try:
        reuse = conversation(server.url, a.turns, a.tokens, evict=False)
        fresh = [] if a.reuse_only else conversation(server.url, a.turns, a.tokens, evict=True)
    finally:
        server.stop()
    print(
        f"# {time.strftime('%Y-%m-%d')}  {cpu_line()}; {a.model.name}; -w {a.workers} -t {a.threads} -np {a.parallel}"
    )
    print(f"# {' '.join(sys.argv)}")
    if a.reuse_only:
        print("| turn | prompt tokens | TTFT | worker |")
        print("|---|---|---|---|")
        for k, (n, t, w) in enumerate(reuse, 1):
            print(f"| {k} | {n} | {t:.2f} s | {w} |")
        return
    print("| turn | prompt tokens | TTFT with the prefix cache | worker | TTFT without | worker | ratio |")
    print("|---|---|---|---|---|---|---|")
    for k, ((n, t_reuse, w), (n2, t_fresh, w2)) in enumerate(zip(reuse, fresh), 1):
        shown = n if n == n2 else f"{n} / {n2}"
        print(f"| {k} | {shown} | {t_reuse:.2f} s | {w} | {t_fresh:.2f} s | {w2} | {t_fresh / t_reuse:.1f}x |")


if __name__ == "__main__":
    main()
