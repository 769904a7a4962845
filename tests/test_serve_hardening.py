"""`llama-rs serve` against hostile and careless clients: no request can take a worker away
(poison values, generated junk, schemathesis over the OpenAPI document), abandoned and
overlong requests give their worker back, and stuck workers are reported and replaced."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import LONG, Server, busy_workers, wait_until, write_slow_model


@pytest.fixture(scope="module")
def server():
    s = Server("-w", "2", "-t", "1", "--max-body", "200000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    return write_slow_model(tmp_path_factory.mktemp("hardening") / "slow.gguf")


def all_free(s: Server, restarts: list[int]) -> None:
    """Every worker alive, idle and not restarted since `restarts`, and a normal request works."""
    wait_until(lambda: all(w["state"] == "idle" for w in s.health()["workers"]), timeout=15)
    h = s.health()
    assert [w["restarts"] for w in h["workers"]] == restarts, h
    assert h["status"] == "ok" and all(w["alive"] and not w["stuck"] for w in h["workers"]), h
    r = s.post("/api/completion", {"prompt": "Q:", "tokens": 3})
    assert r.status_code == 200, r.text


def restarts_of(s: Server) -> list[int]:
    return [w["restarts"] for w in s.health()["workers"]]


# -- the three poisons of the issue, on every route -------------------------------------------

POISONS = {
    "seed 2^70": ('"seed": 1180591620717411303424', "seed"),
    "seed -2^63-1": ('"seed": -9223372036854775809', "seed"),
    "Infinity": ('"{temp}": Infinity', "not valid JSON"),
    "NaN": ('"{temp}": NaN', "not valid JSON"),
    "1e309 (inf as a float)": ('"{temp}": 1e309', "finite"),
    "lone surrogate": ('"{text}": "a\\ud800b"', "invalid Unicode"),
}
ROUTES = {
    "/api/completion": ('{{"prompt": "x", "tokens": 5, {poison}}}', {"temp": "temp", "text": "prompt"}),
    "/v1/chat/completions": (
        '{{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 5, {poison}}}',
        {"temp": "temperature", "text": "user"},
    ),
    "/v1/completions (stream)": (
        '{{"prompt": "x", "max_tokens": 5, "stream": true, {poison}}}',
        {"temp": "temperature", "text": "user"},
    ),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("poison", POISONS)
def test_poison_values_are_400s_and_keep_every_worker(server: Server, route: str, poison: str) -> None:
    before = restarts_of(server)
    template, names = ROUTES[route]
    value, needle = POISONS[poison]
    body = template.format(poison=value.format(**names))
    path = route.split(" ")[0]
    for _ in range(3):  # more than there are workers: none may be lost
        r = server.post(path, body.encode())
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert needle in err["message"], err
    all_free(server, before)


def test_surrogate_error_names_the_field(server: Server) -> None:
    body = b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc80"}]}]}'
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages.0.content.0.text"


# -- generated junk -----------------------------------------------------------------------------

SPECIAL_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324])
HUGE_INTS = st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 2**31, 2**32 + 1])
SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udbff"])
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | HUGE_INTS
    | st.floats()
    | SPECIAL_FLOATS
    | st.text(max_size=20)
    | SURROGATES
)
JUNK = st.recursive(
    LEAVES,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "/api/completion": ["prompt", "tokens", "top_k", "top_p", "temp", "repeat_penalty", "repeat_lastn", "seed", "stop"],
    "/v1/completions": [
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "n",
        "stream",
        "stream_options",
        "logprobs",
        "echo",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "suffix",
        "best_of",
        "user",
    ],
    "/v1/chat/completions": [
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "logprobs",
        "top_logprobs",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "tools",
        "tool_choice",
        "response_format",
        "user",
    ],
}
SANE = {  # values that pass, so that junk in one field is reached with the others valid
    "prompt": st.sampled_from(["Q:", ["a", "b"], [1, 5, 9]]),
    "tokens": st.integers(1, 8),
    "max_tokens": st.integers(1, 8),
    "max_completion_tokens": st.integers(1, 8),
    "n": st.integers(1, 3),
    "messages": st.just([{"role": "user", "content": "hi"}]),
    "stream": st.booleans(),
}


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@st.composite
def bodies(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(FIELDS)))
    body = {}
    for f in FIELDS[path]:
        if draw(st.integers(0, 3)) == 0:
            body[f] = draw(JUNK)
        elif f in SANE and draw(st.booleans()):
            body[f] = draw(SANE[f])
    if draw(st.integers(0, 4)) == 0:
        body[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)  # a field nobody declared
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True)  # NaN, Infinity, \ud800 escapes
    if draw(st.integers(0, 9)) == 0:  # deep nesting, as a field or the whole body
        depth = draw(st.sampled_from([100, 10_000, 60_000]))
        raw = nested(depth) if draw(st.booleans()) else raw[:-1] + (", " if body else "") + f'"deep": {nested(depth)}}}'
    return path, raw.encode()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=bodies())
def test_generated_junk_never_breaks_the_server(server: Server, case) -> None:
    path, raw = case
    r = server.post(path, raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (path, raw[:300], r.text[:300])
    if r.status_code != 200:
        assert "message" in r.json()["error"]
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]") or '"error"' in r.text


def test_after_the_junk_every_worker_is_free(server: Server) -> None:
    all_free(server, [0, 0])


# -- schemathesis over the OpenAPI document ------------------------------------------------------


def test_schemathesis_finds_no_server_error_or_schema_violation(server: Server) -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    ran = 0
    failures = []

    def explore(operation) -> None:
        @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def one(case) -> None:
            nonlocal ran
            ran += 1
            try:
                case.call_and_validate(checks=checks, timeout=60)
            except Exception as e:  # collect, so one run reports every distinct problem
                failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:500]}")
                raise

        try:
            one()
        except Exception:  # already in `failures`; go on with the other operations
            pass

    for op in schema.get_all_operations():
        explore(op.ok())
    assert ran > 100
    assert not failures, "\n".join(dict.fromkeys(failures))
    all_free(server, [0, 0])


# -- abandoned, overlong and stuck requests -------------------------------------------------------


@pytest.fixture()
def slow_server(slow_model: Path):
    s = Server("-m", str(slow_model), "-w", "2", "-t", "1", "-c", "2048", "--timeout", "3")
    yield s
    s.stop()


def test_abandoned_non_streaming_requests_free_their_workers(slow_server: Server) -> None:
    """8 clients give up on 2000-token requests (tens of seconds each, minutes in all on two
    workers): each generation stops when its client leaves, so a short request gets through."""

    def abandon() -> None:
        try:
            httpx.post(slow_server.url + "/api/completion", json={**LONG, "tokens": 2000}, timeout=0.5)
        except httpx.TimeoutException:
            pass

    threads = [threading.Thread(target=abandon) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = slow_server.post("/api/completion", {"prompt": "t5", "tokens": 3})
    assert r.status_code == 200 and r.json()["Tokens"] == 3
    all_free(slow_server, [0, 0])  # stopped at their next token, not restarted
    log = slow_server.log()
    assert log.count("POST /api/completion 499") >= 1, log


def test_deadline_gives_504_and_the_worker_back(slow_server: Server) -> None:
    r = slow_server.post("/api/completion", LONG)
    assert r.status_code == 504, r.text
    assert "--timeout of 3 s" in r.json()["error"]["message"]
    all_free(slow_server, [0, 0])
    # Streaming too: the stream ends with an error event instead of hanging.
    r = slow_server.post(
        "/v1/completions", {"prompt": "t5", "max_tokens": 2000, "stream": True, "temperature": 0, "repeat_penalty": 1.0}
    )
    assert r.status_code == 200 and '"type": "timeout"' in r.text.splitlines()[-2]
    all_free(slow_server, [0, 0])


def test_stuck_worker_is_reported_then_replaced(slow_server: Server) -> None:
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", slow_server.post("/api/completion", LONG)))
    t.start()
    wait_until(lambda: busy_workers(slow_server) == 1)
    w = next(w for w in slow_server.health()["workers"] if w["busy"])
    os.kill(w["pid"], signal.SIGSTOP)  # it can no longer notice its request being cancelled
    try:
        t.join(timeout=30)
        assert out["r"].status_code == 504
        wait_until(lambda: slow_server.health()["workers"][w["index"]]["stuck"], timeout=30)
        h = slow_server.health()
        assert h["status"] == "degraded", h
        # Not answering within the drain timeout, it is killed (SIGKILL works on a stopped
        # process) and replaced.
        wait_until(
            lambda: (
                slow_server.health()["workers"][w["index"]]["restarts"] == 1
                and slow_server.health()["workers"][w["index"]]["state"] == "idle"
            ),
            timeout=60,
        )
    finally:
        try:
            os.kill(w["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert slow_server.health()["status"] == "ok"
    log = slow_server.log()
    assert "did not stop its cancelled request" in log and "restarted" in log, log


def test_logs_one_line_per_request_and_no_disconnect_noise(slow_server: Server) -> None:
    assert slow_server.post("/api/completion", {"prompt": "t5", "tokens": 3}).status_code == 200
    with httpx.stream(
        "POST",
        slow_server.url + "/v1/completions",
        timeout=30,
        json={"prompt": "t5", "max_tokens": 500, "stream": True},
    ) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    # The client hung up mid-stream.
    wait_until(lambda: busy_workers(slow_server) == 0)
    all_free(slow_server, [0, 0])
    time.sleep(0.5)
    log = slow_server.log()
    assert "POST /api/completion 200 prompt=" in log and "gen=3 " in log, log
    assert "socket.send() raised exception" not in log, log
    assert "Traceback" not in log, log
    # A killed worker is logged, and so is its replacement.
    pid = slow_server.health()["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (
            slow_server.health()["workers"][0]["restarts"] == 1
            and slow_server.health()["workers"][0]["state"] == "idle"
        )
    )
    log = slow_server.log()
    assert f"worker 0 (pid {pid}) died (killed by SIGKILL)" in log and "worker 0 restarted" in log, log
