"""The HTTP front of `llama-rs serve` (FastAPI): checks each request at the edge, leases a
worker (pool.py) for it, and shapes the worker's messages into the endpoint's format: the
seed's `/api/completion`, OpenAI's `/v1/completions` and `/v1/chat/completions` (with
server-sent events), `/v1/models`, `/health`, the web page at `/`, and `/docs`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

import llama_rs

from . import docs, schemas
from .chat import render_chat
from .page import PAGE
from .pool import Lease, Pool, PoolConfig, QueueFull, WorkerFailed
from .schemas import ChatRequest, CompletionRequest, OpenAIRequest, SeedCompletionRequest, Unsupported
from .shapes import Choice, chat_logprobs, completion_logprobs, token_text, usage

log = logging.getLogger("llama_rs.serve")


@dataclass
class ServerConfig:
    model: Optional[Path]
    model_name: str
    n_vocab: int
    workers: int = 1
    threads: int = 1
    n_ctx: int = 512
    queue_limit: int = 16
    max_body: int = 1 << 20
    api_key: Optional[str] = None
    chat_template: Optional[str] = None
    timeout: float = 600.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def error_body(message: str, type: str, param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": None}}


ERRORS = {  # documented on every API route
    400: "Invalid request: the message names the field.", 401: "Missing or wrong API key.",
    413: "Request body over --max-body.", 502: "The worker failed; it is being restarted.",
    503: "Every worker is busy and the queue is full (Retry-After).", 504: "The request ran past --timeout.",
}


def responses(ok: type[BaseModel], stream: bool = False) -> dict:
    out: dict[Any, Any] = {code: {"model": schemas.ErrorResponse, "description": d} for code, d in ERRORS.items()}
    out[200] = {"model": ok, "description": "The answer" + (" (text/event-stream when stream is true)" if stream else "")}
    if stream:
        # Each event's data is a JSON chunk, then the literal [DONE].
        event = {"type": "object", "required": ["data"],
                 "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
        out[200]["content"] = {"text/event-stream": {"schema": event}}
    return out


# -- the edge: JSON, Unicode, field names ----------------------------------------------------

def _no_constants(name: str):
    raise ApiError(400, f"request body is not valid JSON: {name} is not a JSON number")


def first_bad_string(data: Any) -> Optional[str]:
    """Path of the first string (or key) that is not valid Unicode (a lone surrogate such as
    "\\ud800", which JSON escapes can spell but UTF-8 cannot encode)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((f"{path}.{k}" if path else str(k), k))
                stack.append((f"{path}.{k}" if path else str(k), x))
        elif isinstance(v, list):
            stack.extend((f"{path}.{i}" if path else str(i), x) for i, x in enumerate(v))
    return None


async def parse_body(request: Request, model: type[BaseModel]):
    """JSON body -> `model`, whatever the Content-Type (the seed's clients send none)."""
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # also: digits past Python's int limit, deep nesting
        why = "nested too deeply" if isinstance(e, RecursionError) else None
        raise ApiError(400, f"request body is not valid JSON{': ' + why if why else ''}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    bad = first_bad_string(data)
    if bad is not None:
        raise ApiError(400, f"{bad}: invalid Unicode (a lone UTF-16 surrogate)", param=bad)
    try:
        return model.model_validate(data)
    except Unsupported as e:
        raise ApiError(400, str(e), param=e.field) from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None) from None


@dataclass
class Job:
    """One choice to generate: the worker's request line, and how to name its fields."""
    prompt: Any
    params: dict
    index: int = 0
    prompt_index: int = 0
    echo: bool = False
    names: dict = field(default_factory=dict)  # engine parameter -> the request's field name

    def wire(self) -> dict:
        return {"op": "generate", "prompt": self.prompt, "params": self.params, "echo": self.echo}


def checked(params: dict, names: dict, n_vocab: int) -> dict:
    """The engine's own range checks, before a worker is taken; errors name the request's field."""
    try:
        llama_rs.check_generation(**params, n_vocab=n_vocab)
    except llama_rs.ParamError as e:
        name = names.get(e.param, e.param)
        msg = str(e)
        if msg.startswith(e.param):
            msg = name + msg[len(e.param):]
        raise ApiError(400, msg if msg.startswith(name) else f"{name}: {msg}", param=name) from None
    return params


