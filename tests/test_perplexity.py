"""Perplexity with llama.cpp's method: equals llama.cpp's numbers on the real model, and exp
of the mean NLL computed in Python from `Model.eval` logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

import llama_rs
from conftest import MODELS, need_data
from llama_rs_cli.app import app

EXPECTED = (
    json.loads((MODELS / "expected.json").read_text())["perplexity"] if (MODELS / "expected.json").exists() else {}
)


def within(value: float, case: dict) -> bool:
    """The listed tolerance, relative (values are printed to 4-5 digits)."""
    return abs(value - case["value"]) <= case["tol"] * case["value"]


@pytest.fixture(scope="module")
def runs() -> dict:
    return {}


@pytest.mark.parametrize("name", ["fortunes-1M-f32", "fortunes-1M-q4_0"])
def test_matches_llama_cpp(name: str, runs: dict) -> None:
    case = EXPECTED.get(name, {"file": "expected.json", "text": "expected.json"})
    models = need_data("expected.json", case["file"], case["text"])
    m = llama_rs.Model(models / case["file"], n_ctx=case["ctx"], n_threads=2)
    r = llama_rs.perplexity(m, (models / case["text"]).read_text(), case["ctx"])
    runs[name] = r
    assert r.chunks == r.tokens // case["ctx"] and r.scored == r.chunks * (case["ctx"] - 1 - case["ctx"] // 2)
    assert within(r.value, case), f"{name}: {r.value} vs llama.cpp {case['value']}"


def test_our_q4_0_within_one_percent(tmp_path, runs: dict) -> None:
    """Our q4_0 of the f32 file holds llama.cpp's q4_0 bytes (asserted here and in
    test_quantize), so its perplexity is llama.cpp's: the full-text run above is within 1% of
    the expected value, and our file gives exactly the same running estimate on the first
    chunks (the whole text again would double the cost of this module for no information)."""
    case = EXPECTED.get("fortunes-1M-q4_0", {"file": "expected.json", "text": "expected.json"})
    models = need_data("fortunes-1M-f32.gguf", case["file"], case["text"])
    out = tmp_path / "q4.gguf"
    llama_rs.quantize_file(models / "fortunes-1M-f32.gguf", out, "q4_0")
    from test_quantize import tensors

    assert tensors(out) == tensors(models / case["file"])
    text = (models / case["text"]).read_text()
    n = 6
    ours = llama_rs.perplexity(llama_rs.Model(out, n_ctx=256, n_threads=2), text, 256, max_chunks=n)
    theirs = runs.get("fortunes-1M-q4_0") or llama_rs.perplexity(
        llama_rs.Model(models / case["file"], n_ctx=256, n_threads=2), text, 256
    )
    assert ours.running == theirs.running[:n]
    assert abs(theirs.value - case["value"]) <= 0.01 * case["value"], theirs.value


def test_equals_python_nll_from_eval_logits() -> None:
    models = need_data("fortunes-1M-f32.gguf", "fortunes-heldout.txt")
    ctx, n = 64, 3
    m = llama_rs.Model(models / "fortunes-1M-f32.gguf", n_ctx=ctx, n_threads=2)
    text = (models / "fortunes-heldout.txt").read_text()[:20000]
    r = llama_rs.perplexity(m, text, ctx, max_chunks=n)
    toks = m.tokenize(text)
    nll, count = 0.0, 0
    for c in range(n):
        chunk = toks[c * ctx : (c + 1) * ctx]
        m.reset()
        logits = m.eval([m.bos_token] + chunk[1:], all_logits=True).astype(np.float64)
        for j in range(ctx // 2, ctx - 1):
            row = logits[j]
            nll -= row[chunk[j + 1]] - row.max() - math.log(np.exp(row - row.max()).sum())
            count += 1
    assert r.scored == count and r.chunks == n
    assert r.value == pytest.approx(math.exp(nll / count), rel=1e-6)
    assert r.running[-1] == r.value and len(r.running) == n


def test_cli(tmp_path) -> None:
    models = need_data("fortunes-1M-q4_0.gguf", "fortunes-heldout.txt")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "perplexity",
            "-m",
            str(models / "fortunes-1M-q4_0.gguf"),
            "-f",
            str(models / "fortunes-heldout.txt"),
            "-c",
            "64",
            "--chunks",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "perplexity" in r.output and "2 chunks of 64 tokens" in r.output
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    r = runner.invoke(app, ["perplexity", "-m", str(models / "fortunes-1M-q4_0.gguf"), "-f", str(short), "-c", "64"])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "fewer than one chunk" in r.output
    r = runner.invoke(app, ["perplexity", "-m", str(tmp_path / "none.gguf"), "-f", str(short)])
    assert r.exit_code == 1 and "none.gguf" in r.output
    assert runner.invoke(app, ["perplexity", "-f", str(short)]).exit_code == 2


@pytest.mark.parametrize("ftype", ["q4_0", "q4_1", "q8_0", "f16"])
def test_cli_takes_every_quantize_type(tmp_path, ftype: str) -> None:
    """Perplexity of a file `llama-rs quantize` wrote, through the CLI, in each type this build
    computes: the library's value for that file, and for 8 and 16 bits close to the F32 file's."""
    from reference import Shape, random_weights, write_model

    shape = Shape(dim=64, n_layer=2, n_head=4, n_head_kv=2, ffn=96, vocab=320)
    src = tmp_path / "m.gguf"
    write_model(src, shape, random_weights(shape, seed=4), "F32")
    out = tmp_path / f"m-{ftype}.gguf"
    llama_rs.quantize_file(src, out, ftype)
    text = tmp_path / "t.txt"
    rng = np.random.default_rng(1)
    text.write_text(" ".join(f"t{i}" for i in rng.integers(3, shape.vocab, 200)))
    r = CliRunner().invoke(app, ["perplexity", "-m", str(out), "-f", str(text), "-c", "32", "--chunks", "3"])
    assert r.exit_code == 0, r.output
    got = float(r.output.split("perplexity ")[1].split()[0])
    same = llama_rs.perplexity(llama_rs.Model(out, n_ctx=32), text.read_text(), 32, max_chunks=3).value
    assert got == pytest.approx(same, rel=1e-4)  # printed to 4 decimals
    if not ftype.startswith("q4"):  # 4 bits move a random model's predictions too much to compare
        ref = llama_rs.perplexity(llama_rs.Model(src, n_ctx=32), text.read_text(), 32, max_chunks=3).value
        assert abs(got - ref) <= 0.01 * ref, (got, ref)
