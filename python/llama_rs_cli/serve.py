"""`llama-rs serve`: the HTTP API over worker processes (llama_rs.server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (
    CliError,
    errors_as_messages,
    fail,
    given,
    missing_model_hint,
    physical_cores,
    warn_if_beyond_training,
)


#: Requests per worker at once, by default (bench/batch.py on a 2-core Xeon: see BENCHMARKS.md).
DEFAULT_PARALLEL = 8


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", listen
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="'-l' / '--listen'")
    return host or "127.0.0.1", int(port)


def serve(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(
        None,
        "-m",
        "--model",
        help="GGUF model file. Default: the demo model shipped with llama-rs.",
        show_default=False,
    ),
    workers: int = typer.Option(
        1,
        "-w",
        "--workers",
        min=1,
        max=64,
        help="Worker processes. Each loads the weights once and generates up to --parallel requests at once; "
        "more than one buys isolation (a crash fails only its own requests), not speed.",
    ),
    parallel: int = typer.Option(
        DEFAULT_PARALLEL,
        "-np",
        "--parallel",
        min=1,
        max=256,
        help="Requests each worker generates at once (continuous batching: one pass over the weights per token "
        "for all of them). Each has its own KV cache of --ctx-size tokens, so a worker's KV memory is "
        "parallel x ctx-size cells (printed at start); further requests wait in the --queue.",
    ),
    threads: Optional[int] = typer.Option(
        None,
        "-t",
        "--threads",
        min=1,
        help="Threads per worker. Default: physical cores / workers.",
        show_default=False,
    ),
    ctx_size: int = typer.Option(
        512, "-c", "--ctx-size", min=1, help="Context of each request (prompt and reply), in tokens."
    ),
    listen: str = typer.Option("127.0.0.1:4000", "-l", "--listen", help="Address to listen on, HOST:PORT."),
    queue: int = typer.Option(
        16, "--queue", min=0, help="Requests that may wait for a free sequence slot; beyond this: 503."
    ),
    max_body: int = typer.Option(1 << 20, "--max-body", min=1, help="Largest request body in bytes; beyond this: 413."),
    timeout: float = typer.Option(
        600.0,
        "--timeout",
        min=0.1,
        help="Seconds a request may hold a worker; then it gets a 504 and the worker is reclaimed.",
    ),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="LLAMA_RS_API_KEY",
        help="Require 'Authorization: Bearer KEY' on API routes (also $LLAMA_RS_API_KEY).",
        show_default=False,
    ),
    grace: float = typer.Option(
        10.0, "--grace", min=0.0, help="Seconds in-flight requests get to finish on Ctrl+C / SIGTERM."
    ),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="No access log (one line per request on stderr); warnings and errors still show."
    ),
) -> None:
    """Serve the model over HTTP: the seed's POST /api/completion, OpenAI-compatible
    /v1/completions and /v1/chat/completions, /health, Prometheus /metrics, a web page at /
    and the API docs at /docs.

    Memory: each of the -w workers holds the weights and --parallel x --ctx-size KV cells.
    """
    host, port = parse_listen(listen)
    if model is not None and not model.exists():
        fail(missing_model_hint(model))
    with errors_as_messages():
        import uvicorn

        import llama_rs
        from llama_rs.server.front import ServerConfig, create_app

        # Load once here so a bad file is one clear error before any worker starts.
        probe = (
            llama_rs.Model.demo(n_ctx=8, n_threads=1) if model is None else llama_rs.Model(model, n_ctx=8, n_threads=1)
        )
        meta = probe.metadata
        name = str(meta.get("general.name") or probe.path.stem)
        if given(ctx, "ctx_size"):
            warn_if_beyond_training(probe, ctx_size)
        n_vocab = probe.n_vocab
        kv_bytes = kv_cell_bytes(probe.config) * parallel * ctx_size
        del probe
        per_worker = threads or max(1, physical_cores() // workers)
        cfg = ServerConfig(
            model=model,
            model_name=name,
            n_vocab=n_vocab,
            workers=workers,
            threads=per_worker,
            parallel=parallel,
            n_ctx=ctx_size,
            queue_limit=queue,
            max_body=max_body,
            api_key=api_key,
            timeout=timeout,
        )
        setup_logging(quiet)
        port_free(host, port)
        typer.echo(
            f"llama-rs serve: {name}, {workers} worker(s) x {per_worker} thread(s), {parallel} request(s) at once "
            f"per worker, context {ctx_size} each (KV cache {kv_bytes / 2**20:.0f} MiB per worker), "
            f"http://{host}:{port}/",
            err=True,
        )
        uvicorn.run(
            create_app(cfg),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=grace,
        )


def kv_cell_bytes(config: dict) -> int:
    """Bytes of one f16 KV cell: a key and a value of every KV head in every layer."""
    head_dim = config["dim"] // config["n_head"]
    return config["n_layer"] * 2 * config["n_head_kv"] * head_dim * 2


def setup_logging(quiet: bool) -> None:
    """The server's own lines (access log, worker deaths and restarts) on stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("llama_rs.serve")
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def port_free(host: str, port: int) -> None:
    """A taken port is one clear error before any worker starts (uvicorn would log and exit)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise CliError(f"cannot listen on {host}:{port}: {e.strerror}") from None
