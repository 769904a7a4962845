"""The worker processes behind the front: start them, lease out their sequence slots
(`--parallel` per worker, one request each) in FIFO order with a bounded queue, and never
lose one.

Which worker: among those with a free slot, the one that most likely holds the start of the
request's prompt in its prefix cache (`route.py`), else the one with the most free slots
(the least recently leased among equals). A request never waits while any slot is free.

A lease is one slot of one worker over one connection. Every way a lease can end is handled
in `Lease.close`: a clean end hands the slot back at once; anything else (a cancelled or
abandoned request, a deadline passed, garbage or a closed socket from the worker, an
exception in the front's own code) closes the connection, which makes the worker stop that
sequence at its next token, and a drain check then pings the worker on a fresh connection:
it answers and the slot goes back to the pool, or the worker is killed and restarted (which
fails the other sequences it was running, and only those). A watchdog enforces deadlines
even on leases whose holder has gone away, and replaces dead workers. Each worker process
has an incarnation number: slots and leases of a process that was replaced are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Optional, Sequence

from . import protocol
from .route import ROUTE_SLACK, PrefixRouter

log = logging.getLogger("llama_rs.serve")

SOCKET_DIR_PREFIX = "llama-rs-serve-"


class QueueFull(Exception):
    """Every worker is busy and the queue is at its limit."""


class WorkerFailed(Exception):
    """The worker died, broke the protocol or ran out of time while serving a request."""


@dataclass
class PoolConfig:
    model: Optional[Path]
    workers: int
    threads: int
    n_ctx: int
    queue_limit: int
    #: Sequences each worker generates at once (its batch).
    parallel: int = 1
    #: KV cells each worker's sequences share (None: parallel x n_ctx).
    kv_cells: Optional[int] = None
    #: Seconds a request may hold a worker, waiting in the queue not included.
    timeout: float = 600.0
    start_timeout: float = 120.0
    #: Seconds a worker gets to stop a cancelled generation before it is restarted; after
    #: a fifth of that, /health reports it stuck (a healthy worker stops within a token).
    drain_timeout: float = 10.0


@dataclass
class Worker:
    index: int
    socket: Path
    proc: Optional[subprocess.Popen] = None
    #: starting | ready | restarting (what it is doing is `display_state`)
    state: str = "starting"
    since: float = 0.0
    restarts: int = 0
    #: Which process this is: slots and leases of an earlier one are void.
    incarnation: int = 0
    leases: set = field(default_factory=set)
    #: When each drain check still running began.
    drains: list = field(default_factory=list)
    #: Sequence slots of this incarnation not leased now.
    free: int = 0
    #: When it was last leased (the pool's lease count then): equals go least recent first.
    leased_at: int = 0
    #: Requests sent here because the longest remembered start of their prompt was here.
    route_hits: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()

    @property
    def display_state(self) -> str:
        """idle | busy (running a request) | draining (checking after a cancelled one) |
        starting | restarting."""
        if self.state != "ready":
            return self.state
        return "busy" if self.leases else ("draining" if self.drains else "idle")


class Lease:
    """One worker, held by one request, over one connection."""

    def __init__(self, pool: "Pool", worker: Worker, deadline: float):
        self.pool, self.worker, self.deadline = pool, worker, deadline
        self.incarnation = worker.incarnation
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._clean = True  # nothing sent that has not been answered in full
        self._closed = False
        self.expired = False
        #: Why the worker cannot be trusted any more (it broke the protocol), if it cannot.
        self.broken: Optional[str] = None

    async def request(self, msg: dict) -> AsyncIterator[dict]:
        """Send one request; yield the worker's messages up to and including its `done`
        or `error` line. Raises WorkerFailed if the worker does not answer properly."""
        if self._closed:
            raise WorkerFailed(f"worker {self.worker.index}: the request was cancelled ({self._why()})")
        self._clean = False
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(self.worker.socket), limit=protocol.MAX_LINE
                )
            self._writer.write(protocol.encode(msg))
            await self._writer.drain()
            while True:
                line = await self._reader.readline()
                if not line:
                    raise WorkerFailed(f"worker {self.worker.index} {self._why()}")
                try:
                    reply = protocol.decode(line)
                except ValueError as e:
                    self.broken = f"answered something that is not a message ({e})"
                    raise WorkerFailed(f"worker {self.worker.index} sent a reply the front cannot read") from None
                if "done" in reply or "error" in reply:
                    self._clean = True
                    yield reply
                    return
                yield reply
        except WorkerFailed:
            if not self.expired and self.broken is None:
                self.broken = "hung up in the middle of a reply"
            raise
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            if not self.expired:
                self.broken = f"failed the connection ({type(e).__name__})"
            raise WorkerFailed(f"worker {self.worker.index} {self._why()} ({type(e).__name__})") from None

    def _why(self) -> str:
        if self.expired:
            return f"ran past the request deadline of {self.pool.cfg.timeout:g} s"
        return "died or closed the connection while serving the request"

    def expire(self) -> None:
        """The deadline passed: cut the connection (the holder's read fails at once)."""
        self.expired = True
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self) -> None:
        """Give the worker back. Safe to call twice and from any path."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.transport.abort() if not self._clean else self._writer.close()
        self.pool._return(self, clean=self._clean and not self.expired, broken=self.broken)

    async def __aenter__(self) -> "Lease":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Pool:
    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        clean_stale_socket_dirs()
        # Private to this user: nobody else may talk to the workers' sockets.
        self.socket_dir = Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))
        os.chmod(self.socket_dir, 0o700)
        self.workers = [Worker(i, self.socket_dir / f"worker-{i}.sock") for i in range(cfg.workers)]
        #: Requests waiting for a slot, first come first served: (future of (worker,
        #: incarnation), the request's prefix keys).
        self.waiters: deque[tuple[asyncio.Future, Sequence[bytes]]] = deque()
        self.router = PrefixRouter()
        self.leased = 0
        self.stopping = False
        self.recent: list[dict] = []
        #: Totals over the server's life (the workers' own counts restart with them).
        #: route_fallbacks: requests whose prompt start was remembered on a worker with no
        #: free slot (or since replaced), sent to another.
        self.counters = {
            "requests": 0,
            "prompt_tokens": 0,
            "cached_prompt_tokens": 0,
            "generated_tokens": 0,
            "route_fallbacks": 0,
        }
        self._tasks: set[asyncio.Task] = set()
        self._watch_task: Optional[asyncio.Task] = None

    # -- lifecycle --------------------------------------------------------------------------
    def _spawn(self, w: Worker) -> None:
        cmd = [
            sys.executable,
            "-m",
            "llama_rs.server.worker",
            "--socket",
            str(w.socket),
            "-c",
            str(self.cfg.n_ctx),
            "-t",
            str(self.cfg.threads),
            "--parallel",
            str(self.cfg.parallel),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.cfg.model is not None:
            cmd += ["-m", str(self.cfg.model)]
        if self.cfg.kv_cells is not None:
            cmd += ["--kv-cells", str(self.cfg.kv_cells)]
        w.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        w.set("starting")

    async def _ping(self, w: Worker, timeout: float) -> bool:
        """True when the worker answers a ping on a fresh connection within `timeout`."""

        async def once() -> bool:
            reader, writer = await asyncio.open_unix_connection(str(w.socket))
            try:
                writer.write(protocol.encode({"op": "ping"}))
                await writer.drain()
                reply = protocol.decode(await reader.readline())
                # Our process, not whatever else may hold the path for a moment (an old worker).
                return bool(reply.get("pong")) and reply.get("pid") == w.proc.pid
            finally:
                writer.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and w.alive:
            try:
                if await asyncio.wait_for(once(), max(0.05, deadline - time.monotonic())):
                    return True
            except (OSError, ValueError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)  # not listening yet
        return False

    async def _wait_ready(self, w: Worker) -> None:
        if not await self._ping(w, self.cfg.start_timeout):
            if not w.alive:
                raise RuntimeError(f"worker {w.index} exited while starting (status {w.proc.returncode})")
            raise RuntimeError(f"worker {w.index} did not start within {self.cfg.start_timeout:.0f} s")

    async def start(self) -> None:
        for w in self.workers:
            self._spawn(w)
        await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        for w in self.workers:
            w.set("ready")
        for w in self.workers:
            for _ in range(self.cfg.parallel):
                self._free_slot(w)
        self._watch_task = asyncio.create_task(self._watch())

    def _background(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        """Deadlines and deaths, whatever the lease holders are doing."""
        while not self.stopping:
            now = time.monotonic()
            for w in self.workers:
                for lease in list(w.leases):
                    if now > lease.deadline and not lease.expired:
                        log.warning(
                            "worker %d: request ran past the deadline of %g s; reclaiming it", w.index, self.cfg.timeout
                        )
                        lease.expire()
                        await lease.close()  # whether or not its holder is still there to do it
                if w.state == "ready" and not w.alive:
                    self._restart_later(w)
            await asyncio.sleep(0.1)

    def _restart_later(self, w: Worker, why: Optional[str] = None) -> None:
        """Replace the process (once, however many of its leases report it); `why` is what
        the front saw, logged unless the process turns out to have died by itself."""
        if w.state == "restarting":
            return
        serving = sum(lease.incarnation == w.incarnation for lease in w.leases)
        w.set("restarting")
        w.incarnation += 1
        w.drains.clear()
        w.free = 0
        self.router.forget(w.index)  # its caches died with it
        self._background(self._restart(w, why, serving))

    async def _restart(self, w: Worker, why: Optional[str], serving: int) -> None:
        # A broken connection is often a death the kernel has not reported yet: wait a moment
        # so the log says which it was.
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, wait_exit, w.proc, 0.5 if why else 0.0)
        if code is not None:
            log.error(
                "worker %d (pid %d) died (%s)%s",
                w.index,
                w.proc.pid,
                exit_text(code),
                f" while serving {serving} request{'s' * (serving != 1)}" if serving else "",
            )
        elif why:
            log.warning("worker %d %s; restarting it", w.index, why)
        while not self.stopping:
            if w.alive:
                w.proc.kill()
            if w.proc is not None:
                await loop.run_in_executor(None, w.proc.wait)
            w.restarts += 1
            t0 = time.monotonic()
            self._spawn(w)
            w.set("restarting")
            try:
                await self._wait_ready(w)
            except RuntimeError as e:
                log.error("restarting worker %d failed: %s; trying again", w.index, e)
                await asyncio.sleep(1.0)
                continue
            log.warning("worker %d restarted (pid %d) in %.1f s", w.index, w.proc.pid, time.monotonic() - t0)
            w.set("ready")
            for _ in range(self.cfg.parallel):
                self._free_slot(w)
            return

    async def _drain(self, w: Worker, incarnation: int) -> None:
        """After an unclean lease: the worker must answer a ping soon, or be restarted."""
        began = time.monotonic()
        w.drains.append(began)
        answered = await self._ping(w, self.cfg.drain_timeout)
        if w.incarnation != incarnation:  # replaced meanwhile, with fresh slots
            return
        w.drains.remove(began)
        if answered:
            self._free_slot(w)
        else:
            if w.alive:
                log.warning(
                    "worker %d did not stop its cancelled request within %g s; restarting it",
                    w.index,
                    self.cfg.drain_timeout,
                )
            self._restart_later(w)

    def _free_slot(self, w: Worker) -> None:
        w.free += 1
        self._wake()

    def _wake(self) -> None:
        """Free slots to the waiting requests, in order."""
        while self.waiters:
            fut, keys = self.waiters[0]
            if fut.done():  # given up (cancelled)
                self.waiters.popleft()
                continue
            w = self._take(keys)
            if w is None:
                return
            self.waiters.popleft()
            fut.set_result((w, w.incarnation))

    def _has_slot(self, w: Worker) -> bool:
        return w.free > 0 and w.state == "ready" and w.alive

    def _take(self, keys: Sequence[bytes]) -> Optional[Worker]:
        """Take a free slot for a request with these prefix keys: on the worker that last
        served the longest of them if it has one free and is at most ROUTE_SLACK sequences
        busier than the least busy worker (else the next longest's, ...), else on the worker
        with the most free slots. None when no worker has one."""
        free = [w for w in self.workers if self._has_slot(w)]
        if not free:
            return None
        known = [self.workers[i] for i, inc in self.router.candidates(keys) if inc == self.workers[i].incarnation]
        # A cached start is worth a little imbalance, not a pile: prompts sharing a system
        # prompt would otherwise all go to one worker while another's cores stay idle.
        most = max(c.free for c in free)
        w = next((c for c in known if self._has_slot(c) and c.free >= most - ROUTE_SLACK), None)
        if w is not None and w is known[0]:
            w.route_hits += 1
        elif known:
            self.counters["route_fallbacks"] += 1
        if w is None:
            w = max(free, key=lambda c: (c.free, -c.leased_at))
        w.free -= 1
        self.leased += 1
        w.leased_at = self.leased
        return w

    @property
    def waiting(self) -> int:
        return sum(not fut.done() for fut, _ in self.waiters)

    async def stop(self) -> None:
        self.stopping = True
        for t in [self._watch_task, *self._tasks]:
            if t is not None:
                t.cancel()
        # Requests have finished or been given up (uvicorn's --grace came first), and a worker
        # keeps nothing worth saving: it ignores SIGTERM (see worker.main), so it is killed.
        for w in self.workers:
            if w.alive:
                w.proc.kill()
        for w in self.workers:
            if w.proc is not None:
                w.proc.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- leases -----------------------------------------------------------------------------
    async def acquire(self, keys: Sequence[bytes] = ()) -> Lease:
        """A slot for a request whose prompt starts as `keys` say (`route.prefix_keys`)."""
        w = self._take(keys) if not self.waiting else None
        if w is None:
            if self.waiting >= self.cfg.queue_limit:
                raise QueueFull()
            w = await self._wait(keys)
        self.router.remember(keys, w.index, w.incarnation)
        lease = Lease(self, w, time.monotonic() + self.cfg.timeout)
        w.leases.add(lease)
        return lease

    async def _wait(self, keys: Sequence[bytes]) -> Worker:
        first = True
        while True:
            fut = asyncio.get_running_loop().create_future()
            entry = (fut, keys)
            if first:
                self.waiters.append(entry)
            else:
                self.waiters.appendleft(entry)
            first = False
            self._wake()  # (after a stale slot: another may be free already)
            try:
                w, incarnation = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # a slot came as we were cancelled: hand it on
                    w, incarnation = fut.result()
                    if incarnation == w.incarnation and w.state == "ready":
                        self._free_slot(w)
                elif entry in self.waiters:
                    self.waiters.remove(entry)
                raise
            # A slot of a process that died since (its restart brings new ones): wait on, first in line.
            if incarnation == w.incarnation and w.state == "ready" and w.alive:
                return w

    def _return(self, lease: Lease, clean: bool, broken: Optional[str] = None) -> None:
        w = lease.worker
        current = lease.incarnation == w.incarnation and w.state == "ready"
        if current and not w.alive:
            self._restart_later(w)  # (it counts this lease among the requests the death failed)
        elif current and broken:  # answers pings, maybe, but not requests: a new process is the safe bet
            self._restart_later(w, broken)
        elif current and clean:
            self._free_slot(w)
        elif current:
            self._background(self._drain(w, w.incarnation))
        # Otherwise that process is gone or going; its replacement brings its own slots.
        w.leases.discard(lease)

    def count(self, done: dict) -> None:
        """A request's `done` message, into the totals."""
        self.counters["requests"] += 1
        self.counters["prompt_tokens"] += done.get("prompt_tokens", 0)
        self.counters["cached_prompt_tokens"] += done.get("cached_tokens", 0)
        self.counters["generated_tokens"] += done.get("tokens", 0)

    def record(self, entry: dict) -> None:
        self.recent.append(entry)
        del self.recent[:-64]

    def health(self) -> dict:
        now = time.monotonic()

        def stuck(w: Worker) -> bool:
            return any(now > lease.deadline for lease in w.leases) or any(
                now - t > self.cfg.drain_timeout / 5 for t in w.drains
            )

        workers = [
            {
                "index": w.index,
                "pid": w.proc.pid if w.proc else None,
                "alive": w.alive,
                "state": w.display_state,
                "busy": bool(w.leases),
                "sequences": len(w.leases),
                "parallel": self.cfg.parallel,
                "seconds_in_state": round(now - w.since, 3),
                "stuck": stuck(w),
                "restarts": w.restarts,
                "route_hits": w.route_hits,
            }
            for w in self.workers
        ]
        serving = sum(w["alive"] and w["state"] in ("idle", "busy", "draining") and not w["stuck"] for w in workers)
        return {
            "status": "ok" if serving == len(workers) else ("degraded" if serving else "unavailable"),
            "workers": workers,
            "queue": self.waiting,
            "queue_limit": self.cfg.queue_limit,
        }

    async def worker_stats(self, timeout: float = 2.0) -> list[Optional[dict]]:
        """Each worker's own counters (`{"op": "stats"}`: sequences, KV cells, tokens), or
        None for one that does not answer in time."""

        async def one(w: Worker) -> Optional[dict]:
            if w.state != "ready" or not w.alive:
                return None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(w.socket)), timeout)
                try:
                    writer.write(protocol.encode({"op": "stats"}))
                    await writer.drain()
                    reply = protocol.decode(await asyncio.wait_for(reader.readline(), timeout))
                finally:
                    writer.close()
            except (OSError, ValueError, asyncio.TimeoutError):
                return None
            stats = reply.get("stats")
            return stats if isinstance(stats, dict) and reply.get("pid") == w.proc.pid else None

        return list(await asyncio.gather(*(one(w) for w in self.workers)))


def wait_exit(proc: Optional[subprocess.Popen], timeout: float) -> Optional[int]:
    """The process's exit status once it has exited (waiting up to `timeout`), else None."""
    if proc is None:
        return None
    try:
        return proc.wait(timeout=timeout) if timeout > 0 else proc.poll()
    except subprocess.TimeoutExpired:
        return None


def exit_text(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def clean_stale_socket_dirs() -> None:
    """Remove socket folders left by fronts that were killed (SIGKILL gives no chance to
    clean up): ours, named after a process that no longer runs."""
    root = Path(tempfile.gettempdir())
    for d in root.glob(f"{SOCKET_DIR_PREFIX}*-*"):
        try:
            pid = int(d.name[len(SOCKET_DIR_PREFIX) :].split("-", 1)[0])
            if d.stat().st_uid != os.getuid() or pid_running(pid):
                continue
        except (ValueError, OSError):
            continue
        shutil.rmtree(d, ignore_errors=True)
        log.info("removed %s, left by a server that is gone", d)


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
