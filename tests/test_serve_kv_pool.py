"""`serve` with a KV pool smaller than `--parallel x -c`: a worker's sequences share
`--kv-cells` cells, each cache
grows as its sequence needs, and a request the pool cannot hold yet waits in the worker
until running ones finish: every request is answered, with the text it gets alone, and
the worker's memory follows the pool, not `--parallel x -c`."""

from __future__ import annotations

import re
import threading

import httpx
import pytest
from serve_helpers import Server, slow_model_server
from test_serve_batching import metrics, worker_rss

PARALLEL, N_CTX, KV_CELLS = 4, 4096, 512


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory):
    s = slow_model_server(
        tmp_path_factory,
        "-w", "1", "-t", "2", "-np", str(PARALLEL), "-c", str(N_CTX), "--kv-cells", str(KV_CELLS), "--queue", "16",
    )  # fmt: skip
    assert "KV cache at most" in s.log()
    yield s
    s.stop()


def greedy(i: int, max_tokens: int) -> dict:
    return {"prompt": f"t{i + 5} t{i + 9} t{i}", "max_tokens": max_tokens, "temperature": 0, "repeat_penalty": 1.0}


def text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_requests_beyond_the_pool_wait_and_get_their_text(pool_server: Server) -> None:
    s = pool_server
    rss_start = worker_rss(s)
    # Each may need ~4 + 150 cells: three fit in 512 at once, the other three wait.
    alone = [text(s.post("/v1/completions", greedy(i, 150))) for i in range(6)]
    got: dict[int, str] = {}
    waited: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            waited.append(metrics(s)["llama_rs_sequences_waiting_kv"])

    def one(i: int) -> None:
        got[i] = text(s.post("/v1/completions", greedy(i, 150)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert [got[i] for i in range(6)] == alone
    assert max(waited) >= 1, "some request waited for KV cells"
    m = metrics(s)
    assert m["llama_rs_kv_cells_total"] == KV_CELLS
    assert m["llama_rs_kv_cells_used"] == 0 and m["llama_rs_sequences_waiting_kv"] == 0
    assert 0 < m["llama_rs_kv_cells_allocated"] <= KV_CELLS
    # Keys and values of 8 layers x 256 dims in f16: 8 KiB a cell; each cache rounds up to 8.
    cell = 2 * 8 * 256 * 2
    assert 0 < m["llama_rs_kv_bytes"] <= (KV_CELLS + 7 * PARALLEL) * cell
    # Not a fixed allocation of 4 x 4096 cells (128 MiB): its transposed keys (a row of 4096
    # f16 positions per layer and key component) have a page touched per row once a slot holds
    # a token, 32 MiB for 4 used slots (the engine before the pool: +36 MiB here; with it +6).
    assert worker_rss(s) - rss_start < 16 << 20, (rss_start, worker_rss(s))


def test_a_prompt_longer_than_the_pool_is_a_clear_error(pool_server: Server) -> None:
    r = pool_server.post(
        "/v1/completions", {"prompt": " ".join(f"t{i % 400 + 3}" for i in range(600)), "max_tokens": 1}
    )
    assert r.status_code == 400, r.text
    assert re.search(r"more than the 512 KV cells of the whole pool", r.json()["error"]["message"])
    assert text(pool_server.post("/v1/completions", greedy(0, 3)))  # and the worker serves on


def test_the_worker_flag_and_variable_are_checked(monkeypatch, capsys) -> None:
    from llama_rs.server import worker

    monkeypatch.setenv("LLAMA_RS_KV_CELLS", "300")
    assert worker.kv_cells_from_env() == 300
    monkeypatch.setenv("LLAMA_RS_KV_CELLS", "many")
    with pytest.raises(SystemExit):
        worker.kv_cells_from_env()
    assert "LLAMA_RS_KV_CELLS must be a number" in capsys.readouterr().err
    monkeypatch.delenv("LLAMA_RS_KV_CELLS")
    assert worker.kv_cells_from_env() is None
    with pytest.raises(SystemExit):
        worker.main(["--socket", "/nonexistent/w.sock", "--kv-cells", "0"])
    assert "--kv-cells must be at least 1" in capsys.readouterr().err
