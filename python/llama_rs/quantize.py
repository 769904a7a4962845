"""Quantize a GGUF model file (the work happens in Rust, one tensor at a time)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import _core


@dataclass(frozen=True)
class FileType:
    """A file type `quantize_file` writes (llama.cpp's `llama_ftype`)."""

    name: str  #: llama.cpp's name, e.g. "Q4_K_M"
    id: int  #: `general.file_type`
    base: str  #: the type most weights get, e.g. "Q4_K"
    base_bits: float  #: bits per weight of the base type
    bits_7b: float  #: bits per weight of LLaMA-2 7B in this file type (the mix included)
    available: bool  #: whether this build has the kernels for every type it uses


def file_types() -> list[FileType]:
    """Every file type, in llama-quantize's order (the types, not the aliases)."""
    return [FileType(*row) for row in _core.quantize_types()[0]]


def type_aliases() -> dict[str, str]:
    """llama-quantize's short names: {"Q4_K": "Q4_K_M", ...}."""
    return dict(_core.quantize_types()[1])


def is_type_name(name: str) -> bool:
    """Whether `name` names a file type (case-insensitive, aliases included)."""
    names = {t.name for t in file_types()} | set(type_aliases())
    return name.upper() in names


@dataclass(frozen=True)
class QuantizeSummary:
    input: Path
    output: Path
    #: The file type written, by llama.cpp's name ("Q4_K_M").
    type: str
    n_tensors: int
    n_elements: int
    #: Tensor data bytes before and after, and whole-file sizes.
    bytes_in: int
    bytes_out: int
    file_in: int
    file_out: int
    seconds: float
    #: Tensors whose rows forced a fallback type: (name, type, the type it would have had).
    fallbacks: tuple[tuple[str, str, str], ...] = ()

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_out / max(1, self.n_elements)


def quantize_file(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    type: str = "q4_0",
    pure: bool = False,
    allow_requantize: bool = False,
    force: bool = False,
    progress: Optional[Callable[[int, int, str, str, str], None]] = None,
) -> QuantizeSummary:
    """Write `output`: `input` (GGUF) in file type `type` (llama.cpp's names, case-insensitive:
    q4_0, q4_k_m, iq4_xs, f16, ... see `file_types()`), with llama.cpp's per-tensor policy:
    norms and other 1-D tensors keep their type; unless `pure`, the mixes give `output.weight`
    Q6_K and some layers' attn_v / ffn_down / attn_output more bits, and rows that are not
    whole blocks fall back (Q4_K -> Q5_0, ...). No importance matrix is used. Already quantized
    tensors are refused unless `allow_requantize`.
    `progress(done, total, name, from_type, to_type)` is called after each tensor.
    The output appears only when complete (written under a temporary name, then renamed).

    Raises ModelError (bad input file, write failure) or ValueError (bad arguments, a type this
    build cannot compute).
    """
    t0 = time.perf_counter()
    job = _core.QuantizeJob(Path(input), Path(output), type, pure, allow_requantize, force)
    plan = job.plan
    try:
        while True:
            i = job.step()
            if i is None:
                break
            if progress is not None:
                name, _, src, dst = plan[i]
                progress(i + 1, len(plan), name, src, dst)
        s = job.finish()
    except BaseException:
        job.abort()
        raise
    return QuantizeSummary(
        input=Path(input),
        output=Path(output),
        type=job.file_type,
        seconds=time.perf_counter() - t0,
        fallbacks=tuple(job.fallbacks),
        **s,
    )
