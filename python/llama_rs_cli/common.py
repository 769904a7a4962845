"""What every command shares: error reporting, the model option, progress on terminals."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn

import typer

_DEBUG = False


class CliError(Exception):
    """A runtime failure to report as one line on stderr with exit status 1."""


def set_debug(on: bool) -> None:
    global _DEBUG
    _DEBUG = on or os.environ.get("LLAMA_RS_DEBUG") == "1"


def is_debug() -> bool:
    return _DEBUG


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn expected failures into one-line errors (exit 1); --debug shows the traceback."""
    import llama_rs

    try:
        yield
    except typer.Exit:
        raise
    except (llama_rs.ModelError, ValueError, OSError, CliError) as e:
        if _DEBUG:
            raise
        fail(str(e))


def missing_model_hint(path: Path) -> str:
    return (
        f"{path}: no such model file. Convert a checkpoint with `llama-rs convert`, quantize it "
        f"with `llama-rs quantize`, or pass any LLaMA GGUF file with -m."
    )


def interactive_output() -> bool:
    """Progress bars and colors only on a terminal."""
    return sys.stderr.isatty()


def physical_cores() -> int:
    """Physical cores available to us (hyperthreads share a core's vector units, so more
    threads than cores rarely helps the matrix products)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        cores = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip():
                if core is not None:
                    cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
        if cores:
            return max(1, min(len(cores), allowed))
    except OSError:
        pass
    return max(1, allowed)
