"""`llama-rs quantize`: GGUF in, GGUF out, 2-D weights in a smaller type."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import errors_as_messages, fail, interactive_output

TYPES = ("q4_0", "q4_1", "q8_0", "f16", "f32")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def resolve(input: Path, output: Optional[str], type_: Optional[str]) -> tuple[Path, Path, str]:
    """The seed's shorthand: `quantize models/7B [TYPE]` reads models/7B/ggml-model-f16.gguf
    and writes ggml-model-TYPE.gguf beside it."""
    if input.is_dir():
        if output is not None and type_ is None and output.lower() in TYPES:
            output, type_ = None, output
        type_ = (type_ or "q4_0").lower()
        src = input / "ggml-model-f16.gguf"
        if not src.exists():
            fail(
                f"{src}: not found (a model folder must hold ggml-model-f16.gguf; convert the checkpoint first with `llama-rs convert`)"
            )
        dst = Path(output) if output else input / f"ggml-model-{type_}.gguf"
        return src, dst, type_
    if output is None:
        fail(f"{input}: give the output file: llama-rs quantize IN.gguf OUT.gguf [TYPE]")
    return input, Path(output), (type_ or "q4_0").lower()


def quantize(
    input: Path = typer.Argument(
        ...,
        help="The GGUF file to quantize (F32/F16), or a model folder holding ggml-model-f16.gguf.",
        show_default=False,
    ),
    output: Optional[str] = typer.Argument(
        None, help="The file to write. Default for a folder: ggml-model-TYPE.gguf beside the input.", show_default=False
    ),
    type_: Optional[str] = typer.Argument(
        None, metavar="[TYPE]", help="Target type: q4_0, q4_1, q8_0, f16 or f32. (default: q4_0)", show_default=False
    ),
    pure: bool = typer.Option(
        False,
        "--pure",
        help="Put every 2-D tensor in TYPE, output.weight included (default keeps it Q8_0 for 4-bit types).",
    ),
    allow_requantize: bool = typer.Option(
        False, "--allow-requantize", help="Allow converting tensors that are already quantized (loses quality)."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite OUTPUT if it exists."),
) -> None:
    """Quantize a GGUF model: 2-D weights become TYPE, norms stay F32 (llama.cpp's policy)."""
    import llama_rs

    with errors_as_messages():
        src, dst, type_name = resolve(input, output, type_)
        if type_name not in TYPES:
            fail(f"unknown type {type_name!r} (choose {', '.join(TYPES)})")
        if interactive_output():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            ) as bar:
                task = bar.add_task("quantizing", total=None)

                def progress(done: int, total: int, name: str, a: str, b: str) -> None:
                    bar.update(task, completed=done, total=total, description=f"{name} {a} -> {b}")

                s = llama_rs.quantize_file(
                    src, dst, type_name, pure=pure, allow_requantize=allow_requantize, force=force, progress=progress
                )
        else:
            s = llama_rs.quantize_file(src, dst, type_name, pure=pure, allow_requantize=allow_requantize, force=force)
    typer.echo(
        f"{s.output}: {type_name.upper()}, {s.n_tensors} tensors, {s.n_elements:,} weights; "
        f"{_human(s.file_in)} -> {_human(s.file_out)} ({s.bits_per_weight:.2f} bits per weight) in {s.seconds:.1f} s"
    )
