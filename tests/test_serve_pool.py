"""The pool against workers that misbehave in ways a real one rarely does: a fake worker on
the worker's socket answers garbage, a JSON array, or hangs up mid-reply, and the lease
holder's own code raises. Every case ends with the worker handed back or restarted (the
restart is a real worker with the demo model), and a real request served."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from llama_rs.server.pool import Pool, PoolConfig, WorkerFailed


async def fake_worker(path: str, mode: str, pid: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if json.loads(line).get("op") == "ping":
            writer.write(json.dumps({"pong": True, "pid": pid}).encode() + b"\n" if mode != "garbage" else b"}}}\n")
        elif mode == "garbage":
            writer.write(b"this is not json\n")
        elif mode == "array":
            writer.write(b"[1, 2, 3]\n")
        elif mode == "hangup":
            writer.write(b'{"text": "half"}\n')
        elif mode == "holder raises":
            writer.write(b'{"text": "a"}\n')
            await reader.read()  # until the front hangs up
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path)


async def scenario(mode: str) -> dict:
    pool = Pool(PoolConfig(model=None, workers=1, threads=1, n_ctx=64, queue_limit=1, drain_timeout=2.0))
    w = pool.workers[0]
    w.proc = subprocess.Popen(["sleep", "120"])  # stands in for the worker process
    server = await fake_worker(str(w.socket), mode, w.proc.pid)
    w.set("ready")
    pool._free_slot(w)
    pool._watch_task = asyncio.create_task(pool._watch())
    failed = None
    try:
        lease = await pool.acquire()
        async with lease:
            try:
                async for _ in lease.request({"op": "generate", "prompt": "Q:", "params": {"max_tokens": 3}}):
                    if mode == "holder raises":
                        raise RuntimeError("a bug in the front")
            except WorkerFailed as e:
                failed = str(e)
            except RuntimeError:
                failed = "holder raised"
        # Handed back (the fake answers the drain ping) or restarted as a real worker.
        for _ in range(600):
            if w.display_state == "idle" and w.free > 0:
                break
            await asyncio.sleep(0.1)
        server.close()
        out = {"failed": failed, "restarts": w.restarts, "state": w.display_state}
        if w.restarts:  # a real worker now: it must serve
            lease = await asyncio.wait_for(pool.acquire(), 60)
            async with lease:
                request = {"op": "generate", "prompt": "Q:", "params": {"max_tokens": 3}}
                out["replies"] = [m async for m in lease.request(request)]
        return out
    finally:
        await pool.stop()


@pytest.mark.parametrize(
    "mode,restarted", [("garbage", True), ("array", True), ("hangup", True), ("holder raises", False)]
)
def test_a_misbehaving_worker_is_never_lost(mode: str, restarted: bool) -> None:
    out = asyncio.run(scenario(mode))
    assert out["failed"] and out["state"] == "idle", out
    assert out["restarts"] == (1 if restarted else 0), out
    if restarted:
        assert out["replies"][-1]["done"] is True and out["replies"][-1]["tokens"] == 3
