"""The K-quant files people download, on a real trained model: fortunes-4M quantized by
llama.cpp (Q4_K_M: Q4_K with Q6_K for output and some attn_v/ffn_down; Q6_K) must give
llama.cpp's greedy ids and perplexity (expected.json -> kquants), and our own `quantize` of the
f32 file must write llama.cpp's tensors byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import MODELS, need_data
from test_real_models import greedy_agreement

import llama_rs

EXPECTED = json.loads((MODELS / "expected.json").read_text()) if (MODELS / "expected.json").exists() else {}
KQ = EXPECTED.get("kquants", {"greedy": {"expected.json missing": {}}, "perplexity": {"expected.json missing": {}}})
PPL = {**KQ["perplexity"], **{k: v for k, v in EXPECTED.get("perplexity", {}).items() if k == "fortunes-4M-f32"}}


# Greedy ids on these files are not a fixed property of llama.cpp: every K-quant matmul rounds
# its input to Q8_K, so last-bit differences upstream sometimes move a rounded activation by one
# step and the logits by up to ~0.3. llama.cpp c392e50 built natively (AMX, the referee of
# expected.json) and built for AVX2 only agree on 20, 11 and 40 of the 40 ids; we agree with
# the native build on 16, 11 and 28 and with the AVX2 build on 16, 14 and 28 (Xeon, 2026-12-01).
# So the free-running ids only have a floor here; the logprob test below is the strict one.
KQUANT_GREEDY_FLOOR = 10
# llama.cpp's top-5 logprobs at each step, per build (scripts/llama_cpp_kquant_logprobs.py).
LOGPROBS_FILE = Path(__file__).parent / "data" / "llama_cpp_kquant_logprobs.json"
LOGPROBS = json.loads(LOGPROBS_FILE.read_text())["builds"]
# How much further from llama.cpp than its two builds are from each other we may be.
SPREAD_MARGIN = 1.5


@pytest.mark.parametrize("name", KQ["greedy"])
def test_greedy_ids_follow_llama_cpp(name: str) -> None:
    case = KQ["greedy"][name]
    models = need_data("expected.json", case.get("file", "expected.json"))
    m = llama_rs.Model(models / case["file"], n_ctx=256, n_threads=2, kv_type=case.get("kv_type", "f16"))
    assert m.tokenize(case["prompt"]) == case["prompt_ids"]
    agree, got = greedy_agreement(m, case)
    print(f"{name}: {agree} of {len(case['continuation'])} ids agree with llama.cpp's")
    assert agree >= KQUANT_GREEDY_FLOOR, f"{name}: {agree} of {len(case['continuation'])} ids agree: {got}"


def _top_logprob_gaps(a: list, b: list) -> list[float]:
    """|a - b| for each id in both top lists (one step each)."""
    b = dict((t, lp) for t, lp in b)
    return [abs(lp - b[t]) for t, lp in a if t in b]


def test_recorded_referee_is_expected_json() -> None:
    need_data("expected.json")
    for name, case in KQ["greedy"].items():
        assert LOGPROBS["native"][name]["ids"] == case["continuation"], name


def test_logprobs_as_close_to_llama_cpp_as_its_builds_are_to_each_other() -> None:
    """Teacher-forced along each llama.cpp build's own greedy ids, our log-softmax at every
    step, for every id of llama.cpp's top 5, against llama.cpp's: the largest and the mean
    difference may be at most SPREAD_MARGIN times those between the two llama.cpp builds (over
    the steps where their ids still agree). A wrong decoder or kernel is far outside that: our
    Q6_K file scored against the Q4_K_M records differs by 1.66 at most and 0.24 on average,
    five times the builds' spread."""
    builds = list(LOGPROBS)
    spread = []
    for name in LOGPROBS[builds[0]]:
        a, b = (LOGPROBS[k][name] for k in builds[:2])
        n = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"])) if x != y), len(a["ids"]) - 1)
        for i in range(n + 1):  # up to and including the first step whose ids differ
            spread += _top_logprob_gaps(a["top"][i], b["top"][i])
    ours = []
    for build in builds:
        for name, rec in LOGPROBS[build].items():
            case = KQ["greedy"][name]
            models = need_data("expected.json", case["file"])
            m = llama_rs.Model(models / case["file"], n_ctx=256, n_threads=2, kv_type=case["kv_type"])
            p = len(case["prompt_ids"])
            logits = m.eval(case["prompt_ids"] + rec["ids"][:-1], all_logits=True)[p - 1 :].astype(np.float64)
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            for i, top in enumerate(rec["top"]):
                ours += _top_logprob_gaps(top, [(t, logp[i][t]) for t, _ in top])
    print(
        f"|ours - llama.cpp| max {max(ours):.3f} mean {np.mean(ours):.4f} over {len(ours)}; "
        f"between llama.cpp builds max {max(spread):.3f} mean {np.mean(spread):.4f} over {len(spread)}"
    )
    assert max(ours) <= SPREAD_MARGIN * max(spread)
    assert np.mean(ours) <= SPREAD_MARGIN * np.mean(spread)


