"""`llama-rs info` on each supported format, as text and JSON."""

from __future__ import annotations

import json
import math

import gguf

import pytest
from typer.testing import CliRunner

from llama_rs_cli.app import app
from conftest import need_data
from reference import Shape, random_weights, write_model
from test_legacy import SHAPE as LSHAPE, VARIANTS, write_legacy

runner = CliRunner()


def info(*args) -> dict | str:
    r = runner.invoke(app, ["info", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(r.output) if "--json" in args else r.output


def test_gguf(tmp_path) -> None:
    s = Shape(n_head_kv=2)
    write_model(tmp_path / "m.gguf", s, random_weights(s), "Q4_0")
    d = info(tmp_path / "m.gguf", "--json", "--tensors")
    assert (d["format"], d["version"], d["n_vocab"]) == ("GGUF", 3, s.vocab)
    assert d["hparams"]["embedding_length"] == s.dim and d["hparams"]["attention.head_count_kv"] == 2
    assert d["types"] == {"Q4_0": 7 * s.n_layer + 2, "F32": 2 * s.n_layer + 1}
    # Bits per weight: every tensor's bytes over every tensor's elements (4.5 for Q4_0, 32 F32).
    n_f32 = (2 * s.n_layer + 1) * s.dim
    assert d["n_elements"] == sum(math.prod(t["shape"]) for t in d["tensors"])
    assert d["tensor_bytes"] == sum(t["nbytes"] for t in d["tensors"])
    n_q = d["n_elements"] - n_f32
    assert d["bits_per_weight"] == round((4.5 * n_q + 32 * n_f32) / d["n_elements"], 4)
    assert d["file_type"] is None  # the gguf package's writer sets none
    assert d["n_tensors"] == len(d["tensors"]) == 9 * s.n_layer + 3
    t = {x["name"]: x for x in d["tensors"]}
    assert t["blk.0.ffn_down.weight"]["shape"] == [s.ffn, s.dim] and t["blk.0.ffn_down.weight"]["type"] == "Q4_0"
    assert d["metadata"]["tokenizer.ggml.tokens"]["array"] == s.vocab
    text = info(tmp_path / "m.gguf", "--tensors")
    assert "GGUF v3" in text and "blk.0.attn_q.weight" in text and "Q4_0" in text
    assert f"bits per weight                    {d['bits_per_weight']:.2f} (" in text
    assert f"{7 * s.n_layer + 2} Q4_0, {2 * s.n_layer + 1} F32" in text


@pytest.mark.parametrize("fmt,version", VARIANTS)
def test_legacy_written(tmp_path, fmt, version) -> None:
    from test_legacy import random_weights as rw

    write_legacy(tmp_path / "m.bin", rw(LSHAPE, 1), "Q4_0", fmt, version, 2)
    d = info(tmp_path / "m.bin", "--json", "--tensors")
    assert (d["format"], d["version"], len(d["parts"])) == (fmt, version, 2)
    assert d["hparams"]["feed_forward_length"] == LSHAPE.ffn and d["n_vocab"] == LSHAPE.vocab
    t = {x["name"]: x for x in d["tensors"]}
    assert t["tok_embeddings.weight"]["shape"] == [LSHAPE.dim, LSHAPE.vocab]  # parts joined
    assert t["layers.1.feed_forward.w2.weight"]["type"] == "Q4_0"
    assert f"{fmt} {'unversioned' if fmt == 'ggml' else f'v{version}'}" in info(tmp_path / "m.bin")


def test_real_files() -> None:
    models = need_data("legacy/ggjt-v3-q4_0.bin", "fortunes-1M-q4_0.gguf")
    d = info(models / "legacy/ggmf-v1-f16-2part.bin", "--json")
    assert (d["format"], d["version"], len(d["parts"]), d["types"]) == ("ggmf", 1, 2, {"F16": 30, "F32": 9})
    text = info(models / "legacy/ggjt-v3-q4_0.bin")
    assert "ggjt v3" in text and "1e-06" in text
    d = info(models / "fortunes-1M-q4_0.gguf", "--json")
    assert d["types"] == {"Q4_0": 29, "Q8_0": 1, "F32": 9} and d["file_type"] == "Q4_0"
    # llama.cpp's BPW: tensor bytes over elements, as the gguf package reads them.
    r = gguf.GGUFReader(models / "fortunes-1M-q4_0.gguf")
    bits = 8 * sum(int(t.n_bytes) for t in r.tensors) / sum(int(t.n_elements) for t in r.tensors)
    assert d["bits_per_weight"] == round(bits, 4)


def test_bad_file(tmp_path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"nope" * 10)
    r = runner.invoke(app, ["info", str(bad)])
    assert r.exit_code == 1 and r.output.startswith("error: ") and str(bad) in r.output
    assert runner.invoke(app, ["info"]).exit_code == 2
