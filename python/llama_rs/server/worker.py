"""A serving worker: one model, one request at a time, on a unix socket.

The front (`front.py`) starts `-w` of these with `llama-rs worker --socket PATH ...` and
forwards requests to them. `POST /generate` answers with newline-delimited JSON: one
`{"text": ...}` line per piece, then `{"done": true, ...}` with the counts. Errors found
before the first piece (bad parameters, prompt longer than the context) are a 400 with
`{"error": {...}}`. A client that goes away stops the generation at the next token.
"""

import ctypes
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

import llama_rs


class GenerateRequest(BaseModel):
    prompt: Union[str, list[int]]
    max_tokens: int = Field(128, ge=0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    temp: float = Field(0.8, ge=0.0)
    repeat_penalty: float = Field(1.3, gt=0.0)
    repeat_lastn: int = Field(64, ge=0)
    seed: Optional[int] = None
    stop: list[str] = []


def die_with_parent(parent_pid: int) -> None:
    """No orphan workers: the kernel kills us when the front dies (Linux), and a watcher
    thread covers the rest (and the race before prctl took effect)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    if os.getppid() != parent_pid:
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def create_app(model: llama_rs.Model):
    app = FastAPI(title="llama-rs worker")
    busy = threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "pid": os.getpid(), "busy": busy.locked(), "n_ctx": model.n_ctx}

    @app.post("/generate")
    async def generate(req: GenerateRequest, request: Request):
        if not busy.acquire(blocking=False):
            return JSONResponse({"error": {"message": "worker busy", "type": "busy"}}, status_code=503)
        started = time.time()
        try:
            gen = model.generate(
                req.prompt, max_tokens=req.max_tokens, top_k=req.top_k, top_p=req.top_p, temp=req.temp,
                repeat_penalty=req.repeat_penalty, repeat_lastn=req.repeat_lastn, seed=req.seed, stop=req.stop,
            )
        except ValueError as e:
            busy.release()
            return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error"}}, status_code=400)
        except BaseException:
            busy.release()
            raise

        def lines() -> Iterator[bytes]:
            try:
                for piece in gen:
                    yield (json.dumps({"text": piece}, ensure_ascii=False) + "\n").encode()
                yield (json.dumps({
                    "done": True, "tokens": gen.tokens, "prompt_tokens": gen.prompt_tokens,
                    "finish_reason": gen.finish_reason, "started": started, "ended": time.time(),
                    "prompt_seconds": gen.prompt_seconds, "gen_seconds": gen.gen_seconds, "pid": os.getpid(),
                }) + "\n").encode()
            finally:
                busy.release()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


def serve(socket: Path, model_path: Optional[Path], n_ctx: int, n_threads: int, parent_pid: Optional[int]) -> None:
    import uvicorn

    if parent_pid:
        die_with_parent(parent_pid)
    if model_path is None:
        model = llama_rs.Model.demo(n_ctx=n_ctx, n_threads=n_threads)
    else:
        model = llama_rs.Model(model_path, n_ctx=n_ctx, n_threads=n_threads)
    if socket.exists():
        socket.unlink()
    uvicorn.run(create_app(model), uds=str(socket), log_level="warning", access_log=False)
