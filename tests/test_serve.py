"""`llama-rs serve`: real server processes on free loopback ports, worker processes behind
them, the seed's and OpenAI's APIs, faults (queue full, disconnects, killed workers,
shutdown) and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

import serve_checks
from serve_helpers import LONG, Server, busy_workers, pid_alive, wait_until, write_slow_model


@pytest.fixture(scope="module")
def demo_server():
    s = Server("-w", "2", "-t", "1", "--max-body", "20000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    return write_slow_model(tmp_path_factory.mktemp("serve") / "slow.gguf")


@pytest.fixture(scope="module")
def slow_server(slow_model: Path):
    s = Server(
        "-m", str(slow_model), "-w", "2", "-t", "1", "-np", "1", "-c", "2048", "--queue", "1", "--api-key", "sekret",
        key="sekret",
    )  # fmt: skip
    yield s
    s.stop()


# -- the seed's API ---------------------------------------------------------------------------


def test_seed_completion_schema_and_text(demo_server: Server) -> None:
    serve_checks.check_seed_completion(demo_server)


# -- OpenAI compatibility through the official client -----------------------------------------


def test_openai_client_completions(demo_server: Server) -> None:
    serve_checks.check_openai_completions(demo_server)


def test_openai_client_chat(demo_server: Server) -> None:
    serve_checks.check_openai_chat(demo_server)


def test_health_docs_and_page(demo_server: Server) -> None:
    h = serve_checks.check_health_docs_and_page(demo_server, workers=2)
    assert "replica" not in h  # only under Ray


def test_two_workers_serve_two_requests_at_once(slow_server: Server) -> None:
    """Overlap is read from the start/end times the workers record, not from a stopwatch.
    The slow model makes each request last about a second."""
    results = []

    def one(prompt: str) -> None:
        results.append(slow_server.post("/api/completion", {**LONG, "prompt": prompt, "tokens": 150}).json())

    before = {(r["pid"], r["started"]) for r in slow_server.health()["recent"]}
    threads = [threading.Thread(target=one, args=(p,)) for p in ("t5", "t6")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.get("Tokens") == 150 for r in results), results
    new = [r for r in slow_server.health()["recent"] if (r["pid"], r["started"]) not in before]
    a, b = sorted(new, key=lambda r: r["started"])
    assert a["worker"] != b["worker"]
    assert b["started"] < a["ended"], "the two requests did not overlap"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path,body,status,needle", serve_checks.BAD_REQUESTS)
def test_bad_requests_get_json_errors(demo_server: Server, path: str, body, status: int, needle: str) -> None:
    serve_checks.check_bad_request(demo_server, path, body, status, needle)


def test_unknown_route(demo_server: Server) -> None:
    serve_checks.check_unknown_route(demo_server)


# -- faults, with a slow model and an API key ------------------------------------------------------


def test_api_key(slow_server: Server, demo_server: Server) -> None:
    r = httpx.post(slow_server.url + "/api/completion", json={"prompt": "t5", "tokens": 2})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    r = httpx.post(
        slow_server.url + "/api/completion",
        json={"prompt": "t5", "tokens": 2},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    assert slow_server.post("/api/completion", {"prompt": "t5", "tokens": 2}).status_code == 200
    assert httpx.get(slow_server.url + "/health").status_code == 200  # health stays open
    assert httpx.get(demo_server.url + "/v1/models").status_code == 200  # no key configured: open


def test_queue_full_is_503_and_disconnect_frees_the_worker(slow_server: Server) -> None:
    # Two streams occupy both workers; one request may wait (--queue 1); the next is refused.
    streams = []
    for _ in range(2):
        c = httpx.Client(timeout=60, headers=slow_server.headers)
        cm = c.stream(
            "POST",
            slow_server.url + "/v1/completions",
            json={"prompt": "t5", "max_tokens": 2000, "stream": True, "repeat_penalty": 1.0, "temperature": 0},
        )
        r = cm.__enter__()
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        streams.append((c, cm, lines))  # keep the iterator: dropping it closes the stream
    assert busy_workers(slow_server) == 2
    waiting = threading.Thread(target=lambda: slow_server.post("/api/completion", {"prompt": "t5", "tokens": 3}))
    waiting.start()
    wait_until(lambda: slow_server.health()["queue"] == 1)
    r = slow_server.post("/api/completion", {"prompt": "t5", "tokens": 3})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "busy" in r.json()["error"]["message"]
    # Clients hang up mid-stream: their generations stop and the workers come back.
    for c, cm, _ in streams:
        cm.__exit__(None, None, None)
        c.close()
    waiting.join(timeout=60)
    wait_until(lambda: busy_workers(slow_server) == 0 and slow_server.health()["queue"] == 0)
    assert slow_server.post("/api/completion", {"prompt": "t5", "tokens": 3}).status_code == 200


def test_killed_worker_is_replaced(slow_server: Server) -> None:
    out = {}

    def long_request(key: str) -> None:
        out[key] = slow_server.post("/api/completion", {**LONG, "tokens": 400 if key == "other" else 2000})

    victim = threading.Thread(target=long_request, args=("victim",))
    victim.start()
    wait_until(lambda: busy_workers(slow_server) == 1)
    busy = next(w for w in slow_server.health()["workers"] if w["busy"])
    other = threading.Thread(target=long_request, args=("other",))
    other.start()
    wait_until(lambda: busy_workers(slow_server) == 2)
    os.kill(busy["pid"], signal.SIGKILL)
    victim.join(timeout=60)
    other.join(timeout=120)
    assert out["victim"].status_code == 502
    assert "worker" in out["victim"].json()["error"]["message"]
    assert out["other"].status_code == 200 and out["other"].json()["Tokens"] > 0
    wait_until(
        lambda: (
            slow_server.health()["workers"][busy["index"]]["restarts"] == 1
            and slow_server.health()["workers"][busy["index"]]["alive"]
        )
    )
    new_pid = slow_server.health()["workers"][busy["index"]]["pid"]
    assert new_pid != busy["pid"]
    for _ in range(3):  # every worker serves again
        assert slow_server.post("/api/completion", {"prompt": "t5", "tokens": 3}).status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_shutdown_leaves_no_workers(sig: int) -> None:
    s = Server("-w", "2", "-t", "1")
    pids = [w["pid"] for w in s.health()["workers"]]
    args = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
    socket_dir = Path(args[args.index(b"--socket") + 1].decode()).parent
    assert oct(socket_dir.stat().st_mode & 0o777) == "0o700"  # private to the user
    code = s.stop(sig)
    if sig != signal.SIGKILL:
        # uvicorn cleans up, then re-raises the signal so the exit status tells what happened.
        assert code in (0, -sig, 128 + sig), s.log()
        assert "Traceback" not in s.log()
    # Workers go too, even when the front is killed without a chance to stop them.
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    if sig == signal.SIGKILL:  # no chance to clean up: the next server does it
        assert socket_dir.exists()
        Server("-w", "1", "-t", "1").stop()
    assert not socket_dir.exists()


def test_serve_usage_errors() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "llama_rs_cli.app", "serve", "-l", "nohost:port"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "llama_rs_cli.app", "serve", "-m", "/no/model.gguf"], capture_output=True, text=True
    )
    assert r.returncode == 1 and "no such model file" in r.stderr


def test_sigterm_to_the_whole_group_lets_running_requests_finish(slow_model: Path) -> None:
    """systemd (and `timeout`) send SIGTERM to every process of the service at once: the
    workers leave stopping to the front, so a running request still finishes within --grace
    and no worker death is reported."""
    s = Server("-m", str(slow_model), "-w", "1", "-t", "1", "--grace", "30", own_group=True)
    pid = s.health()["workers"][0]["pid"]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", s.post("/api/completion", {**LONG, "tokens": 120})))
    t.start()
    # (or the request already answered: then the assertion below says how, not a bare timeout)
    wait_until(lambda: busy_workers(s) == 1 or "r" in out, timeout=60)
    s.stop_group(signal.SIGTERM)
    t.join(timeout=60)
    assert out["r"].status_code == 200 and out["r"].json()["Tokens"] == 120, out["r"].text
    assert s.proc.wait(timeout=30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), timeout=10)
    assert "died" not in s.log() and "Traceback" not in s.log(), s.log()


def test_serving_processes_do_not_import_numpy() -> None:
    # numpy starts OpenBLAS's thread pool at import, threads that spin beside the engine's on
    # the same cores; serve's front and workers never need an array.
    code = (
        "import sys, llama_rs, llama_rs_cli.app, llama_rs.server.worker, llama_rs.server.front; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
