"""`llama-rs serve --ray`: the server as a Ray Serve application, for traffic beyond one machine.

Each replica is the app of `llama-rs serve` (front.create_app: the same routes, answers and
errors, the same pool) over one worker process that generates `--parallel` sequences at once
with `-t` threads, on the node Ray placed the replica (it reserves `-t` CPUs there). In front
of them, with Serve's HTTP proxy on the head node, a thin ingress (no CPU reserved) passes each
request on to a replica over a DeploymentHandle and the answer back (ray_relay.py), and
answers in our JSON what Serve would answer in its own words: a replica that died with the
request, the replicas' queue full. Serve spreads requests over the replicas, scales their
number between bounds on ongoing requests, and replaces a replica that dies or fails its
health check. Each replica opens the model file itself: the path must be readable on every
node (shared storage or a copy each).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AsyncIterator, Optional

import ray
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from .config import DEFAULT_PARALLEL, ServerConfig, model_name, open_probe
from .edge import error_body
from .front import BodyLimit, create_app
from .ray_relay import Relay, answer_with

log = logging.getLogger("llama_rs.serve")

#: The Serve application's name (`serve status`, `serve.delete`), and its replicas' deployment's.
APP_NAME = "llama-rs"
INGRESS_NAME = "llama-rs-ingress"

#: The resource only the head node has (Serve pins its controller with it): the ingress goes
#: where the proxy is.
HEAD_NODE = "node:__internal_head__"

#: Requests the ingress holds at once (each waiting for a replica, or streaming from one):
#: beyond any queue, so that Serve's limit is the replicas' --queue, answered in our JSON.
INGRESS_ONGOING = 100_000


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica serves: `serve`'s options, less -w (one worker per replica)."""

    #: An absolute path every node can read; None: the demo model shipped in the wheel.
    model: Optional[str] = None
    threads: int = 1
    parallel: int = DEFAULT_PARALLEL
    kv_cells: Optional[int] = None
    n_ctx: int = 512
    queue_limit: int = 16
    max_body: int = 1 << 20
    api_key: Optional[str] = None
    timeout: float = 600.0
    quiet: bool = False


@serve.deployment
class Replica:
    async def __init__(self, spec: ReplicaSpec):
        log_like_serve(spec.quiet)
        self.identity = {
            "id": serve.get_replica_context().replica_id.unique_id,
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }
        self.cfg: Optional[ServerConfig] = None
        #: Why this replica cannot serve (it fails its health checks with this).
        self.failure: Optional[str] = None
        try:
            probe = open_probe(Path(spec.model) if spec.model else None)
            self.cfg = ServerConfig(
                model=Path(spec.model) if spec.model else None,
                model_name=model_name(probe),
                n_vocab=probe.n_vocab,
                workers=1,
                threads=spec.threads,
                parallel=spec.parallel,
                kv_cells=spec.kv_cells,
                n_ctx=spec.n_ctx,
                queue_limit=spec.queue_limit,
                max_body=spec.max_body,
                api_key=spec.api_key,
                timeout=spec.timeout,
            )
            del probe
        except Exception as e:  # any reason at all: it goes into the log and the health check
            self.failure = (
                f"replica {self.identity['id']} on node {self.identity['node']} cannot open the model "
                f"{spec.model or '(demo)'}: {type(e).__name__}: {e}"
            )
            log.error("%s", self.failure)
        self.app = create_app(self.cfg, replica=self.identity) if self.cfg else unavailable_app(self.failure)
        # The app's lifespan (the pool starts its worker) runs as under uvicorn; Serve runs a
        # first health check before routing anything here. (An application has one HTTP
        # ingress, the relay's: this app is not one for Serve, so its lifespan is ours to run.)
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()

    async def __del__(self):
        """Serve's graceful stop: the pool stops its worker."""
        if hasattr(self, "lifespan"):
            await self.lifespan.__aexit__(None, None, None)

    async def answer(self, request: dict, body: bytes) -> AsyncIterator[dict]:
        """A request the ingress forwards: the ASGI messages this replica's app answers with."""
        async for msg in answer_with(self.app, request, body):
            yield msg

    def check_health(self) -> None:
        if self.failure:
            raise RuntimeError(self.failure)
        pool = self.app.state.pool
        for w in pool.health()["workers"]:
            # The pool restarts a dead worker in a second or so; one that does not come back
            # (the file vanished, memory ran out) makes the replica useless.
            if w["state"] in ("starting", "restarting") and w["seconds_in_state"] > pool.cfg.start_timeout:
                why = f"its worker has been {w['state']} for {w['seconds_in_state']:.0f} s"
                log.error("replica %s: %s", self.identity["id"], why)
                raise RuntimeError(why)


