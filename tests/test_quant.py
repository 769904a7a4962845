"""Block formats against the executable reference (`gguf.quants`), and simd vs scalar kernels."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from llama_rs import _core

TYPES = {"Q4_0": QT.Q4_0, "Q4_1": QT.Q4_1, "Q8_0": QT.Q8_0}


def rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    r = {
        "random": rng.standard_normal(32 * 64),
        "zeros": np.zeros(32 * 4),
        "constant": np.full(32 * 4, 0.37),
        "negative-constant": np.full(32 * 4, -2.5),
        "negative-extreme": np.concatenate([rng.uniform(-1, 1, 31), [-7.0]] * 4),
        "ties": np.tile(np.array([3.0, -3.0] + [0.5] * 30), 4),
        "huge": rng.standard_normal(32 * 8) * 1e30,
        "tiny": rng.standard_normal(32 * 8) * 1e-30,
        "f16-range": rng.standard_normal(32 * 8) * 6e4,
        "mixed-scales": rng.standard_normal(32 * 16) * np.repeat(10.0 ** rng.integers(-8, 8, 16), 32),
        "uniform": rng.uniform(-1, 1, 32 * 256),
    }
    return {k: v.astype(np.float32) for k, v in r.items()}


ROWS = rows()


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", ROWS)
def test_quantize_equals_gguf(qtype: str, case: str) -> None:
    x = ROWS[case]
    ref = gguf.quants.quantize(x.reshape(-1, 32), TYPES[qtype]).tobytes()
    ours = _core.quantize(qtype, x.tobytes())
    assert ours == ref


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("case", ROWS)
def test_dequantize_equals_gguf(qtype: str, case: str) -> None:
    q = gguf.quants.quantize(ROWS[case].reshape(-1, 32), TYPES[qtype])
    ref = gguf.quants.dequantize(q, TYPES[qtype]).astype(np.float32).ravel()
    ours = np.frombuffer(_core.dequantize(qtype, q.tobytes(), ref.size), dtype="<f4")
    np.testing.assert_array_equal(ours, ref)


def test_random_blocks_decode_like_gguf() -> None:
    """Arbitrary bytes (any scale, any nibbles) dequantize like the reference too."""
    rng = np.random.default_rng(7)
    for qtype, t in TYPES.items():
        size = gguf.GGML_QUANT_SIZES[t][1]
        raw = rng.integers(0, 256, size * 50, dtype=np.uint8)
        # Keep scales finite: f16 exponent 0x1f is inf/nan, which compares unequal to itself.
        blocks = raw.reshape(50, size)
        blocks[:, 1] &= 0x7B
        if qtype == "Q4_1":
            blocks[:, 3] &= 0x7B
        ref = gguf.quants.dequantize(blocks, t).astype(np.float32).ravel()
        ours = np.frombuffer(_core.dequantize(qtype, blocks.tobytes(), 32 * 50), dtype="<f4")
        np.testing.assert_array_equal(ours, ref)


def test_f16_conversion_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            rng.standard_normal(4096) * 10.0 ** rng.integers(-9, 6, 4096),
            [0.0, -0.0, 65504.0, 65520.0, -70000.0, 6e-8, 3e-8, 1e-10, np.inf, -np.inf],
            # Halfway cases: ties must round to even.
            np.float32(1.0) + np.float32(2.0**-11) * np.arange(8, dtype=np.float32),
        ]
    ).astype(np.float32)
    ref = x.astype(np.float16)
    ours = np.frombuffer(_core.quantize("F16", x.tobytes()), dtype="<f2")
    np.testing.assert_array_equal(ours.view(np.uint16), ref.view(np.uint16))
    back = np.frombuffer(_core.dequantize("F16", ref.tobytes(), ref.size), dtype="<f4")
    np.testing.assert_array_equal(back, ref.astype(np.float32))


@pytest.mark.parametrize("wtype", ["F32", "F16", "Q4_0", "Q4_1", "Q8_0"])
def test_simd_kernels_equal_scalar(wtype: str) -> None:
    rng = np.random.default_rng(11)
    block = 1 if wtype in ("F32", "F16") else 32
    sizes = list(range(1, 70)) + [127, 255, 4096] if block == 1 else [32, 64, 96, 160, 288, 4096, 11008]
    for n in sizes:
        w = (rng.standard_normal(n) * rng.uniform(0.01, 10)).astype(np.float32)
        x = (rng.standard_normal(n) * rng.uniform(0.01, 10)).astype(np.float32)
        row = _core.quantize(wtype, w.tobytes())
        simd, scalar = _core.vec_dot(wtype, row, x.tolist())
        assert simd == scalar, (wtype, n)
        # And both are the dot product they claim to be.
        wd = np.frombuffer(_core.dequantize(wtype, row, n), dtype="<f4").astype(np.float64)
        exact = float(wd @ x.astype(np.float64))
        scale = float(np.abs(wd) @ np.abs(x.astype(np.float64)))
        tol = 1e-5 if block == 1 else 2e-2  # q8_0 rounding of x: at most 1/254 of each |x|
        assert abs(simd - exact) <= tol * scale + 1e-6, (wtype, n, simd, exact)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.quantize("Q4_0", np.zeros(33, np.float32).tobytes())
    with pytest.raises(ValueError, match="unknown tensor type"):
        _core.quantize("Q9_9", b"")
    with pytest.raises(ValueError):
        _core.dequantize("Q8_0", b"\0" * 33, 32)
