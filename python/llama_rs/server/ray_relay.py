"""An HTTP exchange carried over a Ray Serve DeploymentHandle, for `serve --ray`.

Serve's proxy hands every request to the ingress deployment (`Relay`); the ingress passes it
to a replica, whose app (front.create_app, the one code path of `serve`) answers it
(`answer_with`), and sends the client the ASGI messages that app sends, as they come. What the
replica cannot say itself, the ingress says as `serve` would: a replica that dies with the
request gives the answer of a dead worker (502 with our error body, or our error event in a
stream that has begun) rather than Serve's plain-text 500 or a cut-off stream, and the
replicas' full queue gives our 503 rather than Serve's text.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Optional

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from .edge import ApiError, busy, error_response, internal_error
from .runner import error_event

log = logging.getLogger("llama_rs.serve")

#: What of the client's ASGI scope a replica's app reads (not the proxy's own objects).
FORWARDED = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string")
FORWARDED += ("root_path", "headers", "client", "server")


class Relay:
    """The ingress's ASGI app: each request to a replica (`method` of the deployment behind
    `replicas`) and its answer back."""

    def __init__(self, replicas: DeploymentHandle, method: str = "answer"):
        # (`method` of the replicas' class calls answer_with with its app.)
        self.call = getattr(replicas.options(stream=True), method)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return  # (no websocket routes)
        body = await read_body(receive)
        if body is None:
            return  # the client left
        answer = self.call.remote({k: scope[k] for k in FORWARDED if k in scope}, body)
        started: Optional[dict] = None  # the response's start, once sent
        finished = False
        try:
            async for msg in answer:
                if msg["type"] == "http.response.start":
                    started = msg
                await send(msg)
            finished = True
            return
        except BackPressureError as e:
            failure = busy(f"every replica is busy and {e.args[0]} request(s) are waiting for one")
        except RayActorError as e:  # ActorDiedError; ActorUnavailableError (its node is unreachable)
            log.warning("%s %s: its replica died: %s", scope["method"], scope["path"], type(e).__name__)
            failure = ApiError(
                502,
                f"the replica serving this request died ({type(e).__name__}); Serve is replacing it, please retry",
                "worker_error",
            )
        except DeploymentUnavailableError as e:
            failure = ApiError(503, e.message, "server_error")
        except Exception as e:  # a fault of ours or Serve's: the same answer as the front's
            log.exception("%s %s: forwarding failed", scope["method"], scope["path"])
            failure = internal_error(e)
        finally:
            if not finished:
                stop(answer)
        await fail(failure, started, scope, receive, send)


def stop(answer) -> None:
    """The client left, or the replica is gone: the replica, if any, stops the request.
    (Serve cancels a leaving client's handle calls too; this is for the other ways out.)"""
    try:
        answer.cancel()
    except Exception:  # (it raises what its routing raised, or that it was cancelled)
        pass


async def fail(e: ApiError, started: Optional[dict], scope, receive, send) -> None:
    """`e` as the answer: our JSON body, or once a stream has begun our error event (the
    stream ends there, as under `serve`). A JSON answer cut off midway can only end."""
    if started is None:
        return await error_response(e)(scope, receive, send)
    streaming = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in started["headers"])
    await send({"type": "http.response.body", "body": error_event(e) if streaming else b"", "more_body": False})


async def read_body(receive) -> Optional[bytes]:
    """The whole request body (BodyLimit in front of this bounds it); None: the client left."""
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


async def lifespan(receive, send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            return await send({"type": "lifespan.shutdown.complete"})


class ClientLeft(OSError):
    """Sent after the client left (what uvicorn raises then, an OSError)."""


async def answer_with(app, request: dict, body: bytes) -> AsyncIterator[dict]:
    """A forwarded request through `app` in this replica: the ASGI messages it sends. When
    the ingress gives up on it (the client left), the app sees the client disconnect, as
    under uvicorn: it cancels the generation and frees the sequence slot."""
    sent: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    unread = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if unread:
            return unread.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        if gone.is_set():
            raise ClientLeft("the client left")
        sent.put_nowait(msg)

    task = asyncio.ensure_future(app({**request, "state": {}}, receive, send))
    task.add_done_callback(lambda _: sent.put_nowait(None))
    try:
        while (msg := await sent.get()) is not None:
            yield msg
    finally:
        gone.set()
        await asyncio.wait({task}, timeout=30)
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), ClientLeft):
            # (the app has answered 500 already, as uvicorn's does; this is its traceback)
            log.error("%s %s: the app failed", request["method"], request["path"], exc_info=task.exception())
