"""`llama-rs quantize`: bytes equal to the `gguf` package's quantization, llama.cpp's policy,
metadata copied, and every bad input a one-line error with nothing left behind."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from typer.testing import CliRunner

import llama_rs
from llama_rs import _core
from llama_rs_cli.app import app
from reference import Shape, random_weights, write_model

from conftest import need_data

runner = CliRunner()
SHAPE = Shape(dim=64, n_layer=2, n_head=4, n_head_kv=2, ffn=96, vocab=320)
TARGET = {"q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "q8_0": QT.Q8_0}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    d = tmp_path_factory.mktemp("q")
    w = random_weights(SHAPE, seed=3)
    write_model(d / "m-f32.gguf", SHAPE, w, "F32")
    write_model(d / "m-f16.gguf", SHAPE, w, "F16")
    return d, w


def tensors(path: Path) -> dict[str, tuple[list[int], str, bytes]]:
    _, _, _, ts = _core.gguf_read(path)
    return {n: (dims, ty, _core.gguf_tensor_bytes(path, n)) for n, dims, ty, _, _ in ts}


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0"])
def test_quantized_bytes_equal_gguf_package(src, tmp_path, qtype, pure) -> None:
    d, w = src
    out = tmp_path / "out.gguf"
    r = cli("quantize", d / "m-f32.gguf", out, qtype, *(["--pure"] if pure else []))
    assert r.exit_code == 0, r.output
    assert "bits per weight" in r.output
    got = tensors(out)
    for name, a in w.items():
        dims, ty, data = got[name]
        assert dims == list(a.shape[::-1])
        if a.ndim == 1:
            assert ty == "F32" and data == a.astype(np.float32).tobytes(), name  # norms untouched
            continue
        want_t = qtype if (pure or name != "output.weight" or qtype == "q8_0") else "q8_0"
        assert ty == want_t.upper(), name
        assert data == gguf.quants.quantize(a, TARGET[want_t]).tobytes(), name
    # Metadata copied, with general.file_type updated.
    _, _, m_in, _ = _core.gguf_read(d / "m-f32.gguf")
    _, _, m_out, _ = _core.gguf_read(out)
    assert m_out.pop("general.file_type")[1] == {"q4_0": 2, "q4_1": 3, "q8_0": 7}[qtype]
    assert m_out.pop("general.quantization_version")[1] == 2
    m_in.pop("general.file_type", None)
    assert m_out == m_in
    # The quantized model loads and runs.
    assert llama_rs.Model(out, n_ctx=8).eval([1, 5, 9]).shape == (SHAPE.vocab,)


@pytest.mark.parametrize("source", ["m-f32.gguf", "m-f16.gguf"])
def test_f16_and_f32_targets(src, tmp_path, source) -> None:
    d, w = src
    for t in ("f16", "f32"):
        out = tmp_path / f"{t}.gguf"
        assert cli("quantize", d / source, out, t).exit_code == 0
        got = tensors(out)
        for name, a in w.items():
            dims, ty, data = got[name]
            if a.ndim == 1:
                assert ty == "F32"
                continue
            stored = a.astype(np.float16) if source == "m-f16.gguf" else a
            conv = stored.astype(np.float16) if t == "f16" else stored.astype(np.float32)
            assert ty == t.upper() and data == conv.tobytes(), name


def test_requantize_refused_unless_allowed(src, tmp_path) -> None:
    d, w = src
    q8 = tmp_path / "q8.gguf"
    assert cli("quantize", d / "m-f32.gguf", q8, "q8_0").exit_code == 0
    r = cli("quantize", q8, tmp_path / "q4.gguf", "q4_0")
    assert r.exit_code == 1 and "error:" in r.output and "already quantized" in r.output
    assert "--allow-requantize" in r.output and str(q8) in r.output
    assert not (tmp_path / "q4.gguf").exists()
    r = cli("quantize", q8, tmp_path / "q4.gguf", "q4_0", "--allow-requantize")
    assert r.exit_code == 0, r.output
    got = tensors(tmp_path / "q4.gguf")
    q = got["blk.0.attn_q.weight"][2]
    deq = gguf.quants.dequantize(
        np.frombuffer(tensors(q8)["blk.0.attn_q.weight"][2], np.uint8).reshape(SHAPE.dim, -1), QT.Q8_0
    )
    assert q == gguf.quants.quantize(deq.astype(np.float32), QT.Q4_0).tobytes()


def test_seed_shorthand_folder(src, tmp_path) -> None:
    d, _ = src
    folder = tmp_path / "7B"
    folder.mkdir()
    (folder / "ggml-model-f16.gguf").write_bytes((d / "m-f16.gguf").read_bytes())
    r = cli("quantize", folder)
    assert r.exit_code == 0, r.output
    assert tensors(folder / "ggml-model-q4_0.gguf")["blk.0.attn_q.weight"][1] == "Q4_0"
    assert cli("quantize", folder, "q8_0").exit_code == 0
    assert (folder / "ggml-model-q8_0.gguf").exists()
    r = cli("quantize", tmp_path)
    assert r.exit_code == 1 and "ggml-model-f16.gguf" in r.output


def test_bad_inputs(src, tmp_path) -> None:
    d, _ = src
    inp = d / "m-f32.gguf"
    r = cli("quantize", inp, tmp_path / "o.gguf", "q9_0")
    assert r.exit_code == 1 and r.output.startswith('error: unknown type "q9_0" (choose Q4_0, Q4_1'), r.output
    assert all(t.name in r.output for t in llama_rs.file_types()) and "Q4_K = Q4_K_M" in r.output
    r = cli("quantize", inp, inp, "q4_0")
    assert r.exit_code == 1 and "is the input" in r.output and str(inp) in r.output
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep")
    r = cli("quantize", inp, existing, "q4_0")
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output
    assert existing.read_bytes() == b"keep"
    assert cli("quantize", inp, existing, "q4_0", "--force").exit_code == 0
    assert tensors(existing)["blk.0.attn_q.weight"][1] == "Q4_0"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(inp.read_bytes()[:5000])
    r = cli("quantize", bad, tmp_path / "o2.gguf")
    assert r.exit_code == 1 and str(bad) in r.output and "end of the file" in r.output
    r = cli("quantize", tmp_path / "missing.gguf", tmp_path / "o3.gguf")
    assert r.exit_code == 1 and "missing.gguf" in r.output
    assert cli("quantize", inp).exit_code == 1  # no output given
    assert cli("quantize").exit_code == 2  # usage error
    # Nothing partial anywhere.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "exists.gguf"]


def test_write_failure_leaves_nothing(src, tmp_path) -> None:
    """A full disk, simulated by a file size limit: the write fails (EFBIG), the command says
    so in one line naming the output, exits 1, and no partial file remains."""
    d, _ = src
    out = tmp_path / "o.gguf"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    p = subprocess.run(
        [sys.executable, "-m", "llama_rs_cli.app", "quantize", str(d / "m-f32.gguf"), str(out), "q8_0"],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], p.stderr
    assert "write failed" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_real_model_same_bytes_as_llama_cpp(tmp_path) -> None:
    """Our q4_0 of fortunes-1M-f32 is llama.cpp's q4_0 file, tensor for tensor."""
    models = need_data("fortunes-1M-f32.gguf", "fortunes-1M-q4_0.gguf")
    out = tmp_path / "q4.gguf"
    s = llama_rs.quantize_file(models / "fortunes-1M-f32.gguf", out, "q4_0")
    assert s.file_out == out.stat().st_size and 4.5 < s.bits_per_weight < 5.5
    ours, theirs = tensors(out), tensors(models / "fortunes-1M-q4_0.gguf")
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name] == theirs[name], name


