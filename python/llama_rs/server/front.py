"""The HTTP front of `llama-rs serve` (FastAPI): validates requests, hands each to a free
worker process (see pool.py), and streams the worker's pieces back in the endpoint's format:
the seed's `/api/completion`, OpenAI's `/v1/completions` and `/v1/chat/completions` (with
server-sent events), `/v1/models`, `/health`, and the web page at `/`."""

import asyncio
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .chat import render_chat
from .page import PAGE
from .pool import Pool, PoolConfig, QueueFull, WorkerFailed


@dataclass
class ServerConfig:
    model: Optional[Path]
    model_name: str
    workers: int = 1
    threads: int = 1
    n_ctx: int = 512
    queue_limit: int = 16
    max_body: int = 1 << 20
    api_key: Optional[str] = None
    chat_template: Optional[str] = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 headers: Optional[dict] = None):
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers


def error_body(message: str, type: str, param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": None}}


# -- request schemas ------------------------------------------------------------------------

class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repeat_penalty: float = Field(1.3, gt=0.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None


class SeedCompletionRequest(Sampling):
    """The seed's (llama-go's) request."""
    prompt: str
    tokens: int = Field(..., gt=0)
    temp: float = Field(0.8, ge=0.0)
    repeat_lastn: int = Field(64, ge=0)


class OpenAIBase(Sampling):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, gt=0)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repeat_penalty: float = Field(1.1, gt=0.0)
    repeat_last_n: int = Field(64, ge=0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


class CompletionRequest(OpenAIBase):
    prompt: Union[str, list[str]]


class ChatMessage(BaseModel):
    role: str
    content: Optional[str] = ""


class ChatRequest(OpenAIBase):
    messages: list[ChatMessage] = Field(..., min_length=1)


def stop_list(stop: Optional[Union[str, list[str]]]) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


OPENAI_FINISH = {"length": "length", "context": "length", "eos": "stop", "stop": "stop"}


async def parse_body(request: Request, model: type[BaseModel]):
    """JSON body -> `model`, whatever the Content-Type (the seed's clients send none)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON")
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None)


def body_of(model: type[BaseModel]) -> dict:
    """OpenAPI description of a body parsed by `parse_body`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


# -- the app -----------------------------------------------------------------------------------

def create_app(cfg: ServerConfig) -> FastAPI:
    pool = Pool(PoolConfig(cfg.model, cfg.workers, cfg.threads, cfg.n_ctx, cfg.queue_limit))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(
        title="llama-rs",
        description="LLaMA-family models on the CPU: the seed's /api/completion and an OpenAI-compatible API.",
        version=__import__("llama_rs").__version__,
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.add_middleware(BodyLimit, limit=cfg.max_body)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(error_body(e.message, e.type, e.param), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        where = ".".join(loc)
        return JSONResponse(error_body(f"{where}: {msg}" if where else msg, "invalid_request_error", where or None),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        msg = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(msg, kind), status_code=e.status_code)

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {cfg.api_key}":
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error",
                           headers={"WWW-Authenticate": "Bearer"})

    # -- forwarding -----------------------------------------------------------------------------
    async def start_generation(params: dict) -> "Forward":
        if params["max_tokens"] > cfg.n_ctx:
            raise ApiError(400, f"tokens: {params['max_tokens']} is beyond the context of {cfg.n_ctx} tokens",
                           param="tokens")
        try:
            w = await pool.acquire()
        except QueueFull:
            raise ApiError(503, f"all {cfg.workers} workers are busy and {cfg.queue_limit} requests are waiting; retry later",
                           "server_busy", headers={"Retry-After": "1"})
        fwd = Forward(pool, w)
        await fwd.open(params)
        return fwd

    # -- endpoints --------------------------------------------------------------------------------
    @app.post("/api/completion", dependencies=[Depends(check_key)], tags=["seed"], openapi_extra=body_of(SeedCompletionRequest),
              summary="The seed's completion endpoint",
              description='Response: {"Prompt", "Text", "Tokens", "CompleteReason"}; CompleteReason is "length" '
                          '(tokens reached), "eos" (the model ended the text), "stop" (a stop string) or "context" '
                          "(the context is full).")
    async def seed_completion(request: Request):
        req = await parse_body(request, SeedCompletionRequest)
        fwd = await start_generation(dict(
            prompt=req.prompt, max_tokens=req.tokens, top_k=req.top_k, top_p=req.top_p, temp=req.temp,
            repeat_penalty=req.repeat_penalty, repeat_lastn=req.repeat_lastn, seed=req.seed, stop=stop_list(req.stop)))
        text, done = await fwd.collect()
        return {"Prompt": req.prompt, "Text": text, "Tokens": done["tokens"], "CompleteReason": done["finish_reason"]}

    def openai_params(req: OpenAIBase, prompt: str, default_max: int) -> dict:
        return dict(prompt=prompt, max_tokens=req.max_tokens or default_max, top_k=req.top_k, top_p=req.top_p,
                    temp=req.temperature, repeat_penalty=req.repeat_penalty, repeat_lastn=req.repeat_last_n,
                    seed=req.seed, stop=stop_list(req.stop))

    def usage(done: dict) -> dict:
        return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["tokens"],
                "total_tokens": done["prompt_tokens"] + done["tokens"]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)], tags=["openai"], openapi_extra=body_of(CompletionRequest))
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        prompt = req.prompt if isinstance(req.prompt, str) else "".join(req.prompt[:1])
        if isinstance(req.prompt, list) and len(req.prompt) > 1:
            raise ApiError(400, "prompt: only one prompt per request is supported", param="prompt")
        fwd = await start_generation(openai_params(req, prompt, 16))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str, finish: Optional[str], done: Optional[dict] = None) -> dict:
            body = {"id": ident, "object": "text_completion", "created": created, "model": cfg.model_name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            if done is not None:
                body["usage"] = usage(done)
            return body

        if req.stream:
            async def events() -> AsyncIterator[dict]:
                async for piece in fwd.pieces():
                    yield chunk(piece, None)
                yield chunk("", OPENAI_FINISH[fwd.done["finish_reason"]], fwd.done)
            return sse(events(), fwd)
        text, done = await fwd.collect()
        return chunk(text, OPENAI_FINISH[done["finish_reason"]], done)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], tags=["openai"], openapi_extra=body_of(ChatRequest))
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatRequest)
        try:
            prompt = render_chat([m.model_dump() for m in req.messages], cfg.chat_template)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages")
        fwd = await start_generation(openai_params(req, prompt, min(256, cfg.n_ctx)))
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            def chunk(delta: dict, finish: Optional[str], done: Optional[dict] = None) -> dict:
                body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": cfg.model_name,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                if done is not None:
                    body["usage"] = usage(done)
                return body

            async def events() -> AsyncIterator[dict]:
                yield chunk({"role": "assistant", "content": ""}, None)
                async for piece in fwd.pieces():
                    yield chunk({"content": piece}, None)
                yield chunk({}, OPENAI_FINISH[fwd.done["finish_reason"]], fwd.done)
            return sse(events(), fwd)
        text, done = await fwd.collect()
        return {"id": ident, "object": "chat.completion", "created": created, "model": cfg.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": OPENAI_FINISH[done["finish_reason"]]}],
                "usage": usage(done)}

    @app.get("/v1/models", dependencies=[Depends(check_key)], tags=["openai"])
    async def models():
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "llama-rs"}]}

    @app.get("/health", tags=["server"], summary="Workers, queue and model")
    async def health():
        return {"status": "ok", "model": cfg.model_name, "n_ctx": cfg.n_ctx, **pool.health(), "recent": pool.recent[-16:]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.replace("{{MODEL}}", cfg.model_name).replace("{{N_CTX}}", str(cfg.n_ctx)))

    return app


