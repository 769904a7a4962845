"""GGUF read and write against the `gguf` package, and hostile files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import llama_rs
from llama_rs import _core

from conftest import need_data
from reference import Shape, random_weights, write_model

TYPE_NAMES = {QT.F32: "F32", QT.F16: "F16", QT.Q4_0: "Q4_0", QT.Q4_1: "Q4_1", QT.Q8_0: "Q8_0"}


def reader_metadata(r: gguf.GGUFReader) -> dict[str, object]:
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        out[k] = v
    return out


def ours_metadata(path: Path) -> dict[str, object]:
    _, _, meta, _ = _core.gguf_read(path)
    return {k: (v[1] if t == 9 else v) for k, (t, v) in meta.items()}


def assert_same_file(path: Path) -> None:
    """Our reader sees exactly what gguf.GGUFReader sees: metadata, shapes, types, bytes."""
    r = gguf.GGUFReader(str(path))
    version, _, _, tensors = _core.gguf_read(path)
    assert version == int(r.fields["GGUF.version"].contents())
    ref_meta = reader_metadata(r)
    ours = ours_metadata(path)
    assert ours.keys() == ref_meta.keys()
    for k, v in ref_meta.items():
        if isinstance(v, float):
            assert ours[k] == pytest.approx(v, rel=1e-7), k
        elif isinstance(v, list) and v and isinstance(v[0], float):
            np.testing.assert_allclose(ours[k], v, rtol=1e-7, err_msg=k)
        else:
            assert ours[k] == v, k
    assert [t[0] for t in tensors] == [t.name for t in r.tensors]
    for (name, dims, tname, _, nbytes), t in zip(tensors, r.tensors):
        assert list(dims) == [int(d) for d in t.shape], name
        assert tname == TYPE_NAMES[t.tensor_type], name
        assert nbytes == t.n_bytes
        assert _core.gguf_tensor_bytes(path, name) == t.data.tobytes(), name


@pytest.mark.parametrize("wtype", ["F32", "F16", "Q4_0", "Q4_1", "Q8_0"])
def test_reads_what_gguf_writes(tmp_path: Path, wtype: str) -> None:
    s = Shape(dim=64, n_layer=1, ffn=96, vocab=100)
    path = tmp_path / "m.gguf"
    write_model(path, s, random_weights(s), wtype)
    assert_same_file(path)
    m = llama_rs.Model(path)
    assert m.metadata["llama.embedding_length"] == 64
    assert m.metadata["general.architecture"] == "llama"


def test_gguf_v2_loads(tmp_path: Path) -> None:
    """v2 has v3's layout (v3 only added big-endian files): patching the version keeps it valid."""
    s = Shape(dim=32, n_layer=1, n_head=2, n_head_kv=1, ffn=32, vocab=40)
    path = tmp_path / "v3.gguf"
    write_model(path, s, random_weights(s), "Q8_0")
    data = bytearray(path.read_bytes())
    assert data[4:8] == (3).to_bytes(4, "little")
    data[4:8] = (2).to_bytes(4, "little")
    v2 = write(tmp_path / "v2.gguf", bytes(data))
    assert _core.gguf_read(v2)[0] == 2
    a, b = llama_rs.Model(path, n_ctx=8), llama_rs.Model(v2, n_ctx=8)
    np.testing.assert_array_equal(a.eval([1, 5]), b.eval([1, 5]))


def test_every_value_type_round_trips(tmp_path: Path) -> None:
    """Our writer's file reads back identically in gguf.GGUFReader, for every value type."""
    meta = [
        ("general.architecture", 8, "llama"),
        ("t.u8", 0, 255),
        ("t.i8", 1, -128),
        ("t.u16", 2, 65535),
        ("t.i16", 3, -32768),
        ("t.u32", 4, 4294967295),
        ("t.i32", 5, -2147483648),
        ("t.f32", 6, 0.5),
        ("t.bool", 7, True),
        ("t.str", 8, "héllo ▁ 世界"),
        ("t.u64", 10, 2**64 - 1),
        ("t.i64", 11, -(2**63)),
        ("t.f64", 12, 1e-300),
        ("t.arr_i32", 9, (5, [1, -2, 3])),
        ("t.arr_str", 9, (8, ["a", "", "ü"])),
        ("t.arr_empty", 9, (6, [])),
        ("t.arr_f32", 9, (6, [0.25, -1.5])),
    ]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    tensors = [
        ("a", [64, 3], "F32", x.tobytes()),
        ("b", [64, 3], "F16", x.astype(np.float16).tobytes()),
        ("c", [64, 3], "Q4_0", gguf.quants.quantize(x, QT.Q4_0).tobytes()),
        ("d", [7], "F32", np.arange(7, dtype=np.float32).tobytes()),
    ]
    path = tmp_path / "ours.gguf"
    _core.gguf_write(path, meta, tensors)
    r = gguf.GGUFReader(str(path))
    got = reader_metadata(r)
    for key, t, v in meta:
        want = v[1] if t == 9 else v
        assert got[key] == pytest.approx(want) if isinstance(want, float) else got[key] == want, key
    for (name, dims, tname, data), t in zip(tensors, r.tensors):
        assert t.name == name and [int(d) for d in t.shape] == dims and TYPE_NAMES[t.tensor_type] == tname
        assert t.data.tobytes() == data
    assert_same_file(path)


def test_llama_cpp_vocab_file_opens() -> None:
    models = need_data("ggml-vocab-llama-spm.gguf")
    path = models / "ggml-vocab-llama-spm.gguf"
    assert_same_file(path)
    meta = ours_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == 32000
    assert meta["tokenizer.ggml.model"] == "llama"