def test_help_lists_every_file_type() -> None:
    r = runner.invoke(app, ["quantize", "--help"], terminal_width=120)
    assert r.exit_code == 0
    lines = {line.split()[0]: line.split() for line in r.output.splitlines() if line.strip()}
    for t in llama_rs.file_types():
        row = lines[t.name]
        assert row[1:5] == [str(t.id), t.base, f"{t.base_bits:.2f}", f"{t.bits_7b:.2f}"], row
    assert lines["Q4_K_M"][3] == "4.50" and float(lines["Q4_K_M"][4]) > 4.5  # the mix costs bits
    assert "No importance matrix" in r.output and "--pure" in r.output and "Q4_K = Q4_K_M" in r.output


@pytest.mark.parametrize("name", ["Q8_0", "q8_0", "7"])
def test_type_names_as_llama_cpp(src, tmp_path, name) -> None:
    d, _ = src
    r = cli("quantize", d / "m-f32.gguf", tmp_path / "o.gguf", name)
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("s") and ": Q8_0, " in r.output
    assert tensors(tmp_path / "o.gguf")["blk.0.attn_q.weight"][1] == "Q8_0"


def test_fallback_is_reported(src, tmp_path) -> None:
    """Rows of 64: output.weight's Q6_K falls back to Q8_0, as llama.cpp does."""
    d, _ = src
    s = llama_rs.quantize_file(d / "m-f32.gguf", tmp_path / "o.gguf", "q4_0")
    assert s.type == "Q4_0" and s.fallbacks == (("output.weight", "Q8_0", "Q6_K"),)
    r = cli("quantize", d / "m-f32.gguf", tmp_path / "o2.gguf", "q4_0")
    assert r.exit_code == 0 and "1 tensors" in r.output and "output.weight Q6_K -> Q8_0" in r.output


@pytest.mark.parametrize("ftype", [t.name for t in llama_rs.file_types()])
def test_every_file_type_writes_or_names_the_missing_type(src, tmp_path, ftype) -> None:
    """Each file type either writes the planned types, or (where this build lacks a type the
    plan needs) fails in one line naming it, leaving nothing behind."""
    d, _ = src
    shape = Shape(dim=256, n_layer=2, n_head=4, n_head_kv=2, ffn=512, vocab=320)
    path = tmp_path / "m.gguf"
    write_model(path, shape, random_weights(shape, seed=5), "F32")
    plan = {n: to for n, _, _, to, _ in _core.quantize_plan(path, ftype)}
    built = set(_core.kernel_types())
    out = tmp_path / "o.gguf"
    r = cli("quantize", path, out, ftype)
    missing = sorted({t for t in plan.values() if t not in built})
    if missing:
        assert r.exit_code == 1 and f"type {missing[0]} is not supported by this build" in r.output, r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    else:
        assert r.exit_code == 0, r.output
        assert {n: ty for n, (_, ty, _) in tensors(out).items()} == plan
        _, _, meta, _ = _core.gguf_read(out)
        assert meta["general.file_type"][1] == next(t.id for t in llama_rs.file_types() if t.name == ftype)
