"""Block families' decoders against the executable reference (`gguf.quants.dequantize`), float for
float: random raw blocks (finite f16 scales, extreme scales, all-zero and all-equal blocks) and
every tensor of the family's type in the reference GGUF files (llama.cpp's outputs in
../refs, the shared models). Each family helper adds its types in its own block below."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import MODELS, need_data

from llama_rs import _core

QT = gguf.GGMLQuantizationType
# llama.cpp's quantized fortunes-4M files for every file type (helpers' reference copy).
REFS = Path(os.environ.get("LLAMA_RS_REFS", Path(__file__).resolve().parents[1].parent / "refs"))

EXTREME_HALVES = [0x7BFF, 0xFBFF, 0x0400, 0x8400, 0x0001, 0x03FF, 0x0000, 0x8000, 0x3C00]


def assert_same_floats(ours: np.ndarray, ref: np.ndarray) -> None:
    """Bit for bit (so -0.0 differs from 0.0), NaN for NaN."""
    assert ours.shape == ref.shape
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def decode(name: str, blocks: np.ndarray) -> np.ndarray:
    qtype = QT[name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = blocks.size // size * block
    return np.frombuffer(_core.dequantize(name, blocks.tobytes(), n), dtype="<f4")


def check_random_blocks(name: str, half_offsets: list[int], seed: int) -> None:
    """Random bytes with the f16 scales at `half_offsets` (bytes into the block) made finite,
    or set to extremes; then all-zero and all-equal blocks."""
    qtype = QT[name]
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (400, size), dtype=np.uint8)
    for off in half_offsets:
        blocks[:, off + 1] &= 0x7B  # exponent below 0x1f: finite
        ext = np.array(EXTREME_HALVES, dtype="<u2").view(np.uint8).reshape(-1, 2)
        pick = rng.integers(0, len(EXTREME_HALVES), 100)
        blocks[300:, off : off + 2] = ext[pick]
    special = []
    for byte in [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x55]:
        b = np.full(size, byte, dtype=np.uint8)
        for off in half_offsets:
            b[off : off + 2] = np.array([0x3C00], dtype="<u2").view(np.uint8)
        special.append(b)
    blocks = np.concatenate([blocks, np.stack(special)])
    ref = gguf.quants.dequantize(blocks, qtype).astype(np.float32).ravel()
    assert_same_floats(decode(name, blocks), ref)


def check_file_tensors(name: str, must_have: list[str]) -> int:
    """Every tensor of type `name` in the reference files present decodes like gguf; the shared
    models in `must_have` must be there (skip, or fail under LLAMA_RS_REQUIRE_DATA=1). Returns
    the number of tensors checked."""
    need_data(*must_have)
    checked = 0
    for path in sorted(REFS.glob("*.gguf")) + sorted(MODELS.glob("*.gguf")):
        for t in gguf.GGUFReader(path).tensors:
            if t.tensor_type != QT[name]:
                continue
            raw = np.asarray(t.data).view(np.uint8)
            ref = gguf.quants.dequantize(raw, QT[name]).astype(np.float32).ravel()
            assert_same_floats(decode(name, raw), ref)
            checked += 1
    return checked


# ---- Q6_K, Q3_K (kq6) -------------------------------------------------------------------------

# The f16 scale `d` is the last two bytes of both blocks.
KQ6_TYPES = {"Q6_K": [208], "Q3_K": [108]}
# Shared models that must be present, and how many tensors of the type they hold.
KQ6_FILES = {"Q6_K": (["fortunes-4M-q6_k.gguf", "fortunes-4M-q4_k_m.gguf"], 35), "Q3_K": ([], 0)}


@pytest.mark.parametrize("name", list(KQ6_TYPES))
def test_kq6_random_blocks_decode_like_gguf(name: str) -> None:
    check_random_blocks(name, KQ6_TYPES[name], seed=61)


@pytest.mark.parametrize("name", list(KQ6_TYPES))
def test_kq6_file_tensors_decode_like_gguf(name: str) -> None:
    must_have, shared_count = KQ6_FILES[name]
    checked = check_file_tensors(name, must_have)
    if REFS.is_dir():
        assert checked > shared_count, f"no {name} tensors in {REFS}"
    elif checked == 0:
        pytest.skip(f"no {name} tensors in the shared models, and {REFS} is absent")
    assert checked >= shared_count


@pytest.mark.parametrize("name", list(KQ6_TYPES))
def test_kq6_vec_dot_simd_equals_scalar(name: str) -> None:
    """Through `_core`: the dispatched kernel has the scalar reference's bits, and both are the
    dot product of the decoded row with the activations (up to their Q8_K rounding)."""
    rng = np.random.default_rng(62)
    for blocks in [1, 2, 7, 8, 9, 16, 43]:
        n = 256 * blocks
        w = (rng.standard_normal(n) * rng.uniform(0.01, 10)).astype(np.float32)
        x = (rng.standard_normal(n) * rng.uniform(0.01, 10)).astype(np.float32)
        row = _core.quantize(name, w.tobytes())
        simd, scalar = _core.vec_dot(name, row, x.tolist())
        assert np.float32(simd).view(np.uint32) == np.float32(scalar).view(np.uint32), (name, n)
        wd = np.frombuffer(_core.dequantize(name, row, n), dtype="<f4").astype(np.float64)
        exact = float(wd @ x.astype(np.float64))
        scale = float(np.abs(wd) @ np.abs(x.astype(np.float64)))
        assert abs(simd - exact) <= 1e-2 * scale + 1e-6, (name, n, simd, exact)
