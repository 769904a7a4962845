"""A serving worker: one model, up to `--parallel` generations at once, on a unix socket.

The front (`front.py`, through `pool.py`) starts `-w` of these as
`python -m llama_rs.server.worker --socket PATH ...` and speaks `protocol.py` to them. Each
connection (a lease of one of the worker's sequence slots) is served by its own thread in a
plain blocking loop: it answers its request lines in order, and ends when the front hangs
up. Generations go to the `Scheduler`, one thread that owns the batch engine and steps every
running sequence together (one pass over the weights for all of them). A request that fails
in any way is answered with an `error` line; the worker itself keeps serving.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import queue
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


#: Seconds over which the worker's tokens per second are counted.
RATE_WINDOW = 10.0


class Sequence:
    """One generation as its connection thread sees it: the scheduler's replies, in order."""

    def __init__(self, prompt, params: dict):
        self.prompt, self.params = prompt, params
        self.id: Optional[int] = None
        self.tokens_seen: Optional[int] = None  # the scheduler's count, for its stats
        #: ("added", None) or ("error", exception) first, then ("event", BatchEvent) until the
        #: finishing one, or ("error", exception) if the engine failed.
        self.replies: queue.SimpleQueue = queue.SimpleQueue()


class Scheduler:
    """The batch engine on its own thread. Connection threads `submit` sequences and read
    their replies; each step advances every running sequence by one token (or a chunk of
    its prompt), and sleeps when none runs."""

    def __init__(
        self, model: llama_rs.Model, parallel: int, n_ctx: int, n_threads: int, kv_cells: Optional[int] = None
    ):
        self.batch = model.batch_engine(parallel, n_ctx, n_threads, kv_cells=kv_cells)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.running: dict[int, Sequence] = {}
        self.waiting: collections.deque[Sequence] = collections.deque()
        #: (when, tokens generated) of the steps in the last RATE_WINDOW seconds.
        self.made: collections.deque[tuple[float, int]] = collections.deque()
        # Read by other threads (the stats op): plain values, written after each step.
        self.stats = {"active": 0, "waiting": 0, "capacity": self.batch.capacity, "kv_used": 0, "kv_cached": 0}
        self.stats.update(kv_cells=self.batch.kv_cells, kv_allocated=0, kv_bytes=0, generated=0, prompt=0, steps=0)
        threading.Thread(target=self._loop, daemon=True, name="scheduler").start()

    def submit(self, prompt, params: dict) -> Sequence:
        seq = Sequence(prompt, params)
        self.inbox.put(("add", seq))
        return seq

    def cancel(self, seq: Sequence) -> None:
        self.inbox.put(("cancel", seq))

    def _take(self, msg: tuple) -> None:
        op, seq = msg
        if op == "add":
            self.waiting.append(seq)
        elif op == "cancel":
            if seq.id in self.running:
                self.batch.cancel(seq.id)
                del self.running[seq.id]
            elif seq in self.waiting:
                self.waiting.remove(seq)

    def _admit(self) -> None:
        """Waiting sequences into free slots, in order, while the KV pool holds what each
        may need (else the first waits, and those behind it, until running ones finish).
        The front leases no more slots than there are, but a cancelled sequence may still
        hold one for a moment after its lease ended."""
        while self.waiting and self.batch.active < self.batch.capacity:
            seq = self.waiting[0]
            try:
                seq.id = self.batch.add(seq.prompt, seq.params)
            except llama_rs.KvFull as e:
                if self.running:  # it fits once some finish
                    return
                # Cannot happen (an empty pool holds any sequence that fits it): never wait forever.
                self.waiting.popleft()
                seq.replies.put(("error", e))
                continue
            except Exception as e:  # ParamError, a prompt that does not fit: the request's error
                self.waiting.popleft()
                seq.replies.put(("error", e))
                continue
            self.waiting.popleft()
            self.running[seq.id] = seq
            seq.replies.put(("added", None))

    def _loop(self) -> None:
        while True:
            if not self.running and not self.waiting:  # nothing to do: sleep until a request comes
                self._take(self.inbox.get())
            while True:  # take whatever else arrived, then step
                try:
                    self._take(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self._admit()
            if self.running:
                self._step()
            self._publish()

    def _step(self) -> None:
        try:
            events = self.batch.step()
        except Exception as e:  # the engine itself failed: every running sequence gets it
            for sid, seq in self.running.items():
                self.batch.cancel(sid)
                seq.replies.put(("error", e))
            self.running.clear()
            return
        made = 0
        for e in events:
            seq = self.running.get(e.id)
            if seq is None:
                continue
            if e.error is not None:  # this sequence alone failed (its KV cache could not grow)
                seq.replies.put(("error", MemoryError(e.error)))
                del self.running[e.id]
                continue
            seq.replies.put(("event", e))
            if seq.tokens_seen is None:  # its first event: the prompt is in
                self.stats["prompt"] += e.prompt_tokens
                seq.tokens_seen = 0
            made += e.tokens - seq.tokens_seen
            seq.tokens_seen = e.tokens
            if e.finish is not None:
                del self.running[e.id]
        self.stats["generated"] += made
        self.stats["steps"] += 1
        self.made.append((time.monotonic(), made))

    def _publish(self) -> None:
        b = self.batch
        now = time.monotonic()
        while self.made and self.made[0][0] < now - RATE_WINDOW:
            self.made.popleft()
        self.stats.update(
            active=b.active,
            waiting=len(self.waiting),
            kv_used=b.kv_used,
            kv_cached=b.kv_cached,
            kv_allocated=b.kv_allocated,
            kv_bytes=b.kv_bytes,
            tokens_per_second=sum(n for _, n in self.made) / RATE_WINDOW,
        )


class Lease:
    """One connection from the front."""

    def __init__(self, conn: socket.socket, model: llama_rs.Model, scheduler: Scheduler):
        self.conn, self.model, self.scheduler = conn, model, scheduler
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
                elif req.get("op") == "stats":
                    self.send({"stats": dict(self.scheduler.stats), "pid": os.getpid()})
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

    def prompt_ids(self, prompt) -> list:
        """A completion prompt as ids, read as llama-server reads one: control tokens written
        in the text (`<|begin_of_text|>`, `<|start_header_id|>`, `[INST]`) are those tokens, so
        a prompt formatted by hand for an instruct model works; BOS as the vocab asks, once
        even when the text starts with it. Ids pass as they are."""
        if not isinstance(prompt, str):
            return list(prompt)
        ids = self.model.tokenize(prompt, bos=True, special=True)
        bos = self.model.bos_token
        return ids[1:] if bos is not None and ids[:2] == [bos, bos] else ids

    def echo(self, prompt, ids: list, top_n: Optional[int]) -> None:
        """The prompt (as text) first, scored when log-probabilities are asked; `ids` are its
        tokens (`prompt_ids`)."""
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
                prompt, params = self.model.chat_request(req["messages"], params)
            except ValueError as e:  # the messages or the template: say which field
                return self.error(str(e), "invalid_request_error", "messages")
        else:
            prompt = self.prompt_ids(req["prompt"])
            if req.get("echo"):
                self.echo(req["prompt"], prompt, top_n)
        seq = self.scheduler.submit(prompt, params)
        kind, err = seq.replies.get()
        if kind == "error":
            raise err
        try:
            last, first_at = self.stream(seq, top_n)
        except BaseException:
            self.scheduler.cancel(seq)  # the front hung up, or sending failed
            raise
        ended = time.time()
        self.send(
            {
                "done": True,
                "tokens": last.tokens,
                "prompt_tokens": last.prompt_tokens,
                "cached_tokens": last.cached_tokens,
                "finish_reason": last.finish,
                "started": started,
                "ended": ended,
                "prompt_seconds": first_at - started,
                "gen_seconds": ended - first_at,
                "pid": os.getpid(),
            }
        )

    def stream(self, seq: Sequence, top_n: Optional[int]):
        """Send the sequence's pieces as they come; its last event, and when the first came
        (the prompt was in)."""
        first_at = None
        while True:
            try:
                kind, e = seq.replies.get(timeout=0.05)
            except queue.Empty:
                if self.peer_closed():
                    raise PeerGone() from None
                continue
            if kind == "error":
                raise e
            first_at = first_at or time.time()
            msg: dict[str, Any] = {"text": e.piece or ""}
            if top_n is not None and e.logprobs:
                msg["logprobs"] = [self.token(t, lp, top) for t, lp, top in e.logprobs]
            if msg["text"] or "logprobs" in msg:
                self.send(msg)
            if e.finish is not None:
                return e, first_at
            if self.peer_closed():
                raise PeerGone()


def serve(
    socket_path: Path,
    model_path: Optional[Path],
    n_ctx: int,
    n_threads: int,
    parallel: int,
    parent_pid: Optional[int],
    kv_cells: Optional[int] = None,
) -> None:
    if parent_pid:
        die_with_parent(parent_pid)
    if model_path is None:
        model = llama_rs.Model.demo(n_ctx=n_ctx, n_threads=n_threads)
    else:
        model = llama_rs.Model(model_path, n_ctx=n_ctx, n_threads=n_threads)
    # Warm up before taking requests (as llama-server does): the weights in their final layout
    # (the repack thread started at load would otherwise share the cores with the first
    # requests), then one token reads every weight, so the first client does not wait for the
    # file to be paged in.
    model.wait_repacked()
    model.eval([model.bos_token if model.bos_token is not None else 0])
    model.reset()
    scheduler = Scheduler(model, parallel, n_ctx, n_threads, kv_cells)
    if socket_path.exists():
        socket_path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(socket_path))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_connection, args=(conn, model, scheduler), daemon=True).start()


