"""What `llama-rs serve` was started with: one value the front, its routes and its pool share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class ServerConfig:
    model: Optional[Path]
    model_name: str
    n_vocab: int
    workers: int = 1
    threads: int = 1
    #: Sequences each worker generates at once (--parallel).
    parallel: int = 1
    n_ctx: int = 512
    queue_limit: int = 16
    max_body: int = 1 << 20
    api_key: Optional[str] = None
    #: Seconds a request may hold a worker (--timeout).
    timeout: float = 600.0
