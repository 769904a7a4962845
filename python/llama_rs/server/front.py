"""The HTTP front of `llama-rs serve` (FastAPI): the app, its error handlers, middleware and
the small routes; the APIs are in api_seed.py and api_openai.py, requests run through
runner.py on workers leased from pool.py."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import llama_rs

from . import api_openai, api_seed, docs, metrics, schemas
from .config import ServerConfig
from .edge import ERRORS, ApiError, ClientGone, error_body, error_response, internal_error
from .page import render as render_page
from .pool import Pool, PoolConfig
from .runner import Runner

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger("llama_rs.serve")


def create_app(cfg: ServerConfig, replica: Optional[dict] = None) -> FastAPI:
    """The whole server; the pool's workers start with the app's lifespan (uvicorn's, or Ray
    Serve's in a replica). `replica` (id, node, pid) names a Ray Serve replica in /health and
    in an x-llama-rs-replica header on every answer."""
    pool = Pool(
        PoolConfig(
            cfg.model,
            cfg.workers,
            cfg.threads,
            cfg.n_ctx,
            cfg.queue_limit,
            parallel=cfg.parallel,
            kv_cells=cfg.kv_cells,
            timeout=cfg.timeout,
        )
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(
        title="llama-rs",
        description="LLaMA-family models on the CPU: the seed's /api/completion and an OpenAI-compatible API.",
        version=llama_rs.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.pool = pool
    docs.install(app, schemas.REQUEST_MODELS)
    app.add_middleware(BodyLimit, limit=cfg.max_body)
    app.add_middleware(AccessLog)
    if replica is not None:
        app.add_middleware(ReplicaHeader, replica_id=replica["id"])

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        msg = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(msg, kind), status_code=e.status_code)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, e: ClientGone):
        return Response(status_code=499)  # nobody reads it; the access log does

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):  # Starlette logs the traceback after this
        return error_response(internal_error(e))

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != cfg.api_key:  # RFC 7235: the scheme is case-insensitive
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
                "authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )

    runner = Runner(pool, cfg)
    auth = [Depends(check_key)]
    api_seed.register(app, runner, auth)
    api_openai.register(app, runner, auth)

    @app.get(
        "/v1/models",
        dependencies=auth,
        tags=["openai"],
        response_model=schemas.ModelList,
        responses={401: {"model": schemas.ErrorResponse, "description": ERRORS[401]}},
    )
    async def models():
        return {
            "object": "list",
            "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "llama-rs"}],
        }

    @app.get(
        "/health",
        tags=["server"],
        summary="Workers, queue and model",
        response_model=schemas.Health,
        response_model_exclude_unset=True,  # `replica` only under Ray
    )
    async def health():
        h = pool.health()
        # Each worker's own view (KV cells, tokens/s); a worker that does not answer at once
        # (busy starting, stopped) shows nulls rather than slowing /health down.
        for w, st in zip(h["workers"], await pool.worker_stats(timeout=0.25)):
            st = st or {}
            w.update(kv_cells_used=st.get("kv_used"), kv_cells=st.get("kv_cells"))
            w["tokens_per_second"] = st.get("tokens_per_second")
        extra = {} if replica is None else {"replica": replica}
        return {**h, "model": cfg.model_name, "n_ctx": cfg.n_ctx, "recent": pool.recent[-16:], **extra}

    @app.get(
        "/metrics",
        tags=["server"],
        summary="Prometheus metrics: sequences, queue, KV cells, tokens",
        response_class=PlainTextResponse,
    )
    async def metrics_route():
        return PlainTextResponse(
            metrics.render(pool.health(), await pool.worker_stats(), pool.counters), media_type=metrics.CONTENT_TYPE
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(render_page(cfg.model_name, cfg.n_ctx))

    return app


class AccessLog:
    """One line per request: method, path, status, prompt and generated tokens, time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]

        async def sending(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            st = scope.get("state", {})
            log.info(
                "%s %s %d prompt=%d gen=%d %.0fms",
                scope["method"],
                scope["path"],
                status[0] or 499,
                st.get("prompt_tokens", 0),
                st.get("gen_tokens", 0),
                (time.perf_counter() - t0) * 1000,
            )


class ReplicaHeader:
    """x-llama-rs-replica on every answer: which Ray Serve replica served it."""

    def __init__(self, app, replica_id: str):
        self.app, self.header = app, (b"x-llama-rs-replica", replica_id.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), self.header]}
            await send(msg)

        await self.app(scope, receive, sending)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = JSONResponse(
            error_body(f"request body is larger than the limit of {self.limit} bytes", "invalid_request_error"),
            status_code=413,
        )
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooBig()
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooBig:
            await too_big(scope, receive, send)


class _TooBig(Exception):
    pass
