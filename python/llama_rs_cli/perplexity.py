"""`llama-rs perplexity`: llama.cpp's perplexity measure, our quality gauge for quantization."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .common import errors_as_messages, fail, given, interactive_output, warn_if_beyond_training


class KvType(str, Enum):
    f16 = "f16"
    f32 = "f32"


def perplexity(
    ctx_: typer.Context,
    model: Path = typer.Option(..., "--model", "-m", help="The model file (GGUF or legacy).", show_default=False),
    file: Path = typer.Option(..., "--file", "-f", help="The text file to measure on (UTF-8).", show_default=False),
    # min=8: llama_rs.perplexity's smallest chunk, checked here so that it is a usage error.
    ctx: int = typer.Option(
        256,
        "--ctx-size",
        "-c",
        min=8,
        help="Tokens per chunk (llama.cpp's -c); the second half of each chunk is scored.",
    ),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", min=1, help="Score at most this many chunks. (default: all)", show_default=False
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", "-t", min=1, help="Worker threads. (default: the CPUs available)", show_default=False
    ),
    kv_type: KvType = typer.Option(KvType.f16, "--kv-type", help="KV cache type: f16 (as llama.cpp) or f32."),
) -> None:
    """Perplexity of a model on a text, with llama.cpp's method (numbers compare with llama-perplexity's)."""
    import llama_rs

    with errors_as_messages():
        if not model.exists():
            fail(f"{model}: no such model file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            fail(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})")
        m = llama_rs.Model(model, n_ctx=ctx, n_threads=threads, kv_type=kv_type.value)
        if given(ctx_, "ctx"):
            warn_if_beyond_training(m, ctx)
        if interactive_output():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            ) as bar:
                task = bar.add_task("perplexity", total=None)

                def progress(done: int, total: int, ppl: float) -> None:
                    bar.update(task, completed=done, total=total, description=f"perplexity {ppl:.4f}")

                r = llama_rs.perplexity(m, text, ctx, max_chunks=chunks, progress=progress)
        else:
            r = llama_rs.perplexity(m, text, ctx, max_chunks=chunks)
    typer.echo(
        f"{model}: perplexity {r.value:.4f} over {r.chunks} chunks of {r.ctx} tokens ({r.scored} tokens scored of {r.tokens})"
    )
