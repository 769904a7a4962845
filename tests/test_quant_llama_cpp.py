"""Our encoders against llama.cpp's bytes, tensor by tensor: every tensor of fortunes-4M-f32.gguf
quantized to the type llama.cpp's `llama-quantize` chose for it under each file type must have
the bytes llama.cpp wrote (their SHA-256 in tests/data/llama_cpp_quants.json, made by
scripts/llama_cpp_quant_hashes.py). A (type, tensor) pair shared by several file types is
checked once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import need_data

from llama_rs import _core

HASHES = json.loads((Path(__file__).parent / "data" / "llama_cpp_quants.json").read_text())


def _cases() -> dict[tuple[str, str], str]:
    """(type, tensor) -> sha256, with the file types that use it checked to agree."""
    cases: dict[tuple[str, str], str] = {}
    for tensors in HASHES["ftypes"].values():
        for name, (ty, sha) in tensors.items():
            if ty == "F32":
                continue
            assert cases.setdefault((ty, name), sha) == sha, (ty, name)
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def source() -> dict[str, np.ndarray]:
    path = need_data(HASHES["source"]) / HASHES["source"]
    r = gguf.GGUFReader(path)
    return {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors}


@pytest.mark.parametrize(("ty", "name"), sorted(CASES), ids=[f"{t}-{n}" for t, n in sorted(CASES)])
def test_bytes_equal_llama_cpp(source: dict[str, np.ndarray], ty: str, name: str) -> None:
    x = source[name]
    got = _core.quantize(ty, x.astype("<f4").tobytes())
    assert hashlib.sha256(got).hexdigest() == CASES[(ty, name)], f"{ty} {name}: bytes differ from llama.cpp's"