def worker_error(msg: dict, names: dict) -> ApiError:
    err = msg.get("error") or {}
    param = err.get("param")
    name = names.get(param, param)
    text = str(err.get("message") or "the worker refused the request")
    if param and text.startswith(param):
        text = name + text[len(param):]
    if err.get("type") == "server_error":
        return ApiError(500, text, "server_error")
    return ApiError(400, text, param=name)


def seeds(seed: Optional[int], count: int) -> list[Optional[int]]:
    """Choice i gets seed + i (wrapping within the engine's 64 bits); no seed: random each."""
    if seed is None or seed < 0:
        return [seed] * count
    return [(seed + i) % (1 << 64) for i in range(count)]


# -- the app -----------------------------------------------------------------------------------

def create_app(cfg: ServerConfig) -> FastAPI:
    pool = Pool(PoolConfig(cfg.model, cfg.workers, cfg.threads, cfg.n_ctx, cfg.queue_limit, timeout=cfg.timeout))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(
        title="llama-rs",
        description="LLaMA-family models on the CPU: the seed's /api/completion and an OpenAI-compatible API.",
        version=llama_rs.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
    )
    app.state.pool = pool
    docs.install(app, schemas.REQUEST_MODELS)
    app.add_middleware(BodyLimit, limit=cfg.max_body)
    app.add_middleware(AccessLog)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(error_body(e.message, e.type, e.param), status_code=e.status, headers=e.headers)

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
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != cfg.api_key:  # RFC 7235: the scheme is case-insensitive
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error",
                           headers={"WWW-Authenticate": "Bearer"})

    def check_tokens(value: int, name: str, allow_zero: bool = False) -> int:
        if value < (0 if allow_zero else 1):
            raise ApiError(400, f"{name}: must be at least {0 if allow_zero else 1}, got {value}", param=name)
        if value > cfg.n_ctx:
            raise ApiError(400, f"{name}: {value} is beyond the context of {cfg.n_ctx} tokens", param=name)
        return value

    # -- running jobs on a worker ---------------------------------------------------------------
    async def lease() -> Lease:
        try:
            return await pool.acquire()
        except QueueFull:
            raise ApiError(503, f"all {cfg.workers} workers are busy and {cfg.queue_limit} requests are waiting; "
                                "retry later", "server_busy", headers={"Retry-After": "1"}) from None

    def failed(e: WorkerFailed, lease: Lease) -> ApiError:
        if lease.expired:
            return ApiError(504, f"the request ran past the server's --timeout of {cfg.timeout:g} s", "timeout")
        return ApiError(502, f"{e}; the worker is being restarted, please retry", "worker_error")

    async def events(ls: Lease, jobs: list[Job], request: Request) -> AsyncIterator[tuple[Job, dict]]:
        for job in jobs:
            try:
                async for msg in ls.request(job.wire()):
                    if "error" in msg:
                        raise worker_error(msg, job.names)
                    if msg.get("done"):
                        pool.record({"worker": ls.worker.index, "pid": msg["pid"], "started": msg["started"],
                                     "ended": msg["ended"], "tokens": msg["tokens"]})
                        count(request, msg)
                    yield job, msg
            except WorkerFailed as e:
                raise failed(e, ls) from None

    async def collect(request: Request, jobs: list[Job]) -> list[Choice]:
        async def work() -> list[Choice]:
            async with await lease() as ls:
                out = {j.index: Choice(j.index, j.prompt_index) for j in jobs}
                async for job, msg in events(ls, jobs, request):
                    out[job.index].add(msg)
                return [out[j.index] for j in jobs]

        return await unless_disconnected(request, work())

    async def stream(request: Request, jobs: list[Job], frame) -> StreamingResponse:
        """SSE: `frame(job, msg)` -> events to send. Errors before the first message are
        HTTP errors; after it, an error event. The lease ends with the stream, however it ends."""
        ls = await unless_disconnected(request, lease())
        it = events(ls, jobs, request)
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
                yield sse_line(error_body(e.message, e.type, e.param))
            except Exception as e:  # headers are sent: the error can only be an event now
                log.exception("internal error while streaming %s", request.url.path)
                yield sse_line(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))
            finally:
                await end()

        # The background task also runs when the body never started (the client left first).
        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(end))

    # -- endpoints --------------------------------------------------------------------------------
    auth = [Depends(check_key)]

    @app.post("/api/completion", dependencies=auth, tags=["seed"], openapi_extra=docs.json_body(SeedCompletionRequest),
              responses=responses(schemas.SeedCompletionResponse), summary="The seed's completion endpoint",
              description='CompleteReason is "length" (tokens reached), "eos" (the model ended the text), "stop" '
                          '(a stop string) or "context" (the context is full).')
    async def seed_completion(request: Request):
        req = await parse_body(request, SeedCompletionRequest)
        names = {"max_tokens": "tokens"}
        params = checked(dict(
            max_tokens=check_tokens(req.tokens, "tokens"), top_k=req.top_k, top_p=req.top_p, temp=req.temp,
            repeat_penalty=req.repeat_penalty, repeat_lastn=req.repeat_lastn, seed=req.seed, stop=stop_list(req.stop)),
            names, cfg.n_vocab)
        (c,) = await collect(request, [Job(req.prompt, params, names=names)])
        return {"Prompt": req.prompt, "Text": c.text, "Tokens": c.done["tokens"], "CompleteReason": c.done["finish_reason"]}

    def openai_params(req: OpenAIRequest, max_tokens: int, logprobs: Optional[int], names: dict) -> dict:
        bias = None
        if req.logit_bias is not None:
            try:
                bias = {int(k): v for k, v in req.logit_bias.items()}
            except ValueError:
                raise ApiError(400, "logit_bias: keys must be token ids (integers, as strings)", param="logit_bias") from None
        return checked(dict(
            max_tokens=max_tokens, top_k=req.top_k, top_p=req.top_p, temp=req.temperature,
            repeat_penalty=req.repeat_penalty, repeat_lastn=req.repeat_last_n, seed=req.seed, stop=stop_list(req.stop),
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty, logit_bias=bias,
            logprobs=logprobs), names, cfg.n_vocab)

    def jobs_for(prompts: list, params: dict, n: int, echo: bool, names: dict) -> list[Job]:
        if len(prompts) * n > schemas.MAX_CHOICES:
            raise ApiError(400, f"n: {len(prompts)} prompt(s) x n={n} is more than {schemas.MAX_CHOICES} choices",
                           param="n")
        per = seeds(params["seed"], len(prompts) * n)
        return [Job(p, {**params, "seed": per[i * n + j]}, index=i * n + j, prompt_index=i, echo=echo, names=names)
                for i, p in enumerate(prompts) for j in range(n)]

    def include_usage(req: OpenAIRequest) -> bool:
        return bool(req.stream_options and req.stream_options.include_usage)

    @app.post("/v1/completions", dependencies=auth, tags=["openai"], openapi_extra=docs.json_body(CompletionRequest),
              responses=responses(schemas.CompletionResponse, stream=True))
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        prompts = completion_prompts(req.prompt, cfg.n_vocab)
        names = {"temp": "temperature", "repeat_lastn": "repeat_last_n"}
        max_tokens = check_tokens(schemas.COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
                                  "max_tokens", allow_zero=req.echo)
        params = openai_params(req, max_tokens, req.logprobs, names)
        jobs = jobs_for(prompts, params, req.n, req.echo, names)
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def body(choices: list[dict], **extra) -> dict:
            return {"id": ident, "object": "text_completion", "created": created, "model": cfg.model_name,
                    "choices": choices, **extra}

        def lp(tokens: list[dict], offset: int) -> Optional[dict]:
            return completion_logprobs(tokens, offset) if req.logprobs is not None else None

        def prompt_chars(job: Job) -> int:  # where the completion starts in prompt + text
            return len(job.prompt) if isinstance(job.prompt, str) and not job.echo else 0

        if req.stream:
            offsets: dict[int, int] = {}
            done: list[Choice] = []

            def frame(job: Optional[Job], msg: Optional[dict]) -> list[dict]:
                if job is None:
                    return [body([], usage=usage(done))] if include_usage(req) else []
                extra = {"usage": None} if include_usage(req) else {}
                tokens = msg.get("logprobs") or []
                start = offsets.get(job.index, prompt_chars(job))
                offsets[job.index] = start + sum(len(token_text(t)) for t in tokens)
                if "echo" in msg:
                    return [body([{"text": msg["echo"], "index": job.index, "finish_reason": None,
                                   "logprobs": lp(tokens, start)}], **extra)]
                if msg.get("done"):
                    c = Choice(job.index, job.prompt_index, done=msg)
                    done.append(c)
                    return [body([{"text": "", "index": job.index, "logprobs": None,
                                   "finish_reason": c.finish_reason}], **extra)]
                return [body([{"text": msg["text"], "index": job.index, "finish_reason": None,
                               "logprobs": lp(tokens, start)}], **extra)]

            return await stream(request, jobs, frame)

        choices = await collect(request, jobs)

        def one(c: Choice) -> dict:
            return {"text": c.echo + c.text, "index": c.index, "finish_reason": c.finish_reason,
                    "logprobs": lp(c.echo_tokens + c.tokens, prompt_chars(jobs[c.index]))}

        return body([one(c) for c in choices], usage=usage(choices))

    @app.post("/v1/chat/completions", dependencies=auth, tags=["openai"], openapi_extra=docs.json_body(ChatRequest),
              responses=responses(schemas.ChatCompletionResponse, stream=True))
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatRequest)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        try:
            prompt = render_chat([{"role": m.role, "content": m.text()} for m in req.messages], cfg.chat_template)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        limit_name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        names = {"temp": "temperature", "repeat_lastn": "repeat_last_n", "logprobs": "top_logprobs",
                 "max_tokens": limit_name}
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = check_tokens(min(schemas.CHAT_DEFAULT_MAX_TOKENS, cfg.n_ctx) if limit is None else limit, limit_name)
        params = openai_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None, names)
        params["stop"] = [*params["stop"], *prompt.stop]
        jobs = jobs_for([prompt.text], params, req.n, False, names)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        if req.stream:
            done: list[Choice] = []
            started: set[int] = set()

            def chunk(index: int, delta: dict, finish: Optional[str] = None, logprobs=None) -> dict:
                out = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": cfg.model_name,
                       "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
                return {**out, "usage": None} if include_usage(req) else out

            def frame(job: Optional[Job], msg: Optional[dict]) -> list[dict]:
                if job is None:
                    if not include_usage(req):
                        return []
                    return [{"id": ident, "object": "chat.completion.chunk", "created": created,
                             "model": cfg.model_name, "choices": [], "usage": usage(done)}]
                out = []
                if job.index not in started:
                    started.add(job.index)
                    out.append(chunk(job.index, {"role": "assistant", "content": ""}))
                if msg.get("done"):
                    c = Choice(job.index, job.prompt_index, done=msg)
                    done.append(c)
                    out.append(chunk(job.index, {}, c.finish_reason))
                elif "text" in msg:
                    logprobs = chat_logprobs(msg.get("logprobs") or []) if req.logprobs else None
                    out.append(chunk(job.index, {"content": msg["text"]}, logprobs=logprobs))
                return out

            return await stream(request, jobs, frame)

        choices = await collect(request, jobs)
        return {"id": ident, "object": "chat.completion", "created": created, "model": cfg.model_name,
                "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                             "logprobs": chat_logprobs(c.tokens) if req.logprobs else None,
                             "finish_reason": c.finish_reason} for c in choices],
                "usage": usage(choices)}

    @app.get("/v1/models", dependencies=auth, tags=["openai"], response_model=schemas.ModelList,
             responses={401: {"model": schemas.ErrorResponse, "description": ERRORS[401]}})
    async def models():
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "llama-rs"}]}

    @app.get("/health", tags=["server"], summary="Workers, queue and model", response_model=schemas.Health)
    async def health():
        h = pool.health()
        return {**h, "model": cfg.model_name, "n_ctx": cfg.n_ctx, "recent": pool.recent[-16:]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.replace("{{MODEL}}", cfg.model_name).replace("{{N_CTX}}", str(cfg.n_ctx)))

    return app


def stop_list(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def completion_prompts(prompt, n_vocab: int) -> list:
    """OpenAI's four prompt forms -> a list of prompts (text or token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", param="prompt")
    prompts = [prompt] if isinstance(prompt[0], int) else list(prompt)
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            if not p:
                raise ApiError(400, f"prompt.{i}: must not be empty", param="prompt")
            bad = next((t for t in p if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise ApiError(400, f"prompt: token id {bad} is outside the vocab of {n_vocab}", param="prompt")
    return prompts


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
            log.info("%s %s %d prompt=%d gen=%d %.0fms", scope["method"], scope["path"], status[0] or 499,
                     st.get("prompt_tokens", 0), st.get("gen_tokens", 0), (time.perf_counter() - t0) * 1000)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = JSONResponse(error_body(f"request body is larger than the limit of {self.limit} bytes",
                                          "invalid_request_error"), status_code=413)
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
