"""`llama-rs info`: what is in a model file (GGUF or legacy), without loading the weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import errors_as_messages


def _jsonable(v):
    if isinstance(v, list):
        if len(v) > 16:
            return {"array": len(v), "first": [_jsonable(x) for x in v[:4]]}
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v != v:
        return None
    return v


def info(
    file: Path = typer.Argument(
        ..., help="A model file: GGUF, or legacy ggml/ggmf/ggjt (parts found beside it).", show_default=False
    ),
    tensors: bool = typer.Option(False, "--tensors", "-t", help="List every tensor: name, type, shape, offset."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of text."),
) -> None:
    """Show a model file's format, hyperparameters, vocab size and tensor types."""
    import llama_rs

    with errors_as_messages():
        d = llama_rs.file_info(file)
    hist = {ty: n for ty, n, _ in d["types"]}  # most elements first
    if as_json:
        out = {
            "file": str(file),
            "format": d["format"],
            "version": d["version"],
            "parts": d["paths"],
            "size": d["size"],
            "n_vocab": d["n_vocab"],
            "hparams": d["hparams"],
            "n_tensors": len(d["tensors"]),
            "types": hist,
            "n_elements": d["n_elements"],
            "tensor_bytes": d["tensor_bytes"],
            "bits_per_weight": round(d["bits_per_weight"], 4),
            "file_type": d["file_type"],
            "metadata": {k: _jsonable(v) for k, v in d["metadata"].items()},
        }
        if tensors:
            out["tensors"] = [
                {"name": n, "type": ty, "shape": list(shape), "offset": off, "nbytes": nb}
                for n, ty, shape, off, nb in d["tensors"]
            ]
        typer.echo(json.dumps(out, indent=1))
        return
    version = "unversioned" if d["format"] == "ggml" else f"v{d['version']}"
    typer.echo(
        f"{file}: {d['format']} {version}, {d['size']:,} bytes"
        + (f" in {len(d['paths'])} parts" if len(d["paths"]) > 1 else "")
    )
    for k, v in d["hparams"].items():
        typer.echo(f"  {k:34} {v:g}" if isinstance(v, float) else f"  {k:34} {v}")
    typer.echo(f"  {'vocab size':34} {d['n_vocab']}")
    typer.echo(f"  {'tensors':34} {len(d['tensors'])}: " + ", ".join(f"{n} {t}" for t, n in hist.items()))
    if d["file_type"]:
        typer.echo(f"  {'file type':34} {d['file_type']}")
    typer.echo(
        f"  {'bits per weight':34} {d['bits_per_weight']:.2f} ({d['tensor_bytes']:,} bytes for {d['n_elements']:,} weights)"
    )
    if tensors:
        w = max((len(n) for n, *_ in d["tensors"]), default=4)
        typer.echo(f"  {'name':{w}}  {'type':6} {'shape':>16} {'offset':>12}")
        for n, ty, shape, off, _ in d["tensors"]:
            typer.echo(f"  {n:{w}}  {ty:6} {' x '.join(map(str, shape)):>16} {off:>12}")
