"""`llama-rs serve`: the HTTP API over worker processes (llama_rs.server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llama_rs.server.config import DEFAULT_PARALLEL
from llama_rs.server.route import ROUTE_SLACK

from .common import (
    CliError,
    errors_as_messages,
    fail,
    given,
    missing_model_hint,
    physical_cores,
    warn_if_beyond_training,
)


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
        "more than one buys isolation (a crash fails only its own requests), not speed. A request goes to the "
        f"worker that last served the start of its prompt while it has a free slot and is at most {ROUTE_SLACK} requests "
        "busier than the least busy (its prefix cache: a chat's next turn finds its history there), else to "
        "the worker with the most free slots.",
    ),
    parallel: int = typer.Option(
        DEFAULT_PARALLEL,
        "-np",
        "--parallel",
        min=1,
        max=256,
        help="Requests each worker generates at once (continuous batching: one pass over the weights per token "
        "for all of them). Each may use up to --ctx-size tokens of KV cache; the worker's sequences share "
        "--kv-cells cells (default parallel x ctx-size; printed at start); further requests wait in the --queue.",
    ),
    kv_cells: Optional[int] = typer.Option(
        None,
        "--kv-cells",
        min=1,
        help="KV cache cells each worker's sequences share (default --parallel x --ctx-size). Caches grow as "
        "requests use them; a request waits in its worker until the cells it may need (prompt + max_tokens, "
        "at most --ctx-size) are free.",
        show_default=False,
    ),
    threads: Optional[int] = typer.Option(
        None,
        "-t",
        "--threads",
        min=1,
        help="Threads per worker. Default: physical cores / workers (with --ray: 1 per replica).",
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
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Deploy on a Ray cluster with Ray Serve instead (pip install 'llama-rs[ray]' on every node): "
        "ADDRESS as ray.init takes it ('auto' for the cluster `ray start` runs here, HOST:6379, ray://HOST:10001), "
        "or 'local' for a Ray instance of its own. Each replica runs one worker of -t threads (and reserves -t "
        "CPUs); the model path must be readable on every node; Serve's proxy listens on --listen.",
        show_default=False,
    ),
    replicas: int = typer.Option(1, "--replicas", min=1, help="With --ray: replicas (when not autoscaling)."),
    min_replicas: Optional[int] = typer.Option(
        None,
        "--min-replicas",
        min=0,
        help="With --ray and --max-replicas: the fewest replicas (default 1).",
        show_default=False,
    ),
    max_replicas: Optional[int] = typer.Option(
        None,
        "--max-replicas",
        min=1,
        help="With --ray: autoscale up to this many replicas, aiming at --parallel ongoing requests on each.",
        show_default=False,
    ),
) -> None:
    """Serve the model over HTTP: the seed's POST /api/completion, OpenAI-compatible
    /v1/completions and /v1/chat/completions, /health, Prometheus /metrics, a web page at /
    and the API docs at /docs.

    Memory: each of the -w workers holds the weights and at most --kv-cells KV cells
    (default --parallel x --ctx-size). Workers share the file's pages, except that on
    AVX-512 CPUs Q4_0 and Q8_0 weights are repacked into each worker's own memory for faster
    kernels; LLAMA_RS_REPACK=0 keeps them shared.
    """
    host, port = parse_listen(listen)
    if ray_address is not None:
        check_ray_options(ctx, workers, min_replicas, max_replicas)
        if model is not None:
            model = model.resolve()  # the replicas' working folder is not ours
    if model is not None and not model.exists():
        if ray_address is None:
            fail(missing_model_hint(model))
        typer.echo(f"warning: {model} is not on this machine; every replica must find it on its own node", err=True)
    with errors_as_messages():
        import uvicorn

        from llama_rs.server.config import model_name, open_probe
        from llama_rs.server.front import ServerConfig, create_app

        if model is None or model.exists():  # under --ray, each replica opens it too
            probe = open_probe(model)
            name = model_name(probe)
            if given(ctx, "ctx_size"):
                warn_if_beyond_training(probe, ctx_size)
            n_vocab = probe.n_vocab
            kv_bytes = kv_cell_bytes(probe.config) * (kv_cells or parallel * ctx_size)
            del probe
        if ray_address is not None:
            return serve_on_ray(
                ray_address, model, threads or 1, parallel, kv_cells, ctx_size, queue, max_body, api_key, timeout, quiet,
                host, port, replicas, min_replicas, max_replicas,
            )  # fmt: skip
        per_worker = threads or max(1, physical_cores() // workers)
        cfg = ServerConfig(
            model=model,
            model_name=name,
            n_vocab=n_vocab,
            workers=workers,
            threads=per_worker,
            parallel=parallel,
            kv_cells=kv_cells,
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
            f"per worker, context {ctx_size} each (KV cache at most {kv_bytes / 2**20:.0f} MiB per worker), "
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


def check_ray_options(ctx: typer.Context, workers: int, min_replicas, max_replicas) -> None:
    if workers != 1:
        raise typer.BadParameter(
            "with --ray each replica runs one worker: scale with --replicas", param_hint="'-w' / '--workers'"
        )
    if min_replicas is not None and max_replicas is None:
        raise typer.BadParameter("needs --max-replicas (autoscaling)", param_hint="'--min-replicas'")
    if max_replicas is not None and given(ctx, "replicas"):
        raise typer.BadParameter("either a fixed --replicas or --max-replicas", param_hint="'--replicas'")
    if None not in (min_replicas, max_replicas) and min_replicas > max_replicas:
        raise typer.BadParameter("more than --max-replicas", param_hint="'--min-replicas'")


def serve_on_ray(
    address, model, threads, parallel, kv_cells, ctx_size, queue, max_body, api_key, timeout, quiet,
    host, port, replicas, min_replicas, max_replicas,
) -> None:  # fmt: skip
    """`serve --ray`: deploy the replicas and serve until Ctrl+C / SIGTERM."""
    try:
        from llama_rs.server import ray_serve
    except ImportError as e:
        raise CliError(f"--ray needs Ray Serve ({e}): pip install 'llama-rs[ray]'") from None
    spec = ray_serve.ReplicaSpec(
        model=None if model is None else str(model),
        threads=threads,
        parallel=parallel,
        kv_cells=kv_cells,
        n_ctx=ctx_size,
        queue_limit=queue,
        max_body=max_body,
        api_key=api_key,
        timeout=timeout,
        quiet=quiet,
    )
    count = (
        f"{1 if min_replicas is None else min_replicas} to {max_replicas}"
        if max_replicas is not None
        else str(replicas)
    )
    typer.echo(
        f"llama-rs serve --ray {address}: {count} replica(s) x {threads} thread(s), {parallel} request(s) at once "
        f"each, context {ctx_size}; deploying...",
        err=True,
    )

    def ready() -> None:
        typer.echo(f"llama-rs serve --ray: ready at http://{host}:{port}/ (Ctrl+C removes the application)", err=True)

    try:
        ray_serve.run(spec, address, host, port, replicas, min_replicas, max_replicas, on_ready=ready)
    except (RuntimeError, ConnectionError) as e:  # a deployment that failed, a cluster not found
        raise CliError(f"Ray Serve: {e}") from None


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