@serve.deployment
@serve.ingress()
class Ingress:
    """Where Serve's proxy sends every request: on to a replica through `replicas`."""

    def __init__(self, replicas: DeploymentHandle, max_body: int):
        self.replicas, self.max_body = replicas, max_body

    def __serve_build_asgi_app__(self):
        # The body is read whole before it goes on: the same limit as the replica's, here too.
        return BodyLimit(Relay(self.replicas), limit=self.max_body)


def unavailable_app(reason: str) -> FastAPI:
    """What a replica that cannot open the model answers (Serve routes nothing to it, since
    it fails its health checks, but it must have an app)."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def unavailable(path: str):
        return JSONResponse(error_body(reason, "server_error"), status_code=503)

    return app


def log_like_serve(quiet: bool) -> None:
    """The server's own lines (access log, worker deaths and restarts) go where the replica's
    Serve log lines go (its log file, the driver's console)."""
    ours, theirs = logging.getLogger("llama_rs.serve"), logging.getLogger("ray.serve")
    ours.handlers = list(theirs.handlers) or [logging.StreamHandler()]
    ours.setLevel(logging.WARNING if quiet else logging.INFO)
    ours.propagate = False


def application(
    spec: ReplicaSpec, replicas: int = 1, min_replicas: Optional[int] = None, max_replicas: Optional[int] = None
):
    """The Serve application: `replicas` fixed, or autoscaled between `min_replicas` and
    `max_replicas` to keep about --parallel requests ongoing on each."""
    opts: dict = {
        "name": APP_NAME,
        "ray_actor_options": {"num_cpus": spec.threads},
        # A replica takes as many requests as it has sequence slots; the rest wait in the
        # ingress's handle for whichever replica frees one first (it prefers a replica on its
        # own node while that one has room), and beyond --queue of them the ingress answers 503.
        "max_ongoing_requests": spec.parallel,
        "max_queued_requests": max(1, spec.queue_limit),  # (Serve's least)
    }
    if max_replicas is not None:
        opts["autoscaling_config"] = {
            "min_replicas": 1 if min_replicas is None else min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": spec.parallel,
        }
    else:
        opts["num_replicas"] = replicas
    ingress = Ingress.options(
        name=INGRESS_NAME,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE: 0.001}},
        max_ongoing_requests=INGRESS_ONGOING,
    )
    return ingress.bind(Replica.options(**opts).bind(spec), spec.max_body)


def build(args: dict):
    """The application from text arguments, for Serve's own tools: `serve run
    llama_rs.server.ray_serve:build model=/shared/m.gguf threads=4 replicas=2`, or a config
    file's (and KubeRay's RayService's) `import_path` with `args`. Keys: ReplicaSpec's fields,
    and replicas, min_replicas, max_replicas."""
    kinds = {"threads": int, "parallel": int, "kv_cells": int, "n_ctx": int, "queue_limit": int, "max_body": int}
    kinds["timeout"] = float
    kinds.update(model=str, api_key=str, quiet=lambda v: str(v).lower() in ("1", "true", "yes"))
    counts = {k: int(args[k]) for k in ("replicas", "min_replicas", "max_replicas") if args.get(k) is not None}
    unknown = set(args) - set(kinds) - {"replicas", "min_replicas", "max_replicas"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; known: {sorted(kinds)} and replica counts")
    spec = ReplicaSpec(**{k: kinds[k](v) for k, v in args.items() if k in kinds and v is not None})
    if spec.model is not None:
        spec = replace(spec, model=str(Path(spec.model).resolve()))
    return application(spec, counts.get("replicas", 1), counts.get("min_replicas"), counts.get("max_replicas"))


def deploy(app) -> None:
    """serve.run, with the reason a deployment failed (a replica's own words, not Serve's
    "failed to update the deployments") in the error."""
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as e:
        raise RuntimeError(f"{e} {failure_reason() or ''}".strip()) from None


def failure_reason() -> Optional[str]:
    """The last error a replica raised, from the deployment's status message."""
    try:
        status = serve.status().applications[APP_NAME].deployments[APP_NAME].message
    except (KeyError, AttributeError):
        return None
    errors = [ln.strip() for ln in status.splitlines() if ln.strip().startswith("RuntimeError: ")]
    errors = [e for e in errors if e != "RuntimeError: Traceback (most recent call last):"]
    return errors[-1][len("RuntimeError: ") :] if errors else (status.strip() or None)


def run(
    spec: ReplicaSpec,
    address: str,
    host: str,
    port: int,
    replicas: int = 1,
    min_replicas: Optional[int] = None,
    max_replicas: Optional[int] = None,
    on_ready=None,
) -> None:
    """Deploy, serve until SIGINT or SIGTERM, then delete the application (and, for a Ray
    instance of our own, stop Serve and Ray)."""
    own = address == "local"
    ray.init(address=None if own else address, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        deploy(application(spec, replicas, min_replicas, max_replicas))
        if on_ready is not None:
            on_ready()
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
    finally:
        try:
            serve.delete(APP_NAME)
            if own:
                serve.shutdown()
        finally:
            ray.shutdown()
