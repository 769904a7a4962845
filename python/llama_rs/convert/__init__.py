"""Convert LLaMA checkpoints to GGUF: Meta's original `.pth` release, Hugging Face folders
(safetensors or `pytorch_model*.bin`) and llama2.c `.bin` files, with the SentencePiece vocab
embedded.

    from llama_rs.convert import convert
    summary = convert("models/7B", "7B-f16.gguf", outtype="f16")

Needs the `convert` extra (`pip install 'llama-rs[convert]'`: torch, safetensors,
sentencepiece, protobuf, gguf). Importing this package imports none of them; `convert`
checks for them first and raises `MissingDependency` naming what to install.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Literal, Optional

from .errors import INSTALL_HINT, ConvertError, MissingDependency

__all__ = ["convert", "detect", "default_output", "ConvertError", "MissingDependency", "INSTALL_HINT"]

OutType = Literal["f16", "f32"]

# import name -> distribution name
_DEPS = {
    "torch": "torch",
    "safetensors": "safetensors",
    "sentencepiece": "sentencepiece",
    "google.protobuf": "protobuf",
    "gguf": "gguf",
    "numpy": "numpy",
}


def require_dependencies() -> None:
    missing = []
    for mod, dist in _DEPS.items():
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(dist)
    if missing:
        raise MissingDependency(f"llama-rs convert needs {', '.join(missing)}, not installed: {INSTALL_HINT}")


def detect(src: Path) -> str:
    """'meta', 'hf' or 'llama2c' for a checkpoint path, or ConvertError."""
    from . import hf, meta

    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if src.is_dir():
        if meta.is_meta(src):
            return "meta"
        if hf.is_hf(src):
            return "hf"
        raise ConvertError(
            f"{src}: no checkpoint found (expected params.json + consolidated.NN.pth, or config.json + "
            f"*.safetensors / pytorch_model*.bin)"
        )
    if (
        src.name.startswith("consolidated.")
        or src.name.endswith(".safetensors")
        or src.name.startswith("pytorch_model")
    ):
        raise ConvertError(f"{src}: pass the folder that holds it ({src.parent}), not the file")
    with open(src, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        raise ConvertError(f"{src}: a PyTorch archive; pass its checkpoint folder (with params.json or config.json)")
    if magic == b"GGUF":
        raise ConvertError(f"{src}: already a GGUF file")
    return "llama2c"


def default_output(src: Path, outtype: str) -> Path:
    """`SRC/ggml-model-f16.gguf` for a folder (the seed's place), `NAME-f16.gguf` beside a file."""
    if src.is_dir():
        return src / f"ggml-model-{outtype}.gguf"
    return src.with_name(f"{src.stem}-{outtype}.gguf")


def convert(
    src: str | os.PathLike[str],
    out: Optional[str | os.PathLike[str]] = None,
    outtype: OutType = "f16",
    vocab: Optional[str | os.PathLike[str]] = None,
    force: bool = False,
    progress=None,
):
    """Convert the checkpoint at `src` to a GGUF file at `out` and return a `Summary`.

    `outtype` "f16" stores matrices as F16 (norms stay F32); "f32" stores everything F32.
    `vocab` is the SentencePiece model (found beside the checkpoint when omitted; required for
    llama2.c). An existing `out` is replaced only with `force`. `progress`, if given, gets
    `start(n_tensors, n_bytes)` and `advance(name, n_bytes)` calls.

    Raises ConvertError (a one-line message naming the file) or MissingDependency.
    """
    if outtype not in ("f16", "f32"):
        raise ConvertError(f"outtype must be f16 or f32, not {outtype!r}")
    require_dependencies()
    from . import hf, llama2c, meta
    from .writer import check_output, check_plan, write_gguf

    src = Path(src)
    kind = detect(src)
    outp = Path(out) if out is not None else default_output(src, outtype)
    check_output(outp, [src] if src.is_file() else [], force)
    vocab_path = Path(vocab) if vocab is not None else None
    p = {"meta": meta.plan, "hf": hf.plan, "llama2c": llama2c.plan}[kind](src, vocab_path)
    try:
        check_plan(p)
        check_output(outp, p.inputs, force)
        return write_gguf(p, outp, outtype, progress, source_format=kind)
    finally:
        p.close()
