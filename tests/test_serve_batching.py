"""`serve --parallel`: many requests generated together by one worker (continuous batching).
Each request gets exactly the text it gets alone, whatever else runs beside it and whenever
it joins; one cancelled or killed request fails no other; load leaves no KV cells or memory
behind; a full server answers 503 or queues, never crashes. Counted through /metrics."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import Server, slow_model_server, wait_until
from test_batch import PROMPTS as BATCH_PROMPTS

PROMPTS = [*BATCH_PROMPTS, "To be, or not to be", "Fortune favours", "It is a truth universally acknowledged, that"]


def body(i: int, **kw) -> dict:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 32, "temperature": 0.9, "seed": 100 + i, **kw}


def metrics(s: Server) -> dict[str, float]:
    """Every sample of /metrics, summed over labels: {name: value}."""
    r = httpx.get(s.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.fullmatch(r'([a-z_]+)(\{worker="\d+"\})? (-?[0-9.e+]+)', line)
        assert m, f"not a Prometheus sample: {line!r}"
        out[m[1]] = out.get(m[1], 0.0) + float(m[3])
    return out


def worker_rss(s: Server) -> int:
    total = 0
    for w in s.health()["workers"]:
        status = Path(f"/proc/{w['pid']}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024
    return total


@pytest.fixture(scope="module")
def batch_server():
    s = Server("-w", "1", "-t", "2", "-np", "8", "-c", "256", "--queue", "64")
    yield s
    s.stop()


def complete(s: Server, b: dict) -> str:
    r = s.post("/v1/completions", b)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_a_request_gets_its_text_alone_or_among_others(batch_server: Server) -> None:
    alone = [complete(batch_server, body(i)) for i in range(16)]
    got: dict[int, str] = {}

    def one(i: int) -> None:
        time.sleep(0.03 * (i % 5))  # join at different steps
        got[i] = complete(batch_server, body(i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(16)] == alone
    # They did share the worker: some requests ran while others were running.
    recent = sorted(batch_server.health()["recent"], key=lambda r: r["started"])
    assert any(b["started"] < a["ended"] for a, b in zip(recent, recent[1:])), recent


def test_cancelling_one_stream_leaves_the_others_unchanged(batch_server: Server) -> None:
    alone = [complete(batch_server, body(i, max_tokens=60)) for i in range(4)]
    texts: dict[int, str] = {}
    started = threading.Barrier(4)

    def stream(i: int) -> None:
        with httpx.stream("POST", batch_server.url + "/v1/completions", json=body(i, max_tokens=60, stream=True)) as r:
            events = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {"))
            pieces = [next(events)["choices"][0]["text"]]
            started.wait(timeout=60)  # all four are running
            if i == 2:
                return  # hangs up mid-stream
            pieces += [e["choices"][0]["text"] for e in events if e.get("choices")]
            texts[i] = "".join(pieces)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: texts[i] for i in (0, 1, 3)} == {i: alone[i] for i in (0, 1, 3)}
    wait_until(lambda: metrics(batch_server)["llama_rs_sequences_active"] == 0)


def test_load_leaves_no_kv_cells_or_memory_behind(batch_server: Server) -> None:
    rng = random.Random(5)
    failures: list[str] = []

    def requests(n: int) -> None:
        def one(k: int) -> None:
            words = " ".join(rng.choice(["fortune", "cookie", "never", "a", "the"]) for _ in range(rng.randint(1, 60)))
            b = {"prompt": words, "max_tokens": rng.randint(1, 40), "temperature": 0.8, "seed": k}
            if k % 7 == 3:  # some clients give up early
                try:
                    httpx.post(batch_server.url + "/v1/completions", json=b, timeout=0.05)
                except httpx.TimeoutException:
                    pass
                return
            r = batch_server.post("/v1/completions", b)
            if r.status_code != 200:
                failures.append(r.text)

        ks = iter(range(n))
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    k = next(ks, None)
                if k is None:
                    return
                one(k)

        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    requests(40)  # warm up: allocations that stay for the life of the worker
    wait_until(lambda: metrics(batch_server)["llama_rs_sequences_active"] == 0)
    before, rss_before = metrics(batch_server), worker_rss(batch_server)
    requests(200)
    assert not failures, failures[:3]
    wait_until(lambda: metrics(batch_server)["llama_rs_kv_cells_used"] == 0, timeout=60)
    after, rss_after = metrics(batch_server), worker_rss(batch_server)
    assert after["llama_rs_sequences_active"] == 0 and after["llama_rs_queue_waiting"] == 0, after
    assert after["llama_rs_kv_cells_cached"] <= after["llama_rs_kv_cells_total"] == 8 * 256
    assert after["llama_rs_requests_total"] - before["llama_rs_requests_total"] >= 200 * 6 // 7
    assert after["llama_rs_generated_tokens_total"] > before["llama_rs_generated_tokens_total"]
    assert after["llama_rs_worker_restarts_total"] == 0
    assert rss_after - rss_before < 16 << 20, (rss_before, rss_after)


def test_usage_counts_the_prompt_tokens_taken_from_the_prefix_cache(batch_server: Server) -> None:
    """OpenAI's `usage.prompt_tokens_details.cached_tokens`: a prompt that extends one just
    served reuses its KV cells, and says how many (the /metrics counter adds them up)."""
    history = "Zebras of the northern plains " + " ".join(["fortune cookie never lies"] * 6)
    before = metrics(batch_server)["llama_rs_prompt_tokens_cached_total"]
    first = batch_server.post("/v1/completions", {"prompt": history, "max_tokens": 4, "temperature": 0})
    assert first.status_code == 200, first.text
    u1 = first.json()["usage"]
    # Only the first token or so can be shared with another prompt: nothing of this text was seen.
    assert u1["prompt_tokens_details"]["cached_tokens"] < u1["prompt_tokens"] // 2, u1
    turn = batch_server.post(
        "/v1/completions", {"prompt": history + " and then a second turn", "max_tokens": 4, "temperature": 0}
    )
    assert turn.status_code == 200, turn.text
    u2 = turn.json()["usage"]
    # All of the first prompt but the tokens at its end, which the new text may tokenize
    # differently; never the last prompt token, whose logits are not kept.
    assert u1["prompt_tokens"] - 2 <= u2["prompt_tokens_details"]["cached_tokens"] < u2["prompt_tokens"], (u1, u2)
    after = metrics(batch_server)["llama_rs_prompt_tokens_cached_total"]
    assert after - before == u1["prompt_tokens_details"]["cached_tokens"] + u2["prompt_tokens_details"]["cached_tokens"]


def test_metrics_declare_every_sample(batch_server: Server) -> None:
    text = httpx.get(batch_server.url + "/metrics").text
    names = set(re.findall(r"^# TYPE ([a-z_]+) (?:gauge|counter)$", text, re.M))
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert samples <= names and "llama_rs_kv_cells_used" in samples and "llama_rs_tokens_per_second" in samples
    complete(batch_server, body(0))
    assert metrics(batch_server)["llama_rs_tokens_per_second"] > 0  # generated within the last 10 s
    h = batch_server.health()
    assert h["workers"][0]["parallel"] == 8 and h["workers"][0]["sequences"] == 0
    assert h["workers"][0]["kv_cells"] == 8 * 256 and h["workers"][0]["kv_cells_used"] == 0
    assert h["workers"][0]["tokens_per_second"] > 0


# -- full server, killed workers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_batch_server(tmp_path_factory):
    s = slow_model_server(tmp_path_factory, "-w", "2", "-t", "1", "-np", "2", "-c", "2048", "--queue", "1")
    yield s
    s.stop()


GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


def test_full_slots_queue_then_503_never_a_crash(slow_batch_server: Server) -> None:
    s = slow_batch_server
    streams = []
    for i in range(4):  # 2 workers x 2 slots
        c = httpx.Client(timeout=60)
        cm = c.stream("POST", s.url + "/v1/completions", json={"prompt": f"t{i}", "max_tokens": 2000, "stream": True})
        lines = cm.__enter__().iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        streams.append((c, cm, lines))
    assert [w["sequences"] for w in s.health()["workers"]] == [2, 2]
    waiting = threading.Thread(target=lambda: s.post("/v1/completions", {"prompt": "t5", "max_tokens": 3}))
    waiting.start()
    wait_until(lambda: s.health()["queue"] == 1)
    r = s.post("/v1/completions", {"prompt": "t5", "max_tokens": 3})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "4 sequence slots (2 worker(s) x 2) are busy" in r.json()["error"]["message"]
    for c, cm, _ in streams:
        cm.__exit__(None, None, None)
        c.close()
    waiting.join(timeout=60)
    wait_until(lambda: metrics(s)["llama_rs_sequences_active"] == 0 and metrics(s)["llama_rs_kv_cells_used"] == 0)
    assert metrics(s)["llama_rs_worker_restarts_total"] == 0


def test_a_killed_worker_fails_only_its_own_requests(slow_batch_server: Server) -> None:
    s = slow_batch_server
    n = 400
    out: dict[int, httpx.Response] = {}

    def one(i: int) -> None:
        out[i] = s.post("/api/completion", {"prompt": f"t{i} t{i + 1}", "tokens": n, "temp": 0, "repeat_penalty": 1.0})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: [w["sequences"] for w in s.health()["workers"]] == [2, 2])
    victim = s.health()["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join(timeout=120)
    codes = sorted(r.status_code for r in out.values())
    assert codes == [200, 200, 502, 502], {i: r.text[:200] for i, r in out.items()}
    # The survivors' text is what they get alone.
    wait_until(lambda: all(w["state"] == "idle" for w in s.health()["workers"]), timeout=60)
    for i, r in out.items():
        if r.status_code == 200:
            again = s.post(
                "/api/completion", {"prompt": f"t{i} t{i + 1}", "tokens": n, "temp": 0, "repeat_penalty": 1.0}
            )
            assert r.json()["Tokens"] == n and again.json()["Text"] == r.json()["Text"]
    log = s.log()
    assert f"(pid {victim['pid']}) died (killed by SIGKILL) while serving 2 requests" in log, log
