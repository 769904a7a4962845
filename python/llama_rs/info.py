"""What is in a model file (GGUF or legacy ggml/ggmf/ggjt), without loading its weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _core


def file_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A dict: format ("GGUF", "ggml", "ggmf", "ggjt"), version (0 for unversioned ggml),
    size (bytes, all parts), paths (the parts), n_vocab, hparams (GGUF names without the
    architecture prefix), metadata (GGUF metadata; a summary for legacy files), and tensors:
    a list of (name, type, shape, offset, nbytes), shape in ggml order (row length first);
    types: [(type, tensor count, elements)], most elements first; n_elements and tensor_bytes
    (all tensors), bits_per_weight (8 * tensor_bytes / n_elements, llama.cpp's BPW), and
    file_type (`general.file_type` by llama.cpp's name, e.g. "Q4_K_M", or None).

    Raises ModelError for a missing, unreadable or malformed file."""
    return _core.file_info(Path(path))
