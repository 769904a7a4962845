"""What `llama-rs serve` was started with: one value the front, its routes and its pool share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import llama_rs


#: Requests per worker at once, by default (`bench --parallel` on a 2-core Xeon: 16 gains about
#: 13% over 8 and doubles the KV memory; BENCHMARKS.md).
DEFAULT_PARALLEL = 8


@dataclass
class ServerConfig:
    model: Optional[Path]
    model_name: str
    n_vocab: int
    workers: int = 1
    threads: int = 1
    #: Sequences each worker generates at once (--parallel).
    parallel: int = DEFAULT_PARALLEL
    #: KV cells each worker's sequences share (--kv-cells; None: parallel x n_ctx).
    kv_cells: Optional[int] = None
    n_ctx: int = 512
    queue_limit: int = 16
    max_body: int = 1 << 20
    api_key: Optional[str] = None
    #: Seconds a request may hold a worker (--timeout).
    timeout: float = 600.0


def open_probe(model: Optional[Path]) -> "llama_rs.Model":
    """The model with a tiny context: opened once by whoever starts the workers (the CLI, or
    a Ray replica on its own node), so a bad file is one clear error before any worker starts."""
    import llama_rs

    if model is None:
        return llama_rs.Model.demo(n_ctx=8, n_threads=1)
    return llama_rs.Model(model, n_ctx=8, n_threads=1)


def model_name(probe: "llama_rs.Model") -> str:
    """What /v1/models and /health call the model."""
    return str(probe.metadata.get("general.name") or probe.path.stem)