@pytest.mark.parametrize("name", PPL)
def test_perplexity_matches_llama_cpp(name: str) -> None:
    case = PPL[name]
    models = need_data("expected.json", case.get("file", "expected.json"), case.get("text", "expected.json"))
    m = llama_rs.Model(models / case["file"], n_ctx=case["ctx"], n_threads=2)
    r = llama_rs.perplexity(m, (models / case["text"]).read_text(), case["ctx"])
    assert abs(r.value - case["value"]) <= case["tol"] * case["value"], (
        f"{name}: {r.value} vs llama.cpp {case['value']}"
    )


@pytest.mark.parametrize("ftype", ["q4_k_m", "q6_k"])
def test_our_quantize_writes_llama_cpps_tensors(tmp_path: Path, ftype: str) -> None:
    models = need_data("fortunes-4M-f32.gguf", f"fortunes-4M-{ftype}.gguf")
    out = tmp_path / f"ours-{ftype}.gguf"
    llama_rs.quantize_file(models / "fortunes-4M-f32.gguf", out, ftype)
    ours = {t.name: t for t in gguf.GGUFReader(out).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(models / f"fortunes-4M-{ftype}.gguf").tensors}
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        o = ours[name]
        assert o.tensor_type == t.tensor_type, f"{name}: {o.tensor_type.name} vs llama.cpp's {t.tensor_type.name}"
        assert np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(t.data).view(np.uint8)), name


def _patched_k_quant_file(tmp_path: Path, patch) -> Path:
    """fortunes-4M-q4_k_m.gguf with `patch(data, reader, tensor)` applied to its first Q4_K tensor."""
    models = need_data("fortunes-4M-q4_k_m.gguf")
    src = models / "fortunes-4M-q4_k_m.gguf"
    r = gguf.GGUFReader(src)
    t = next(t for t in r.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_K)
    data = bytearray(src.read_bytes())
    patch(data, r, t)
    out = tmp_path / "bad.gguf"
    out.write_bytes(bytes(data))
    return out, t.name


def test_k_quant_row_not_a_multiple_of_256_is_named(tmp_path: Path) -> None:
    def halve_rows(data, r, t):  # ne0 256 -> 128, ne1 doubled: the same bytes, half rows
        dims = t.field.parts[3]
        at = dims.ctypes.data - r.data.ctypes.data
        ne0, ne1 = int(dims[0]), int(dims[1])
        data[at : at + 16] = (ne0 // 2).to_bytes(8, "little") + (ne1 * 2).to_bytes(8, "little")

    path, name = _patched_k_quant_file(tmp_path, halve_rows)
    with pytest.raises(llama_rs.ModelError) as e:
        llama_rs.Model(path)
    msg = str(e.value)
    assert name in msg and "Q4_K" in msg and "256" in msg, msg


def test_truncated_k_quant_tensor_is_named(tmp_path: Path) -> None:
    models = need_data("fortunes-4M-q4_k_m.gguf")
    data = (models / "fortunes-4M-q4_k_m.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: len(data) - 100])  # inside the last tensor's last super-block
    r = gguf.GGUFReader(models / "fortunes-4M-q4_k_m.gguf")
    last = max(r.tensors, key=lambda t: t.data_offset)  # the tensor stored last
    with pytest.raises(llama_rs.ModelError) as e:
        llama_rs.Model(path)
    msg = str(e.value)
    assert f'"{last.name}"' in msg and "truncated" in msg, msg
