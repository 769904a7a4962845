"""The worker processes behind the front: start them, hand them out one request at a time
in FIFO order with a bounded queue, and replace any that dies."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx


class QueueFull(Exception):
    """Every worker is busy and the queue is at its limit."""


class WorkerFailed(Exception):
    """The worker died or broke the connection while serving a request."""


@dataclass
class Worker:
    index: int
    socket: Path
    proc: Optional[subprocess.Popen] = None
    client: Optional[httpx.AsyncClient] = None
    busy: bool = False
    restarts: int = 0
    restarting: bool = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PoolConfig:
    model: Optional[Path]
    workers: int
    threads: int
    n_ctx: int
    queue_limit: int
    start_timeout: float = 120.0


class Pool:
    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        # Private to this user: nobody else may talk to the workers' sockets.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="llama-rs-"))
        os.chmod(self.socket_dir, 0o700)
        self.workers = [Worker(i, self.socket_dir / f"worker-{i}.sock") for i in range(cfg.workers)]
        self.free: asyncio.Queue[Worker] = asyncio.Queue()
        self.waiting = 0
        self.stopping = False
        self.recent: list[dict] = []
        self._watch_task: Optional[asyncio.Task] = None

    # -- lifecycle --------------------------------------------------------------------------
    def _spawn(self, w: Worker) -> None:
        cmd = [sys.executable, "-m", "llama_rs_cli.app", "worker", "--socket", str(w.socket),
               "-c", str(self.cfg.n_ctx), "-t", str(self.cfg.threads), "--parent-pid", str(os.getpid())]
        if self.cfg.model is not None:
            cmd += ["-m", str(self.cfg.model)]
        w.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        w.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(w.socket)), base_url="http://worker",
                                     timeout=httpx.Timeout(None, connect=5.0))

    async def _wait_ready(self, w: Worker) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline:
            if not w.alive:
                raise RuntimeError(f"worker {w.index} exited while starting (status {w.proc.returncode})")
            try:
                r = await w.client.get("/health", timeout=1.0)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"worker {w.index} did not start within {self.cfg.start_timeout:.0f} s")

    async def start(self) -> None:
        for w in self.workers:
            self._spawn(w)
        await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        for w in self.workers:
            self.free.put_nowait(w)
        self._watch_task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Replace dead workers. One that dies mid-request is replaced once that request has
        noticed (its handler gets WorkerFailed and gives the worker back)."""
        while not self.stopping:
            for w in self.workers:
                if not w.alive and not w.busy and not w.restarting:
                    w.restarting = True
                    asyncio.create_task(self._restart(w))
            await asyncio.sleep(0.1)

    async def _restart(self, w: Worker) -> None:
        try:
            if w.client is not None:
                await w.client.aclose()
            w.restarts += 1
            self._spawn(w)
            await self._wait_ready(w)
            self.free.put_nowait(w)
        except Exception as e:  # keep trying: the watcher sees it dead again
            print(f"llama-rs serve: restarting worker {w.index} failed: {e}", file=sys.stderr)
            await asyncio.sleep(1.0)
        finally:
            w.restarting = False

    async def stop(self, grace: float = 5.0) -> None:
        self.stopping = True
        if self._watch_task is not None:
            self._watch_task.cancel()
        for w in self.workers:
            if w.alive:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if w.client is not None:
                await w.client.aclose()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- requests -----------------------------------------------------------------------------
    async def acquire(self) -> Worker:
        if self.free.empty() and self.waiting >= self.cfg.queue_limit:
            raise QueueFull()
        self.waiting += 1
        try:
            while True:
                w = await self.free.get()
                if w.alive:  # a worker that died while idle is left to the watcher
                    w.busy = True
                    return w
        finally:
            self.waiting -= 1

    def release(self, w: Worker, healthy: bool = True) -> None:
        w.busy = False
        if healthy and w.alive:
            self.free.put_nowait(w)
        # else: the watcher restarts it and puts it back

    def record(self, entry: dict) -> None:
        self.recent.append(entry)
        del self.recent[:-64]

    def health(self) -> dict:
        return {
            "workers": [
                {"index": w.index, "pid": w.proc.pid if w.proc else None, "alive": w.alive, "busy": w.busy,
                 "restarts": w.restarts}
                for w in self.workers
            ],
            "queue": self.waiting,
            "queue_limit": self.cfg.queue_limit,
        }
