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


def one_line(message: str) -> str:
    """The message on one line: engine and OS messages may span several."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def describe(e: BaseException) -> str:
    """What went wrong, for the user: `FILE: reason` for OS errors rather than `[Errno N] ...`."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return one_line(f"{e.filename}: {e.strerror}")
    return one_line(str(e)) or type(e).__name__


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit 1."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(1)


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn expected failures into one-line errors (exit 1); --debug shows the traceback."""
    import llama_rs

    try:
        yield
    except (typer.Exit, BrokenPipeError):  # the reader went away: app.main exits quietly
        raise
    except (llama_rs.ModelError, ValueError, OSError, CliError) as e:
        if _DEBUG:
            raise
        fail(describe(e))


def check_generation_options(params: dict, options: dict[str, str]) -> None:
    """Check generation parameters given as command-line options with the engine's own rules;
    a bad one is a usage error (exit 2) naming the option. `options` maps the engine's
    parameter names to the options' names ("top_p" -> "--top-p")."""
    import llama_rs

    try:
        llama_rs.check_generation(**params)
    except llama_rs.ParamError as e:
        raise typer.BadParameter(one_line(str(e)), param_hint=options.get(e.param)) from None


def given(ctx: typer.Context, *names: str) -> bool:
    """Whether the user set any of these parameters (command line or environment): defaults are
    ours, so `run`'s 512 with the demo model (trained on 256) is no reason to warn."""
    return any(getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP") for n in names)


def warn_if_beyond_training(model, n_ctx: int) -> None:
    """One warning line when the context is longer than the model was trained on (positions
    past that are extrapolation: text quality usually drops). Unknown (0) stays silent."""
    train = int(model.config.get("train_ctx") or 0)
    if train > 0 and n_ctx > train:
        typer.echo(
            f"warning: context size {n_ctx} exceeds the {train} tokens the model was trained on; "
            f"output beyond {train} tokens may degrade",
            err=True,
        )


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
