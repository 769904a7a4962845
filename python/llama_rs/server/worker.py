"""A serving worker: one model, one connection at a time, on a unix socket.

The front (`front.py`, through `pool.py`) starts `-w` of these as
`python -m llama_rs.server.worker --socket PATH ...` and speaks `protocol.py` to them. The
worker is deliberately a plain blocking loop: it accepts one connection (a lease), answers
its request lines in order, and goes back to `accept` when the front hangs up. A request
that fails in any way is answered with an `error` line; the worker itself keeps serving.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import llama_rs

from . import protocol


class PeerGone(Exception):
    """The front closed the connection: stop what we are doing."""


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


class Lease:
    """One connection from the front."""

    def __init__(self, conn: socket.socket, model: llama_rs.Model):
        self.conn, self.model = conn, model
        self.reader = conn.makefile("rb")

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.conn.sendall(protocol.encode(msg))
        except OSError as e:  # BrokenPipe, ConnectionReset: the front hung up
            raise PeerGone() from e

    def peer_closed(self) -> bool:
        """True once the front hung up (readable with nothing to read). Checked between
        tokens, so a cancelled generation stops at its next token even while its pieces
        are held back (a possible stop string, half a UTF-8 character)."""
        readable, _, _ = select.select([self.conn], [], [], 0)
        if not readable:
            return False
        try:
            return self.conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def serve(self) -> None:
        while True:
            line = self.reader.readline(protocol.MAX_LINE)
            if not line:
                return
            try:
                req = protocol.decode(line)
                if req.get("op") == "ping":
                    self.send({"pong": True, "pid": os.getpid()})
                elif req.get("op") == "generate":
                    self.generate(req)
                else:
                    self.error(f"unknown op {req.get('op')!r}", "server_error")
            except PeerGone:
                return
            except llama_rs.ParamError as e:
                self.error(str(e), "invalid_request_error", e.param)
            except ValueError as e:  # prompt longer than the context, broken Unicode, ...
                self.error(str(e), "invalid_request_error")
            except Exception as e:  # never take the worker down with one request
                self.error(f"internal error in the worker: {type(e).__name__}: {e}", "server_error")

    def error(self, message: str, kind: str, param: Optional[str] = None) -> None:
        self.send({"error": {"message": message, "type": kind, "param": param}})

    # -- generation ------------------------------------------------------------------------
    def token(self, id: int, logprob: Optional[float], top: Optional[list]) -> dict[str, Any]:
        b = self.model.token_bytes
        return {
            "id": id,
            "bytes": list(b(id)),
            "logprob": logprob,
            "top": None if top is None else [[t, list(b(t)), lp] for t, lp in top],
        }

    def echo(self, prompt, top_n: Optional[int]) -> None:
        ids = self.model.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        msg: dict[str, Any] = {"echo": prompt if isinstance(prompt, str) else self.model.detokenize(ids)}
        if top_n is not None and ids:
            scored = self.model.score(ids, top_n) if len(ids) > 1 else []
            tokens = [self.token(t, lp, top) for t, (lp, top) in zip(ids[1:], scored)]
            if ids[0] != self.model.bos_token:  # no BOS: the first token has no context to score it
                tokens.insert(0, self.token(ids[0], None, None))
            msg["logprobs"] = tokens
        self.send(msg)

    def generate(self, req: dict[str, Any]) -> None:
        started = time.time()
        params = dict(req.get("params") or {})
        if params.get("logit_bias"):  # JSON object keys are strings; the engine wants token ids
            params["logit_bias"] = {int(k): v for k, v in params["logit_bias"].items()}
        top_n = params.get("logprobs")
        if "messages" in req:  # the library's chat path: the model's template, its stop strings
            try:
                gen = self.model.chat_stream(req["messages"], **params)
            except llama_rs.ParamError:
                raise
            except ValueError as e:  # the messages or the template: say which field
                return self.error(str(e), "invalid_request_error", "messages")
        else:
            if req.get("echo"):
                self.echo(req["prompt"], top_n)
            gen = self.model.generate(req["prompt"], **params)

        def tokens() -> list:
            return [self.token(t, lp, top) for t, lp, top in gen.take_logprobs()] if top_n is not None else []

        for piece in gen:
            msg: dict[str, Any] = {"text": piece}
            if top_n is not None:
                msg["logprobs"] = tokens()
            self.send(msg)
            if self.peer_closed():
                raise PeerGone()
        rest = tokens()  # tokens that added no text (the last one held back, say)
        if rest:
            self.send({"text": "", "logprobs": rest})
        self.send(
            {
                "done": True,
                "tokens": gen.tokens,
                "prompt_tokens": gen.prompt_tokens,
                "finish_reason": gen.finish_reason,
                "started": started,
                "ended": time.time(),
                "prompt_seconds": gen.prompt_seconds,
                "gen_seconds": gen.gen_seconds,
                "pid": os.getpid(),
            }
        )


def serve(socket_path: Path, model_path: Optional[Path], n_ctx: int, n_threads: int, parent_pid: Optional[int]) -> None:
    if parent_pid:
        die_with_parent(parent_pid)
    if model_path is None:
        model = llama_rs.Model.demo(n_ctx=n_ctx, n_threads=n_threads)
    else:
        model = llama_rs.Model(model_path, n_ctx=n_ctx, n_threads=n_threads)
    if socket_path.exists():
        socket_path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(socket_path))
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        with conn:
            Lease(conn, model).serve()


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m llama_rs.server.worker", description="One serving worker (started by `llama-rs serve`)."
    )
    ap.add_argument("--socket", type=Path, required=True)
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--parent-pid", type=int)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the front's to handle
    try:
        serve(a.socket, a.model, a.ctx_size, a.threads, a.parent_pid)
    except (llama_rs.ModelError, ValueError, OSError) as e:
        print(f"llama-rs worker: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
