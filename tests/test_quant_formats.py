"""Block-family decoders (and the encoders gguf has) against the `gguf` package: random raw
blocks (finite f16 scales, extreme scales, all-zero and all-equal blocks) and every tensor of
the family's types in the reference files. Each family helper keeps its types in its own
block below."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import MODELS, need_data
from gguf import GGMLQuantizationType as QT

from llama_rs import _core

# llama.cpp's outputs for every file type of fortunes-4M (see its README.txt); optional.
REFS = Path(os.environ.get("LLAMA_RS_REFS", Path(__file__).resolve().parents[1].parent / "refs"))

EXTREME_HALVES = [0x7BFF, 0xFBFF, 0x0400, 0x8400, 0x0001, 0x03FF, 0x0000, 0x8000, 0x3C00]


def ours(ty: str, blocks: np.ndarray, n: int) -> np.ndarray:
    return np.frombuffer(_core.dequantize(ty, np.ascontiguousarray(blocks).tobytes(), n), dtype="<f4")


def assert_same_bits(got: np.ndarray, want: np.ndarray, ctx: str = "") -> None:
    """Equal as f32 bit patterns (the sign of zero and NaN payloads included)."""
    want = np.ascontiguousarray(want, dtype=np.float32).ravel()
    assert got.shape == want.shape, ctx
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{ctx} {bad.size} values differ, first at {bad[:5]}: {got[bad[:5]]} vs {want[bad[:5]]}"


def raw_blocks(ty: str, scale_offsets: list[int], seed: int) -> np.ndarray:
    """Random bytes as blocks of `ty`, with finite f16 scales at `scale_offsets`, then blocks
    with extreme scales, all-zero blocks and all-equal blocks."""
    t = QT[ty]
    size = gguf.GGML_QUANT_SIZES[t][1]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (64, size), dtype=np.uint8)
    extreme = rng.integers(0, 256, (len(EXTREME_HALVES) * 2, size), dtype=np.uint8)
    zeros = np.zeros((3, size), dtype=np.uint8)
    equal = np.stack([np.full(size, v, dtype=np.uint8) for v in (0x11, 0x80, 0xFF, 0x7B)])
    for o in scale_offsets:
        # f16 exponent 0x1f is inf/NaN: keep the random scales finite.
        blocks[:, o + 1] &= 0x7B
        equal[:, o + 1] &= 0x7B
        h = np.array(EXTREME_HALVES * 2, dtype="<u2").view(np.uint8).reshape(-1, 2)
        extreme[:, o : o + 2] = h if o == scale_offsets[0] else h[::-1]
    return np.concatenate([blocks, extreme, zeros, equal])


def reference_tensors(types: set[str]) -> list[tuple[str, str, int, np.ndarray]]:
    """(file:tensor, type, n, raw bytes) of every tensor of `types` in the reference files."""
    files = sorted(REFS.glob("*.gguf")) + sorted(MODELS.glob("*.gguf"))
    out = []
    for f in files:
        for t in gguf.GGUFReader(f).tensors:
            if t.tensor_type.name in types:
                out.append((f"{f.name}:{t.name}", t.tensor_type.name, int(t.n_elements), np.asarray(t.data)))
    return out


# ---- Q5_0, Q5_1, IQ4_NL, IQ4_XS, BF16 (the q5iq helper) -------------------------------------

Q5IQ_SCALES = {"Q5_0": [0], "Q5_1": [0, 2], "IQ4_NL": [0], "IQ4_XS": [0]}
Q5IQ_TYPES = {*Q5IQ_SCALES, "BF16"}


@pytest.mark.parametrize("ty", sorted(Q5IQ_SCALES))
def test_q5iq_raw_blocks_decode_like_gguf(ty: str) -> None:
    blocks = raw_blocks(ty, Q5IQ_SCALES[ty], seed=11)
    n = blocks.shape[0] * gguf.GGML_QUANT_SIZES[QT[ty]][0]
    assert_same_bits(ours(ty, blocks, n), gguf.quants.dequantize(blocks, QT[ty]))


def test_q5iq_bf16_every_value_decodes_like_gguf() -> None:
    h = np.arange(1 << 16, dtype="<u2").view(np.uint8).reshape(-1, 2)
    assert_same_bits(ours("BF16", h, 1 << 16), gguf.quants.dequantize(h, QT.BF16))


def q5iq_rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    nan = np.float32(np.nan)
    r = {
        "random": rng.standard_normal(256 * 16),
        "zeros": np.zeros(256),
        "constant": np.full(256, -0.37),
        "ties": np.tile(np.array([3.0, -3.0] + [0.5] * 30), 8),
        "huge": rng.standard_normal(256 * 2) * 1e30,
        "tiny": rng.standard_normal(256 * 2) * 1e-30,
        "subnormal": rng.standard_normal(256 * 2) * 1e-39,
        "f16-range": rng.standard_normal(256 * 2) * 6e4,
        "mixed-scales": rng.standard_normal(32 * 16) * np.repeat(10.0 ** rng.integers(-8, 8, 16), 32),
        "specials": np.array([np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1.0] * 32),
    }
    out = {k: v.astype(np.float32) for k, v in r.items()}
    # BF16 only: NaN payloads and the rounding ties (gguf's BF16 encoder handles NaN as ggml).
    bits = rng.integers(0, 1 << 32, 4096, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0x7F800001, 0xFFFFFFFF, 0x7FC00000, 0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00008000, 0x80018000]
    out["bf16-bits"] = bits.view(np.float32)
    out["with-nan"] = np.where(rng.random(256) < 0.1, nan, rng.standard_normal(256)).astype(np.float32)
    return out


Q5IQ_ROWS = q5iq_rows()


@pytest.mark.parametrize("ty", ["Q5_0", "Q5_1", "BF16"])
@pytest.mark.parametrize("case", Q5IQ_ROWS)
def test_q5iq_quantize_equals_gguf(ty: str, case: str) -> None:
    x = Q5IQ_ROWS[case]
    if ty != "BF16" and case == "bf16-bits":
        pytest.skip("random bit patterns: NaN blocks, covered by with-nan")
    bs = gguf.GGML_QUANT_SIZES[QT[ty]][0]
    with np.errstate(all="ignore"):  # numpy's warnings on NaN, inf and overflowing casts
        ref = gguf.quants.quantize(x.reshape(-1, bs), QT[ty]).tobytes()
    assert _core.quantize(ty, x.tobytes()) == ref


def test_q5iq_reference_tensors_decode_like_gguf() -> None:
    need_data()
    tensors = reference_tensors(Q5IQ_TYPES)
    if not any(REFS.glob("*.gguf")):
        pytest.skip(f"llama.cpp reference outputs not found: {REFS}")
    seen = {ty for _, ty, _, _ in tensors}
    assert seen == Q5IQ_TYPES, f"no tensors of {Q5IQ_TYPES - seen}"
    for name, ty, n, data in tensors:
        want = gguf.quants.dequantize(data, QT[ty])
        assert_same_bits(ours(ty, data, n), want, name)
