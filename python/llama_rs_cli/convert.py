"""`llama-rs convert`: Meta `.pth`, Hugging Face and llama2.c checkpoints to GGUF.

Nothing heavy is imported here: torch and friends load only when the command runs, and their
absence is reported as the one package extra to install."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .common import fail, interactive_output, is_debug


class OutType(str, Enum):
    f16 = "f16"
    f32 = "f32"


_SEED_FTYPE = {0: "f32", 1: "f16"}


def convert(
    src: Path = typer.Argument(
        ...,
        metavar="SRC",
        help="Checkpoint: a Meta folder (params.json, consolidated.NN.pth), a Hugging Face folder "
        "(config.json, *.safetensors or pytorch_model*.bin) or a llama2.c .bin file.",
        show_default=False,
    ),
    ftype: Optional[int] = typer.Argument(
        None,
        metavar="[FTYPE]",
        help="The seed's form `convert models/7B/ 1`: 1 = f16, 0 = f32.",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None,
        "-o",
        "--output",
        help="GGUF file to write (default: SRC/ggml-model-OUTTYPE.gguf, or NAME-OUTTYPE.gguf beside a file).",
        show_default=False,
    ),
    outtype: Optional[OutType] = typer.Option(
        None, "--outtype", help="Matrix type: f16 (default) or f32; norms stay f32.", show_default=False
    ),
    vocab: Optional[Path] = typer.Option(
        None,
        "--vocab",
        "--tokenizer",
        help="SentencePiece tokenizer.model (default: beside the checkpoint; required for llama2.c).",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite OUTPUT if it exists."),
) -> None:
    """Convert a PyTorch, Hugging Face or llama2.c checkpoint to a GGUF file."""
    chosen = outtype.value if outtype is not None else None
    if ftype is not None:
        if ftype not in _SEED_FTYPE:
            raise typer.BadParameter(f"must be 0 (f32) or 1 (f16), not {ftype}", param_hint="FTYPE")
        if chosen is not None and chosen != _SEED_FTYPE[ftype]:
            raise typer.BadParameter(
                f"{ftype} ({_SEED_FTYPE[ftype]}) contradicts --outtype {chosen}", param_hint="FTYPE"
            )
        chosen = _SEED_FTYPE[ftype]
    chosen = chosen or "f16"

    from llama_rs.convert import ConvertError, MissingDependency
    from llama_rs.convert import convert as run_convert

    bar = _Bar() if interactive_output() else None
    try:
        summary = run_convert(src, output, chosen, vocab=vocab, force=force, progress=bar)
    except (ConvertError, MissingDependency, OSError) as e:
        if is_debug():
            raise
        if bar is not None:
            bar.stop()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and not isinstance(e, ConvertError) and e.filename and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        fail(msg)
    finally:
        if bar is not None:
            bar.stop()
    for w in summary.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(str(summary))


class _Bar:
    """A rich progress bar on stderr: tensors done / total and bytes written."""

    def __init__(self) -> None:
        self.progress = None
        self.task = None

    def start(self, n_tensors: int, n_bytes: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("converting"),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[total_tensors]} tensors"),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self.task = self.progress.add_task("convert", total=n_bytes, done=0, total_tensors=n_tensors)
        self.done = 0
        self.progress.start()

    def advance(self, name: str, n_bytes: int) -> None:
        if self.progress is not None:
            self.done += 1
            self.progress.update(self.task, advance=n_bytes, done=self.done)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