def serve_connection(conn: socket.socket, model: llama_rs.Model, scheduler: Scheduler) -> None:
    with conn:
        Lease(conn, model, scheduler).serve()


#: The environment variable a worker takes its KV pool size from when `--kv-cells` is not
#: given (so `LLAMA_RS_KV_CELLS=4096 llama-rs serve ...` sets it for every worker).
KV_CELLS_ENV = "LLAMA_RS_KV_CELLS"


def kv_cells_from_env() -> Optional[int]:
    value = os.environ.get(KV_CELLS_ENV, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        print(f"llama-rs worker: {KV_CELLS_ENV} must be a number of KV cells, got {value!r}", file=sys.stderr)
        sys.exit(2)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m llama_rs.server.worker", description="One serving worker (started by `llama-rs serve`)."
    )
    ap.add_argument("--socket", type=Path, required=True)
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=1, help="sequences generated at once")
    ap.add_argument(
        "--kv-cells",
        type=int,
        default=kv_cells_from_env(),
        help=f"KV cache cells shared by the sequences (default ${KV_CELLS_ENV}, else --parallel x -c); "
        "a request waits until the cells it may need (prompt + max_tokens, at most -c) are free",
    )
    ap.add_argument("--parent-pid", type=int)
    a = ap.parse_args(argv)
    if a.kv_cells is not None and a.kv_cells < 1:
        ap.error(f"--kv-cells must be at least 1, got {a.kv_cells}")
    # Ctrl+C in the terminal, or a SIGTERM sent to the whole process group (systemd, `timeout`),
    # is the front's to handle: it lets running requests finish (--grace), then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(a.socket, a.model, a.ctx_size, a.threads, a.parallel, a.parent_pid, a.kv_cells)
    except (llama_rs.ModelError, ValueError, OSError) as e:
        print(f"llama-rs worker: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
