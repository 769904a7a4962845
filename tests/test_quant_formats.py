"""Block formats' decoding against the executable reference, `gguf.quants.dequantize`: random
raw blocks (finite f16 scales, extreme scales, all-zero and all-equal blocks) and every tensor
of the type in the reference files (llama.cpp's quantizations in ../refs when present, and the
GGUF files in ../shared/models); the encoders gguf has (Q5_0, Q5_1, BF16) against its bytes.
One table (`TYPES`) lists every family checked here."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import MODELS, need_data
from gguf import GGMLQuantizationType as QT

from llama_rs import _core

# llama.cpp's `llama-quantize` output for every file type of fortunes-4M (read-only, beside the
# repo like ../shared; absent in CI, where these cases skip).
REFS = Path(os.environ.get("LLAMA_RS_QUANT_REFS", Path(__file__).resolve().parents[1].parent / "refs"))

# Finite f16 scale bits at the ends of the range: +-65504, smallest normal, subnormals, zeros, 1.
EXTREME_HALVES = [0x7BFF, 0xFBFF, 0x0400, 0x8400, 0x0001, 0x03FF, 0x0000, 0x8000, 0x3C00]


def random_blocks(qtype: QT, half_offsets: list[int], seed: int) -> np.ndarray:
    """Raw blocks of `qtype` (one row of uint8 per block): random bytes, then blocks of one
    repeated byte and all-zero blocks; the f16 fields at `half_offsets` are then set to finite
    values, random or extreme (random f16 bits could be NaN, which never compares equal)."""
    rng = np.random.default_rng(seed)
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (96, size), dtype=np.uint8)
    for i, v in enumerate([0x00, 0x11, 0x55, 0x80, 0xAA, 0xFF]):
        blocks[64 + i] = v
    blocks[70:74] = 0
    for b in range(blocks.shape[0]):
        if b in range(70, 74):
            continue
        for off in half_offsets:
            if b % 3 == 0:
                h = EXTREME_HALVES[rng.integers(len(EXTREME_HALVES))]
            else:
                # sign, exponent 0..30 (0x1f is inf/NaN), mantissa
                h = int(rng.integers(2)) << 15 | int(rng.integers(31)) << 10 | int(rng.integers(1024))
            blocks[b, off : off + 2] = np.frombuffer(np.uint16(h).tobytes(), dtype=np.uint8)
    return blocks


def assert_same_bits(got: np.ndarray, want: np.ndarray, ctx: str = "") -> None:
    """Equal as f32 bit patterns (the sign of zero and NaN payloads included)."""
    want = np.ascontiguousarray(want, dtype=np.float32).ravel()
    assert got.shape == want.shape, ctx
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{ctx} {bad.size} values differ, first at {bad[:5]}: {got[bad[:5]]} vs {want[bad[:5]]}"


def assert_decodes_like_gguf(name: str, qtype: QT, blocks: np.ndarray) -> None:
    block_elems = gguf.GGML_QUANT_SIZES[qtype][0]
    ref = gguf.quants.dequantize(blocks, qtype)
    n = blocks.shape[0] * block_elems
    ours = np.frombuffer(_core.dequantize(name, np.ascontiguousarray(blocks).tobytes(), n), dtype="<f4")
    assert_same_bits(ours, ref, name)


@functools.cache
def reader(path: str) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


def tensors_of(qtype: QT) -> list[tuple[str, str]]:
    """(file, tensor) of every tensor of `qtype` in the reference files present."""
    files = sorted(REFS.glob("*.gguf")) + (sorted(MODELS.glob("*.gguf")) if MODELS.is_dir() else [])
    found = []
    for f in files:
        for t in reader(str(f)).tensors:
            if t.tensor_type == qtype:
                found.append((str(f), t.name))
    return found


def check_file_tensor(name: str, qtype: QT, path: str, tensor: str) -> None:
    (t,) = [t for t in reader(path).tensors if t.name == tensor]
    raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    assert_decodes_like_gguf(name, qtype, raw)


def test_reference_files_hold_the_k_quants() -> None:
    """The files these cases read are there (or the cases skip with a reason)."""
    need_data("fortunes-4M-q4_k_m.gguf")
    assert tensors_of(QT.Q4_K), "no Q4_K tensor in the reference files"


# name -> (type, byte offsets of its f16 scale fields), for every family checked here.
TYPES = {
    "Q4_K": (QT.Q4_K, [0, 2]),
    "Q5_K": (QT.Q5_K, [0, 2]),
    "Q2_K": (QT.Q2_K, [80, 82]),
    "Q6_K": (QT.Q6_K, [208]),
    "Q3_K": (QT.Q3_K, [108]),
    "Q5_0": (QT.Q5_0, [0]),
    "Q5_1": (QT.Q5_1, [0, 2]),
    "IQ4_NL": (QT.IQ4_NL, [0]),
    "IQ4_XS": (QT.IQ4_XS, [0]),
}


@pytest.mark.parametrize("name", TYPES)
def test_random_blocks_decode_like_gguf(name: str) -> None:
    qtype, halves = TYPES[name]
    for seed in range(4):
        assert_decodes_like_gguf(name, qtype, random_blocks(qtype, halves, seed))


def _file_cases() -> list[tuple[str, str, str]]:
    return [(name, f, t) for name, (qtype, _) in TYPES.items() for f, t in tensors_of(qtype)]


FILE_CASES = _file_cases()


@pytest.mark.parametrize(
    ("name", "path", "tensor"),
    FILE_CASES or [pytest.param("-", "-", "-", marks=pytest.mark.skip(reason="no reference files found"))],
    ids=[f"{n}-{Path(f).stem}-{t}" for n, f, t in FILE_CASES] or ["none"],
)
def test_file_tensors_decode_like_gguf(name: str, path: str, tensor: str) -> None:
    check_file_tensor(name, TYPES[name][0], path, tensor)


@pytest.mark.parametrize(
    ("name", "path", "tensor"),
    FILE_CASES or [pytest.param("-", "-", "-", marks=pytest.mark.skip(reason="no reference files found"))],
    ids=[f"{n}-{Path(f).stem}-{t}" for n, f, t in FILE_CASES] or ["none"],
)
def test_file_rows_dot_like_their_values(name: str, path: str, tensor: str) -> None:
    """Real rows against a random activation: the SIMD kernel has the scalar reference's bits,
    and both are the dot product of the decoded row with the (q8-rounded) activation."""
    qtype = TYPES[name][0]
    (t,) = [t for t in reader(path).tensors if t.name == tensor]
    raw = np.ascontiguousarray(t.data).view(np.uint8)
    rows = raw.reshape(raw.shape[0], -1) if raw.ndim > 1 else raw.reshape(1, -1)
    n = rows.shape[1] // gguf.GGML_QUANT_SIZES[qtype][1] * gguf.GGML_QUANT_SIZES[qtype][0]
    rng = np.random.default_rng(len(tensor))
    x = rng.standard_normal(n).astype(np.float32)
    for r in rng.choice(rows.shape[0], size=min(4, rows.shape[0]), replace=False):
        w = rows[r].tobytes()
        fast, scalar = _core.vec_dot(name, w, x.tolist())
        assert np.float32(fast).tobytes() == np.float32(scalar).tobytes()
        wd = np.frombuffer(_core.dequantize(name, w, n), dtype="<f4").astype(np.float64)
        exact = float(wd @ x.astype(np.float64))
        # q8_0 and Q8_K round each activation by at most half a step of max|x| / 127.
        bound = float(np.abs(wd).sum()) * float(np.abs(x).max()) / 127 + 1e-6
        assert abs(fast - exact) <= bound, (fast, exact, bound)


# ---- the encoders gguf has: Q5_0, Q5_1, BF16 ---------------------------------------------


def test_bf16_every_value_decodes_like_gguf() -> None:
    h = np.arange(1 << 16, dtype="<u2").view(np.uint8).reshape(-1, 2)
    assert_same_bits(
        np.frombuffer(_core.dequantize("BF16", h.tobytes(), 1 << 16), dtype="<f4"), gguf.quants.dequantize(h, QT.BF16)
    )


def encoder_rows() -> dict[str, np.ndarray]:
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


ENCODER_ROWS = encoder_rows()


@pytest.mark.parametrize("ty", ["Q5_0", "Q5_1", "BF16"])
@pytest.mark.parametrize("case", ENCODER_ROWS)
def test_quantize_equals_gguf(ty: str, case: str) -> None:
    x = ENCODER_ROWS[case]
    if ty != "BF16" and case == "bf16-bits":
        pytest.skip("random bit patterns: NaN blocks, covered by with-nan")
    bs = gguf.GGML_QUANT_SIZES[QT[ty]][0]
    with np.errstate(all="ignore"):  # numpy's warnings on NaN, inf and overflowing casts
        ref = gguf.quants.quantize(x.reshape(-1, bs), QT[ty]).tobytes()
    assert _core.quantize(ty, x.tobytes()) == ref
