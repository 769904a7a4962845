"""`serve -w 2`: prefix-aware routing. A request goes to the worker that last served the start
of its prompt (where its prefix cache is) while that worker has a free slot, else to another
free one at once; a worker's keys die with its process. The worker that served a request is
read from /health (`recent`, `route_hits`) and /metrics."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest
from serve_helpers import LONG, Server, slow_model_server, wait_until
from test_serve_batching import metrics

from llama_rs.server.route import MIN_CHARS, PrefixRouter, prefix_keys, prompt_text


def system(n: int) -> dict:
    """Each conversation its own from the start (a shared system prompt would send them all
    to the worker that has it cached)."""
    return {
        "role": "system",
        "content": f"You are assistant number {n}: patient, and you answer every question briefly.",
    }


SYSTEM = system(0)
QUESTIONS = [
    "What is the best way to learn a new language as an adult?",
    "Why do cats sleep so much during the day?",
    "How do bees decide where to build a new hive?",
    "What makes a good cup of coffee in the morning?",
]


# -- the key, without a server --------------------------------------------------------------------


def test_a_chats_next_turn_extends_its_keys() -> None:
    turn1 = [SYSTEM, {"role": "user", "content": QUESTIONS[0]}]
    turn2 = [*turn1, {"role": "assistant", "content": "Speak it every day. " * 6}, {"role": "user", "content": "And?"}]
    k1, k2 = prefix_keys(prompt_text(messages=turn1)), prefix_keys(prompt_text(messages=turn2))
    assert k1 and k2[: len(k1)] == k1 and len(k2) > len(k1)
    other = prefix_keys(prompt_text(messages=[{"role": "user", "content": QUESTIONS[1] * 3}]))
    assert not set(other) & set(k1)
    # Text, ids and a chat never share keys; short prompts have none.
    text = "x" * (4 * MIN_CHARS)
    assert not set(prefix_keys(prompt_text(text))) & set(prefix_keys(prompt_text(list(range(100)))))
    assert prefix_keys(prompt_text("short prompt")) == []
    ids = prefix_keys(prompt_text(list(range(100))))
    assert prefix_keys(prompt_text(list(range(200))))[: len(ids)] == ids


def test_the_router_prefers_the_longest_key_and_forgets_a_worker() -> None:
    r = PrefixRouter(max_keys=8)
    short, long = prefix_keys("a" * MIN_CHARS), prefix_keys("a" * (4 * MIN_CHARS))
    r.remember(short, 0, 1)
    r.remember(long, 1, 1)  # rewrites the shortest key too: worker 1 served it last
    assert r.candidates(long) == [(1, 1)]
    r.remember(short, 0, 1)
    assert r.candidates(long) == [(1, 1), (0, 1)]
    r.forget(1)
    assert r.candidates(long) == [(0, 1)]
    for i in range(20):
        r.remember(prefix_keys(f"{i:04d}" * MIN_CHARS), 0, 1)
    assert len(r) == 8 and r.candidates(short) == []  # the oldest went first


# -- a real server ---------------------------------------------------------------------------------


def demo() -> Server:
    return Server("-w", "2", "-t", "1", "-np", "2", "-c", "1024", "--queue", "8")


@pytest.fixture(scope="module")
def demo_server():
    s = demo()
    yield s
    s.stop()


def served_by(s: Server) -> int:
    """The worker of the request that finished last (requests here run one at a time)."""
    return s.health()["recent"][-1]["worker"]


class Chat:
    def __init__(self, s: Server, topic: int):
        self.s, self.topic, self.messages = s, topic, [system(topic)]

    def turn(self) -> int:
        """One more turn: the whole conversation so far; the worker that answered it."""
        k = len(self.messages) // 2
        self.messages.append({"role": "user", "content": f"{QUESTIONS[(self.topic + k) % len(QUESTIONS)]} ({k})"})
        body = {"messages": self.messages, "max_tokens": 12, "temperature": 0, "seed": 1}
        r = self.s.post("/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        self.messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
        return served_by(self.s)


def hits(s: Server) -> list[int]:
    return [w.get("route_hits", 0) for w in s.health()["workers"]]


def test_a_chat_stays_on_its_worker_while_the_other_is_free(demo_server: Server) -> None:
    s = demo_server
    chat = Chat(s, 0)
    before = hits(s)
    workers = [chat.turn() for _ in range(6)]
    assert len(set(workers)) == 1, workers
    w = workers[0]
    after = hits(s)
    assert after[w] - before[w] == 5 and after[1 - w] == before[1 - w], (before, after)
    assert metrics(s)["llama_rs_route_hits_total"] == sum(after)


def test_two_interleaved_chats_each_keep_their_worker(demo_server: Server) -> None:
    s = demo_server
    a, b = Chat(s, 1), Chat(s, 2)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    # Not alternating: a pool handing out workers in turn would split each chat.
    for name in "abbaabbbaa":
        seen[name].append((a if name == "a" else b).turn())
    assert len(set(seen["a"])) == 1 and len(set(seen["b"])) == 1, seen
    assert seen["a"][0] != seen["b"][0], "a new conversation goes to the least used worker"


def test_after_a_kill_routing_goes_on(tmp_path) -> None:
    s = demo()
    try:
        chat = Chat(s, 3)
        w = chat.turn()
        assert chat.turn() == w
        pid = s.health()["workers"][w]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: s.health()["workers"][w]["restarts"] == 1, timeout=60)
        wait_until(lambda: all(x["state"] == "idle" for x in s.health()["workers"]), timeout=60)
        assert s.health()["workers"][w]["pid"] != pid
        # Its keys went with the process: the chat goes on somewhere, and stays there.
        after = [chat.turn() for _ in range(4)]
        assert len(set(after)) == 1, after
        # A new chat goes to the restarted worker (the least recently used) and sticks there.
        fresh = Chat(s, 4)
        again = [fresh.turn() for _ in range(3)]
        assert again == [w] * 3, (w, again)
        assert metrics(s)["llama_rs_worker_restarts_total"] == 1
    finally:
        s.stop()


# -- the preferred worker busy -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    s = slow_model_server(tmp_path_factory, "-w", "2", "-t", "1", "-np", "1", "-c", "2048", "--queue", "4")
    yield s
    s.stop()


def test_a_busy_preferred_worker_sends_the_request_elsewhere(slow_server: Server) -> None:
    s = slow_server
    start = " ".join(f"t{i}" for i in range(5, 40))  # > MIN_CHARS characters
    first = s.post("/v1/completions", {"prompt": start, "max_tokens": 2})
    assert first.status_code == 200, first.text
    w = served_by(s)
    fallbacks = metrics(s).get("llama_rs_route_fallbacks_total", 0)
    # A long generation with the same start takes the worker that has it (its one slot).
    with httpx.Client(timeout=120) as c:
        body = {"prompt": start + " t41", "max_tokens": LONG["tokens"], "temperature": 0, "stream": True}
        with c.stream("POST", s.url + "/v1/completions", json=body) as long:
            lines = long.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            assert [x["sequences"] for x in s.health()["workers"]][w] == 1
            # Same start again: its worker is busy, so the other serves it now, no queueing.
            got: list[httpx.Response] = []
            t = threading.Thread(
                target=lambda: got.append(s.post("/v1/completions", {"prompt": start, "max_tokens": 2}))
            )
            t.start()
            t.join(timeout=60)
            assert got and got[0].status_code == 200, got
            assert s.health()["queue"] == 0
            assert served_by(s) == 1 - w
            assert metrics(s)["llama_rs_route_fallbacks_total"] == fallbacks + 1
    wait_until(lambda: all(x["state"] == "idle" for x in s.health()["workers"]))


def test_a_shared_prompt_start_does_not_pile_onto_one_worker(monkeypatch) -> None:
    # Pool._take alone (no processes): two ready workers of 8 slots, requests sharing one long
    # system prompt. The worker holding it takes them while it is at most ROUTE_SLACK
    # sequences busier than the other, then the other does.
    from llama_rs.server import pool as pool_mod
    from llama_rs.server.route import ROUTE_SLACK

    monkeypatch.setattr(pool_mod.Worker, "alive", property(lambda w: True))
    pool = pool_mod.Pool(pool_mod.PoolConfig(model=None, workers=2, threads=1, n_ctx=64, queue_limit=4, parallel=8))
    for w in pool.workers:
        w.state, w.free = "ready", 8
    keys = prefix_keys(prompt_text(messages=[SYSTEM, {"role": "user", "content": QUESTIONS[0]}]))
    picks = []
    for _ in range(2 * ROUTE_SLACK + 2):
        w = pool._take(keys)
        pool.router.remember(keys, w.index, w.incarnation)
        picks.append(w.index)
    first = picks[0]
    assert picks[: ROUTE_SLACK + 1] == [first] * (ROUTE_SLACK + 1), picks
    assert 1 - first in picks, picks
    assert abs(pool.workers[0].free - pool.workers[1].free) <= ROUTE_SLACK + 1
