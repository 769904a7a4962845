"""Quantize a GGUF model file (the work happens in Rust, one tensor at a time)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import _core

TYPES = ("q4_0", "q4_1", "q8_0", "f16", "f32")


@dataclass(frozen=True)
class QuantizeSummary:
    input: Path
    output: Path
    type: str
    n_tensors: int
    n_elements: int
    #: Tensor data bytes before and after, and whole-file sizes.
    bytes_in: int
    bytes_out: int
    file_in: int
    file_out: int
    seconds: float

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
    """Write `output`: `input` (GGUF) with its 2-D weights in `type` (q4_0, q4_1, q8_0, f16,
    f32). llama.cpp's policy: `output.weight` stays Q8_0 for 4-bit types unless `pure`;
    1-D tensors are kept; already quantized tensors are refused unless `allow_requantize`.
    `progress(done, total, name, from_type, to_type)` is called after each tensor.
    The output appears only when complete (written under a temporary name, then renamed).

    Raises ModelError (bad input file, write failure) or ValueError (bad arguments).
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
        input=Path(input), output=Path(output), type=type.lower(), seconds=time.perf_counter() - t0, **s
    )
