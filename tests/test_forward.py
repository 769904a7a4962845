"""Logits against the torch reference (Meta semantics) on random models of several shapes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import llama_rs

from reference import Shape, random_weights, reference_logits, write_model

SHAPES = {
    "mha-hd16": Shape(dim=64, n_layer=2, n_head=4, n_head_kv=4, ffn=96, vocab=300),
    "gqa-hd64": Shape(dim=256, n_layer=2, n_head=4, n_head_kv=2, ffn=160, vocab=261),
    "mqa-hd128": Shape(dim=256, n_layer=1, n_head=2, n_head_kv=1, ffn=224, vocab=77),
    "gqa4-hd32": Shape(dim=128, n_layer=3, n_head=8, n_head_kv=2, ffn=352, vocab=1000, rope_base=500000.0),
}

# Random prompt split across several eval calls, so the KV cache carries positions over.
TOKENS = [1, 17, 42, 5, 9, 33, 60, 8, 21, 70, 3, 11, 50, 4]
SPLITS = [(0, 5), (5, 6), (6, 11), (11, 14)]


def engine_logits(path: Path, threads: int = 2, kv_type: str = "f32") -> np.ndarray:
    # f32 cache by default: the reference keeps keys and values at full precision.
    m = llama_rs.Model(path, n_ctx=32, n_threads=threads, kv_type=kv_type)
    rows = [m.eval(TOKENS[a:b], all_logits=True) for a, b in SPLITS]
    assert m.n_past == len(TOKENS)
    return np.concatenate(rows).astype(np.float64)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", SHAPES)
def test_f32_logits_equal_reference(tmp_path: Path, name: str) -> None:
    s = SHAPES[name]
    w = random_weights(s, seed=1)
    path = tmp_path / "m.gguf"
    stored = write_model(path, s, w, "F32")
    ref = reference_logits(s, stored, TOKENS)
    ours = engine_logits(path)
    # float32 against float64 through a few layers: errors of a few float32 ulps of the
    # largest logit; 1e-5 is ~100 ulps and far below any semantic mistake (which is O(1)).
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("name", ["gqa-hd64", "gqa4-hd32"])
def test_f16_kv_cache_equals_reference(tmp_path: Path, name: str) -> None:
    s = SHAPES[name]
    path = tmp_path / "m.gguf"
    stored = write_model(path, s, random_weights(s, seed=6), "F32")
    ours = engine_logits(path, kv_type="f16")
    # The reference rounds q, k, v and the probabilities to f16 as llama.cpp does; f32 noise
    # can still flip an f16 rounding (one f16 step is 2^-11 relative), hence 2e-4.
    with_rounding = rel_err(ours, reference_logits(s, stored, TOKENS, f16_kv=True))
    without = rel_err(ours, reference_logits(s, stored, TOKENS))
    assert with_rounding < 2e-4
    # The rounding is real: the unrounded reference is at least twice as far.
    assert with_rounding < without / 2


def test_tied_output_falls_back_to_token_embd(tmp_path: Path) -> None:
    s = SHAPES["mha-hd16"]
    path = tmp_path / "tied.gguf"
    stored = write_model(path, s, random_weights(s, seed=2), "F32", tie_output=True)
    assert rel_err(engine_logits(path), reference_logits(s, stored, TOKENS)) < 1e-5


@pytest.mark.parametrize("wtype", ["F16", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("name", ["mha-hd16", "gqa-hd64"])
def test_quantized_logits_equal_reference(tmp_path: Path, name: str, wtype: str) -> None:
    s = SHAPES[name]
    path = tmp_path / f"{wtype}.gguf"
    stored = write_model(path, s, random_weights(s, seed=3), wtype)
    ours = engine_logits(path)
    if wtype == "F16":
        # F16 weights times f32 activations: the reference holds the same f16-rounded weights.
        assert rel_err(ours, reference_logits(s, stored, TOKENS)) < 1e-5
        return
    # Quantized weights multiply q8_0-rounded activations (as llama.cpp). The reference
    # rounds activations the same way, so only float32 noise remains -- except where that
    # noise moves an activation across a q8_0 rounding boundary (one step = amax/127 of
    # one element), hence a looser 2e-3.
    assert rel_err(ours, reference_logits(s, stored, TOKENS, quantized_acts=True)) < 2e-3
    # Against unrounded activations the q8_0 rounding shows, but stays small: ~1%.
    assert rel_err(ours, reference_logits(s, stored, TOKENS)) < 5e-2


def test_one_and_two_threads_give_identical_logits(tmp_path: Path) -> None:
    s = SHAPES["gqa-hd64"]
    path = tmp_path / "q.gguf"
    write_model(path, s, random_weights(s, seed=4), "Q4_0")
    np.testing.assert_array_equal(engine_logits(path, threads=1), engine_logits(path, threads=2))


def test_batch_equals_token_by_token(tmp_path: Path) -> None:
    s = SHAPES["gqa4-hd32"]
    path = tmp_path / "b.gguf"
    write_model(path, s, random_weights(s, seed=5), "Q8_0")
    m = llama_rs.Model(path, n_ctx=32, n_threads=2)
    batch = m.eval(TOKENS, all_logits=True)
    m.reset()
    one = np.stack([m.eval([t]) for t in TOKENS])
    np.testing.assert_array_equal(batch, one)


def test_eval_errors(tmp_path: Path) -> None:
    s = SHAPES["mha-hd16"]
    path = tmp_path / "e.gguf"
    write_model(path, s, random_weights(s), "F32")
    m = llama_rs.Model(path, n_ctx=8)
    with pytest.raises(ValueError, match="outside the vocab"):
        m.eval([1, 300])
    with pytest.raises(ValueError, match="exceed the context"):
        m.eval(list(range(1, 10)))
    assert m.n_past == 0  # a refused eval leaves the cache as it was
    m.eval([1, 2, 3])
    assert m.eval([4]).shape == (s.vocab,)
    assert m.n_past == 4
    m.reset()
    assert m.n_past == 0


# -- Llama 3.1 rotary: rope_freqs.weight, linear scaling, refused scaling types ------------
def rope3_shape(**kw) -> Shape:
    """gqa4-hd32 with Llama 3's base and per-pair divisors large enough to show on 14 positions."""
    s = SHAPES["gqa4-hd32"]
    factors = tuple(float(f) for f in np.random.default_rng(9).uniform(1.0, 32.0, s.head_dim // 2))
    return replace(s, rope_factors=factors, **kw)


def test_rope_freqs_equal_reference(tmp_path: Path) -> None:
    s = rope3_shape()
    path = tmp_path / "r.gguf"
    stored = write_model(path, s, random_weights(s, seed=7), "F32")
    ours = engine_logits(path)
    assert rel_err(ours, reference_logits(s, stored, TOKENS)) < 1e-5
    # The factors are applied, not ignored: without them the logits are far off.
    assert rel_err(ours, reference_logits(replace(s, rope_factors=None), stored, TOKENS)) > 1e-2
    m = llama_rs.Model(path, n_ctx=8)
    assert m.config["rope_factors"] == pytest.approx(s.rope_factors)
    assert m.config["freq_base"] == 500000.0


def test_linear_rope_scaling_equals_reference(tmp_path: Path) -> None:
    s = replace(SHAPES["mha-hd16"], rope_scale=4.0)
    path = tmp_path / "lin.gguf"
    stored = write_model(path, s, random_weights(s, seed=8), "F32")
    ours = engine_logits(path)
    assert rel_err(ours, reference_logits(s, stored, TOKENS)) < 1e-5
    assert rel_err(ours, reference_logits(replace(s, rope_scale=None), stored, TOKENS)) > 1e-2
    assert llama_rs.Model(path, n_ctx=8).config["freq_scale"] == 0.25


def scaled_model(path: Path, s: Shape, **kv) -> Path:
    """A model file with extra llama.* metadata (name without the prefix -> value)."""
    write_model(path, s, random_weights(s), "F32", extra={f"llama.{k}": v for k, v in kv.items()})
    return path


@pytest.mark.parametrize(
    "kv, words",
    [
        ({"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}, 'rope scaling type "yarn"'),
        ({"rope.scaling.type": "longrope"}, 'rope scaling type "longrope"'),
        ({"rope.scaling.attn_factor": 0.5}, "attention factor"),
        ({"rope.scaling.factor": -2.0}, "rope.scaling.factor"),
    ],
)
def test_unsupported_rope_scaling_is_refused(tmp_path: Path, kv: dict, words: str) -> None:
    path = scaled_model(tmp_path / "y.gguf", SHAPES["mha-hd16"], **kv)
    with pytest.raises(llama_rs.ModelError, match=re.escape(words)):
        llama_rs.Model(path, n_ctx=8)


def test_rope_scaling_none_ignores_the_factor_and_old_key_is_read(tmp_path: Path) -> None:
    s = SHAPES["mha-hd16"]
    none = scaled_model(tmp_path / "n.gguf", s, **{"rope.scaling.type": "none", "rope.scaling.factor": 4.0})
    assert llama_rs.Model(none, n_ctx=8).config["freq_scale"] == 1.0
    old = scaled_model(tmp_path / "o.gguf", s, **{"rope.scale_linear": 2.0})
    assert llama_rs.Model(old, n_ctx=8).config["freq_scale"] == 0.5


@pytest.mark.parametrize(
    "factors, words",
    [((1.0,) * 7, "rope_freqs.weight has shape [7], expected [8]"), ((1.0,) * 7 + (-1.0,), "holds -1 at pair 7")],
)
def test_bad_rope_freqs_are_refused(tmp_path: Path, factors: tuple, words: str) -> None:
    s = replace(SHAPES["gqa4-hd32"], rope_factors=factors)
    path = tmp_path / "bad.gguf"
    write_model(path, s, random_weights(s), "F32")
    with pytest.raises(llama_rs.ModelError, match=re.escape(words)):
        llama_rs.Model(path, n_ctx=8)


@pytest.mark.parametrize("wtype", ["F16", "Q8_0", "Q4_0"])
def test_tied_output_of_any_type(tmp_path: Path, wtype: str) -> None:
    """Llama 3.2 1B/3B have no output.weight: the output matmul runs on token_embd, whatever
    its type."""
    s = SHAPES["gqa-hd64"]
    path = tmp_path / "tied.gguf"
    stored = write_model(path, s, random_weights(s, seed=10), wtype, tie_output=True)
    ours = engine_logits(path)
    ref = reference_logits(s, stored, TOKENS, quantized_acts=wtype != "F16")
    assert rel_err(ours, ref) < (1e-5 if wtype == "F16" else 2e-3)


HUGE_PAGE_PROBE = r"""
import json, sys
from pathlib import Path
import llama_rs
m = llama_rs.Model.demo(n_ctx=16, n_threads=1)
path = str(Path(m.path).resolve())
flags, current = [], None
for line in Path("/proc/self/smaps").read_text().splitlines():
    if line[:1].isalnum() and "-" in line.split()[0] and len(line.split()) >= 5:
        current = line
    elif line.startswith("VmFlags:") and current and current.endswith(path):
        flags.append(line.split()[1:])
print(json.dumps({"path": path, "flags": flags}))
"""


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_the_model_map_asks_for_huge_pages() -> None:
    # Generation streams all weights per token; 2 MiB pages save the page walks (rust/bytes.rs).
    # With the file's layout kept (weights repacked on AVX-512 CPUs no longer use the map).
    env = {**os.environ, "LLAMA_RS_REPACK": "0"}
    p = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    flags = r["flags"]
    assert flags, f"{r['path']} is not mapped"
    assert all("hg" in f for f in flags), flags
