"""Running a request's choices on a leased worker: collected whole, or streamed as
server-sent events; either way the lease ends with the request, however it ends, and a
client that disconnects cancels its generation."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from .config import ServerConfig
from .edge import ApiError, ClientGone, busy, error_body, internal_error, worker_error
from .pool import Lease, Pool, QueueFull, WorkerFailed
from .route import prefix_keys, prompt_text
from .shapes import Choice

log = logging.getLogger("llama_rs.serve")


@dataclass
class Job:
    """One choice to generate: the worker's request line, and how to name its fields."""

    prompt: Any
    params: dict
    index: int = 0
    prompt_index: int = 0
    echo: bool = False
    names: dict = field(default_factory=dict)  # engine parameter -> the request's field name
    #: A chat: the worker renders these with the model's template (then `prompt` is unused).
    messages: Optional[list[dict]] = None

    def route_keys(self) -> list[bytes]:
        """Where its prompt's start may be cached (`route.py`)."""
        return prefix_keys(prompt_text(self.prompt, self.messages))

    def wire(self) -> dict:
        if self.messages is not None:
            return {"op": "generate", "messages": self.messages, "params": self.params}
        return {"op": "generate", "prompt": self.prompt, "params": self.params, "echo": self.echo}


def seeds(seed: Optional[int], count: int) -> list[Optional[int]]:
    """Choice i gets seed + i (wrapping within the engine's 64 bits); no seed: random each."""
    if seed is None or seed < 0:
        return [seed] * count
    return [(seed + i) % (1 << 64) for i in range(count)]


#: frame(job, message) -> the events to send for it; frame(None, None) -> the closing events.
Frame = Callable[[Optional[Job], Optional[dict]], list[dict]]


class Runner:
    def __init__(self, pool: Pool, cfg: ServerConfig):
        self.pool, self.cfg = pool, cfg

    def check_tokens(self, value: int, name: str, allow_zero: bool = False) -> int:
        if value < (0 if allow_zero else 1):
            raise ApiError(400, f"{name}: must be at least {0 if allow_zero else 1}, got {value}", param=name)
        if value > self.cfg.n_ctx:
            raise ApiError(400, f"{name}: {value} is beyond the context of {self.cfg.n_ctx} tokens", param=name)
        return value

    async def lease(self, jobs: list[Job]) -> Lease:
        """A slot for the request's choices (all run on it, one after another), preferably
        on the worker that holds the start of their prompt."""
        try:
            return await self.pool.acquire(jobs[0].route_keys() if jobs else ())
        except QueueFull:
            raise busy(
                f"all {self.cfg.workers * self.cfg.parallel} sequence slots ({self.cfg.workers} worker(s) x "
                f"{self.cfg.parallel}) are busy and {self.cfg.queue_limit} requests are waiting"
            ) from None

    def failed(self, e: WorkerFailed, lease: Lease) -> ApiError:
        if lease.expired:
            return ApiError(504, f"the request ran past the server's --timeout of {self.cfg.timeout:g} s", "timeout")
        return ApiError(502, f"{e}; the worker is being restarted, please retry", "worker_error")

    async def events(self, ls: Lease, jobs: list[Job], request: Request) -> AsyncIterator[tuple[Job, dict]]:
        for job in jobs:
            try:
                async for msg in ls.request(job.wire()):
                    if "error" in msg:
                        raise worker_error(msg, job.names)
                    if msg.get("done"):
                        self.pool.count(msg)
                        self.pool.record(
                            {
                                "worker": ls.worker.index,
                                "pid": msg["pid"],
                                "started": msg["started"],
                                "ended": msg["ended"],
                                "tokens": msg["tokens"],
                            }
                        )
                        count(request, msg)
                    yield job, msg
            except WorkerFailed as e:
                raise self.failed(e, ls) from None

    async def collect(self, request: Request, jobs: list[Job]) -> list[Choice]:
        async def work() -> list[Choice]:
            async with await self.lease(jobs) as ls:
                out = {j.index: Choice(j.index, j.prompt_index) for j in jobs}
                async for job, msg in self.events(ls, jobs, request):
                    out[job.index].add(msg)
                return [out[j.index] for j in jobs]

        return await unless_disconnected(request, work())

    async def stream(self, request: Request, jobs: list[Job], frame: Frame) -> StreamingResponse:
        """Errors before the first message are HTTP errors; after it, an error event."""
        ls = await unless_disconnected(request, self.lease(jobs))
        it = self.events(ls, jobs, request)
        try:
            first = await unless_disconnected(request, it.__anext__())
        except BaseException:
            await it.aclose()
            await ls.close()
            raise

        async def end() -> None:
            await it.aclose()
            await ls.close()  # a client that went away frees its worker at once

        async def body() -> AsyncIterator[bytes]:
            try:
                for e in frame(*first):
                    yield sse_line(e)
                async for job, msg in it:
                    for e in frame(job, msg):
                        yield sse_line(e)
                for e in frame(None, None):
                    yield sse_line(e)
                yield b"data: [DONE]\n\n"
            except ApiError as e:
                yield error_event(e)
            except Exception as e:  # headers are sent: the error can only be an event now
                log.exception("internal error while streaming %s", request.url.path)
                yield error_event(internal_error(e))
            finally:
                await end()

        # The background task also runs when the body never started (the client left first).
        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            background=BackgroundTask(end),
        )


def count(request: Request, done: dict) -> None:
    """Token counts for the access log line."""
    st = request.state
    st.prompt_tokens = getattr(st, "prompt_tokens", 0) + done.get("prompt_tokens", 0)
    st.gen_tokens = getattr(st, "gen_tokens", 0) + done.get("tokens", 0)


async def unless_disconnected(request: Request, coro):
    """Await `coro`, but give up (cancelling it: the lease ends, the worker stops at its next
    token) as soon as the client closes the connection."""
    work = asyncio.ensure_future(coro)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (work, watch):
            if not t.done():
                t.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    try:
        await work  # let its cleanup run
    except BaseException:
        pass
    raise ClientGone()


def sse_line(event: dict) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def error_event(e: ApiError) -> bytes:
    """An error once a stream has begun: an event with the error body (no [DONE] after it)."""
    return sse_line(error_body(e.message, e.type, e.param))
