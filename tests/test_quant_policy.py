"""The per-tensor type policy of `llama-rs quantize` against llama.cpp's `llama-quantize`: for
every file type, the type of every tensor, without writing anything (`_core.quantize_plan`).

- fortunes-4M-f32.gguf: the types llama.cpp chose (tests/data/llama_cpp_quants.json).
- Shapes fortunes-4M lacks (7B, Llama 3 8B with GQA, 70B, rows of 3200, a tied output, rows
  that fit nothing): tests/data/llama_cpp_policy.json, made by
  scripts/llama_cpp_policy_cases.py, which writes the same files as here (real row lengths,
  two rows per tensor) and runs llama-quantize on them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import need_data

from llama_rs import _core

DATA = Path(__file__).parent / "data"
QUANTS = json.loads((DATA / "llama_cpp_quants.json").read_text())
POLICY = json.loads((DATA / "llama_cpp_policy.json").read_text())


def _cases_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "llama_cpp_policy_cases.py"
    spec = importlib.util.spec_from_file_location("llama_cpp_policy_cases", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = _cases_module()


def plan(path: Path, ftype: str) -> dict[str, str]:
    return {name: to for name, _, _, to, _ in _core.quantize_plan(path, ftype)}


@pytest.mark.parametrize("ftype", sorted(QUANTS["ftypes"]))
def test_fortunes_4m_types_are_llama_cpp_s(ftype: str) -> None:
    src = need_data(QUANTS["source"]) / QUANTS["source"]
    want = {name: ty for name, (ty, _) in QUANTS["ftypes"][ftype].items()}
    assert plan(src, ftype) == want


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shapes")
    out = {}
    for case, meta in POLICY["cases"].items():
        shape = tuple(meta["shape"].values())
        assert shape == CASES.CASES[case], f"{case}: the script's shape changed; rerun it"
        CASES.write(d / f"{case}.gguf", shape)
        out[case] = d / f"{case}.gguf"
    return out


SHAPE_CASES = [(c, f) for c, m in POLICY["cases"].items() for f in m["ftypes"]]


@pytest.mark.parametrize(("case", "ftype"), SHAPE_CASES, ids=[f"{c}-{f}" for c, f in SHAPE_CASES])
def test_shapes_types_are_llama_cpp_s(shape_files, case: str, ftype: str) -> None:
    want = POLICY["cases"][case]["ftypes"][ftype]
    shape = CASES.CASES[case]
    if want == "error":  # llama.cpp refuses: rows that fit the type and have no fallback
        with pytest.raises(ValueError, match="rows of"):
            _core.quantize_plan(shape_files[case], ftype)
        return
    assert CASES.summarize(plan(shape_files[case], ftype), shape) == want


def test_fallbacks_are_reported(shape_files) -> None:
    rows = _core.quantize_plan(shape_files["openllama-3b"], "q4_k_m")
    fb = {name: (to, was) for name, _, _, to, was in rows if was is not None}
    assert fb["blk.0.attn_q.weight"] == ("Q5_0", "Q4_K")
    assert fb["blk.0.ffn_down.weight"] == ("Q8_0", "Q6_K")
    assert "output.weight" not in fb  # straight to Q8_0, as llama.cpp
    assert not any(was for *_, was in _core.quantize_plan(shape_files["llama2-7b"], "q4_k_m"))


def test_pure_and_bad_names(shape_files) -> None:
    rows = _core.quantize_plan(shape_files["llama2-7b"], "Q4_K_M", pure=True)
    assert {to for name, _, _, to, _ in rows if "norm" not in name} == {"Q4_K"}
    with pytest.raises(ValueError, match=r'unknown type "q9_0" \(choose Q4_0, .*Q4_K_M'):
        _core.quantize_plan(shape_files["llama2-7b"], "q9_0")