class Forward:
    """One request on one worker: open the stream (errors before the first piece become HTTP
    errors), then read pieces; the worker goes back to the pool when this ends, however."""

    def __init__(self, pool: Pool, worker):
        self.pool, self.worker = pool, worker
        self.done: dict = {}
        self._resp: Optional[httpx.Response] = None
        self._ctx = None
        self._released = False

    async def open(self, params: dict) -> None:
        try:
            for attempt in range(200):  # a worker still closing a cancelled request says busy briefly
                self._ctx = self.worker.client.stream("POST", "/generate", json=params)
                self._resp = await self._ctx.__aenter__()
                if self._resp.status_code != 503:
                    break
                await self._ctx.__aexit__(None, None, None)
                await asyncio.sleep(0.02)
            if self._resp.status_code != 200:
                body = json.loads(await self._resp.aread())
                await self.close()
                err = body.get("error", {}) if isinstance(body, dict) else {}
                msg = err.get("message") or str(body)
                if isinstance(body.get("detail"), list):  # the worker's own validation
                    msg = "; ".join(f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in body["detail"])
                raise ApiError(400 if self._resp.status_code < 500 else 502, msg)
        except httpx.TransportError as e:
            await self.close(healthy=False)
            raise ApiError(502, f"worker {self.worker.index} failed: {e or type(e).__name__}", "worker_error")

    async def pieces(self) -> AsyncIterator[str]:
        try:
            async for line in self._resp.aiter_lines():
                if not line:
                    continue
                msg = json.loads(line)
                if "text" in msg:
                    yield msg["text"]
                elif msg.get("done"):
                    self.done = msg
                    self.pool.record({"worker": self.worker.index, "pid": msg["pid"], "started": msg["started"],
                                      "ended": msg["ended"], "tokens": msg["tokens"]})
            if not self.done:
                raise WorkerFailed(f"worker {self.worker.index} ended the reply early")
        except httpx.TransportError as e:
            await self.close(healthy=False)
            raise WorkerFailed(f"worker {self.worker.index} died while generating ({type(e).__name__})")
        except WorkerFailed:
            await self.close(healthy=False)
            raise
        finally:
            await self.close()

    async def collect(self) -> tuple[str, dict]:
        try:
            text = "".join([p async for p in self.pieces()])
        except WorkerFailed as e:
            raise ApiError(502, f"{e}; the worker is being restarted, please retry", "worker_error")
        return text, self.done

    async def close(self, healthy: bool = True) -> None:
        if self._released:
            return
        self._released = True
        if self._ctx is not None:
            try:
                await self._ctx.__aexit__(None, None, None)
            except Exception:
                healthy = False
        self.pool.release(self.worker, healthy=healthy)


def sse(events: AsyncIterator[dict], fwd: Forward) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for e in events:
                yield f"data: {json.dumps(e, ensure_ascii=False)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except WorkerFailed as e:
            yield f"data: {json.dumps(error_body(str(e), 'worker_error'))}\n\n".encode()
        finally:
            await fwd.close()  # a client that went away frees its worker at once

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


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
