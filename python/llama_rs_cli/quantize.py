"""`llama-rs quantize`: GGUF in, GGUF out, 2-D weights in a smaller type."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import errors_as_messages, fail, interactive_output


def types_help() -> str:
    """The file types with their bits per weight, for --help (the table stays unwrapped)."""
    from llama_rs.quantize import file_types, type_aliases

    rows = [
        f"  {t.name:<7} {t.id:>3}  {t.base:<7} {t.base_bits:>5.2f}  {t.bits_7b:>6.2f}"
        + ("" if t.available else "  (needs types this build lacks)")
        for t in file_types()
    ]
    aliases = ", ".join(f"{a} = {n}" for a, n in type_aliases().items())
    return "\n\n".join(
        [
            "TYPE is one of (case-insensitive; llama.cpp's names or numbers):",
            "\b\n  name     id  base    bits  7B bits\n" + "\n".join(rows),
            f"Aliases: {aliases}. 'bits' is the base type's bits per weight; '7B bits' is a whole"
            " LLaMA-2 7B file of that type, with llama.cpp's mix: output.weight Q6_K, more bits for"
            " some layers' attn_v / ffn_down / attn_output, fallbacks for rows that are not whole blocks.",
            "No importance matrix is used (the types llama-quantize chooses without --imatrix).",
        ]
    )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def resolve(input: Path, output: Optional[str], type_: Optional[str]) -> tuple[Path, Path, str]:
    """The seed's shorthand: `quantize models/7B [TYPE]` reads models/7B/ggml-model-f16.gguf
    and writes ggml-model-TYPE.gguf beside it."""
    from llama_rs.quantize import is_type_name

    if input.is_dir():
        if output is not None and type_ is None and is_type_name(output):
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
        None,
        metavar="[TYPE]",
        help="The file type: q4_k_m, q4_0, q8_0, f16, ... (listed below). (default: q4_0)",
        show_default=False,
    ),
    pure: bool = typer.Option(
        False,
        "--pure",
        help="Give every weight TYPE's base type, output.weight included: no mix (llama-quantize --pure).",
    ),
    allow_requantize: bool = typer.Option(
        False, "--allow-requantize", help="Allow converting tensors that are already quantized (loses quality)."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite OUTPUT if it exists."),
) -> None:
    """Quantize a GGUF model to a file type, with llama.cpp's per-tensor types."""
    import llama_rs

    with errors_as_messages():
        src, dst, type_name = resolve(input, output, type_)
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
    if s.fallbacks:
        typer.echo(
            f"note: {len(s.fallbacks)} tensors have rows that are not whole blocks of their type and got"
            f" a fallback type (as llama.cpp), e.g. {s.fallbacks[0][0]} {s.fallbacks[0][2]} -> {s.fallbacks[0][1]}",
            err=True,
        )
    typer.echo(
        f"{s.output}: {s.type}, {s.n_tensors} tensors, {s.n_elements:,} weights; "
        f"{_human(s.file_in)} -> {_human(s.file_out)} ({s.bits_per_weight:.2f} bits per weight) in {s.seconds:.1f} s"
    )