def test_real_models_read_like_gguf() -> None:
    models = need_data("fortunes-1M-q4_0.gguf", "stories260K.gguf")
    assert_same_file(models / "fortunes-1M-q4_0.gguf")
    assert_same_file(models / "stories260K.gguf")


# -- bad input ------------------------------------------------------------------------------


def small_model(tmp_path: Path) -> Path:
    s = Shape(dim=32, n_layer=1, n_head=2, n_head_kv=1, ffn=32, vocab=40)
    path = tmp_path / "small.gguf"
    write_model(path, s, random_weights(s), "Q4_0")
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: p / "missing.gguf", "cannot open"),
        (lambda p: p, "is a directory"),
        (lambda p: write(p / "empty.gguf", b""), "empty"),
        (lambda p: write(p / "bad.gguf", b"GGML" + b"\0" * 100), "not a GGUF file"),
        (lambda p: write(p / "v1.gguf", b"GGUF\x01\0\0\0" + b"\0" * 100), "unsupported GGUF version 1"),
        (lambda p: write(p / "short.gguf", b"GGUF\x03\0\0\0\0"), "truncated"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(llama_rs.ModelError, match=match) as e:
        llama_rs.Model(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, OSError) and isinstance(e.value, ValueError)


def edit_model(tmp_path: Path, name: str, **changes) -> Path:
    """Copy of the small model with some metadata replaced or tensors dropped/renamed."""
    src = small_model(tmp_path)
    r = gguf.GGUFReader(str(src))
    _, _, meta, tensors = _core.gguf_read(src)
    kvs = []
    for k, (t, v) in meta.items():
        if k in changes.get("drop_meta", ()):
            continue
        if k in changes.get("meta", {}):
            t, v = changes["meta"][k]
        kvs.append((k, t, v))
    ts = []
    for (tname, dims, ty, _, _), t in zip(tensors, r.tensors):
        if tname in changes.get("drop", ()):
            continue
        ts.append((changes.get("rename", {}).get(tname, tname), list(dims), ty, t.data.tobytes()))
    out = tmp_path / name
    _core.gguf_write(out, kvs, ts)
    return out


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"meta": {"general.architecture": (8, "gpt2")}}, 'architecture "gpt2" is not supported'),
        ({"drop_meta": ["general.architecture"]}, "general.architecture is missing"),
        ({"drop": ["blk.0.ffn_up.weight"]}, "tensor blk.0.ffn_up.weight is missing"),
        ({"meta": {"llama.embedding_length": (4, 64)}}, "shape"),
        ({"meta": {"llama.attention.head_count": (4, 3)}}, "inconsistent hyperparameters"),
        ({"drop_meta": ["tokenizer.ggml.tokens"]}, "vocab"),
        ({"meta": {"tokenizer.ggml.tokens": (9, (8, ["a", "b"]))}}, ""),
    ],
)
def test_inconsistent_models_are_refused(tmp_path: Path, changes: dict, match: str) -> None:
    path = edit_model(tmp_path, "edited.gguf", **changes)
    with pytest.raises(llama_rs.ModelError, match=match) as e:
        llama_rs.Model(path)
    assert str(path) in str(e.value)


def test_unknown_tensor_type_is_named(tmp_path: Path) -> None:
    path = small_model(tmp_path)
    data = bytearray(path.read_bytes())
    # The first tensor info's type field: patch Q4_0 (2) into IQ2_XXS (16, a type no family
    # implements) where it stands.
    r = gguf.GGUFReader(str(path))
    t = r.tensors[0]
    type_field = t.field.parts[-2]
    assert int(type_field[0]) in (0, 2)
    offset = type_field.ctypes.data - r.data.ctypes.data
    data[offset : offset + 4] = (16).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(llama_rs.ModelError, match="IQ2_XXS"):
        llama_rs.Model(path)


CORRUPTION_SCRIPT = textwrap.dedent("""
    import random, sys
    import llama_rs
    src, dst = sys.argv[1], sys.argv[2]
    data = open(src, "rb").read()
    outcomes = {"error": 0, "loaded": 0}
    def attempt(blob):
        open(dst, "wb").write(blob)
        try:
            m = llama_rs.Model(dst, n_ctx=8)
        except (llama_rs.ModelError, ValueError) as e:
            assert str(e), "empty message"
            outcomes["error"] += 1
            return
        outcomes["loaded"] += 1
        # A file that loads must also run (garbage weights may give garbage, never a crash).
        try:
            m.complete([1, 3, 4], max_tokens=2, temp=0)
        except ValueError:
            pass
    # Every truncation point of the header, then a stride through the data.
    header_end = int(sys.argv[3])
    points = list(range(0, header_end + 64)) + list(range(header_end + 64, len(data), 97))
    for n in points:
        attempt(data[:n])
    rng = random.Random(int(sys.argv[4]))
    for _ in range(int(sys.argv[5])):
        blob = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(blob), header_end + 256)) if rng.random() < 0.8 else rng.randrange(len(blob))
            blob[i] = rng.randrange(256)
        attempt(bytes(blob))
    print(outcomes)
""")


def test_truncated_and_corrupted_files_never_crash(tmp_path: Path) -> None:
    """Property: every truncation and random byte flips give an exception or a valid load.
    Runs in a child process so that a crash would show up as a failure here."""
    path = small_model(tmp_path)
    header_end = gguf.GGUFReader(str(path)).data_offset
    script = tmp_path / "corrupt.py"
    script.write_text(CORRUPTION_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(tmp_path / "bad.gguf"), str(header_end), "1234", "1500"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'error'" in proc.stdout and "'loaded'" in proc.stdout
