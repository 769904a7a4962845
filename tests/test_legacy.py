"""Pre-GGUF files (ggml, ggmf v1, ggjt v1-v3, multi-part): the real files written by the
original tools give the expected greedy ids; files written here give the logits of the same
weights in GGUF, bit for bit; bad files give one-line errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import llama_rs
from conftest import MODELS, need_data
from reference import Shape, random_weights, synthetic_vocab, write_model
from test_real_models import greedy_agreement

LEGACY = (
    json.loads((MODELS / "expected.json").read_text()).get("legacy", {}) if (MODELS / "expected.json").exists() else {}
)


def kv_of(case: dict) -> str:
    """llama.cpp (f16 KV cache) is the referee for the quantized files, f32 references for
    the f16 files (both kv types reproduce all ids for the f16 files)."""
    return "f16" if "q4_0" in case["file"] else "f32"


@pytest.mark.parametrize("name", list(LEGACY) or ["expected.json missing"])
def test_real_legacy_files_give_expected_ids(name: str) -> None:
    case = LEGACY.get(name, {})
    models = need_data("expected.json", case.get("file", "expected.json"))
    m = llama_rs.Model(models / case["file"], n_ctx=64, n_threads=2, kv_type=kv_of(case))
    assert m.config["rms_eps"] == pytest.approx(case["rms_eps"])
    assert m.metadata["legacy.n_parts"] == case["parts"]
    assert m.tokenize(case["prompt"]) == case["prompt_ids"]
    agree, got = greedy_agreement(m, case)
    assert agree == len(case["continuation"]), f"{name}: {agree} agree: {got}"
    assert m.detokenize(got).strip() == case["text"].strip()
    # With the defaults (f16 cache) at least must_match agree.
    default = llama_rs.Model(models / case["file"], n_ctx=64)
    assert greedy_agreement(default, case)[0] >= case["must_match"]


# -- legacy files written here ----------------------------------------------------------

SHAPE = Shape(dim=64, n_layer=2, n_head=4, n_head_kv=4, ffn=192, vocab=300, eps=1e-6)
N_MULT = 32
MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
RAW = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}
META = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
LAYER = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
}


def meta_name(n: str) -> str:
    if n in META:
        return META[n]
    _, i, part, _ = n.split(".")
    return f"layers.{i}.{LAYER[part]}.weight"


def legacy_blocks(q: np.ndarray, wtype: str, fmt: str, version: int) -> bytes:
    """Today's blocks (from gguf) in the block layout of a legacy format: f32 scales before
    ggjt v3, and the old nibble order (weights 2j, 2j+1 in byte j) before ggjt v2."""
    if fmt == "ggjt" and version >= 3:
        return q.tobytes()
    size, nsc = {"Q4_0": (18, 1), "Q4_1": (20, 2), "Q8_0": (34, 1)}[wtype]
    b = q.reshape(-1, size)
    scales = b[:, : 2 * nsc].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2 * nsc :]
    if wtype != "Q8_0" and not (fmt == "ggjt" and version == 2):
        vals = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # weights 0..31 in order
        qs = (vals[:, 0::2] | (vals[:, 1::2] << 4)).astype(np.uint8)
    return np.concatenate([scales.view(np.uint8), qs], axis=1).tobytes()


def write_legacy(path: Path, w: dict[str, np.ndarray], wtype: str, fmt: str, version: int, parts: int) -> None:
    tokens, scores, _ = synthetic_vocab(SHAPE.vocab)
    ftype = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}[wtype]
    for p in range(parts):
        out = bytearray(struct.pack("<I", MAGIC[fmt]))
        if fmt != "ggml":
            out += struct.pack("<I", version)
        out += struct.pack("<7i", SHAPE.vocab, SHAPE.dim, N_MULT, SHAPE.n_head, SHAPE.n_layer, SHAPE.head_dim, ftype)
        for i, t in enumerate(tokens):
            text = " \u2047 ".encode() if i == 0 else b"" if i < 3 else t.replace("\u2581", " ").encode()
            out += struct.pack("<i", len(text)) + text
            if fmt != "ggml":
                out += struct.pack("<f", scores[i])
        for name, a in w.items():
            mname = meta_name(name)
            if a.ndim == 2 and parts > 1:
                by_cols = any(s in mname for s in ("tok_embeddings", ".attention.wo.", ".feed_forward.w2."))
                a = np.split(a, parts, axis=1 if by_cols else 0)[p]
            ty = "F32" if a.ndim == 1 else wtype
            if ty == "F32":
                data = a.astype(np.float32).tobytes()
            elif ty == "F16":
                data = a.astype(np.float16).tobytes()
            else:
                data = legacy_blocks(gguf.quants.quantize(np.ascontiguousarray(a), getattr(QT, ty)), ty, fmt, version)
            nb = mname.encode()
            out += struct.pack("<3i", a.ndim, len(nb), RAW[ty]) + struct.pack(f"<{a.ndim}i", *a.shape[::-1]) + nb
            if fmt == "ggjt":
                out += b"\0" * (-len(out) % 32)
            out += data
        (path if p == 0 else Path(f"{path}.{p}")).write_bytes(bytes(out))


VARIANTS = [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return random_weights(SHAPE, seed=11)


# q8_0 appeared with ggjt: the older formats never held it.
COMBINATIONS = [
    (w, f, v)
    for w in ["F32", "F16", "Q4_0", "Q4_1", "Q8_0"]
    for f, v in VARIANTS
    if not (w == "Q8_0" and f in ("ggml", "ggmf"))
]


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("wtype,fmt,version", COMBINATIONS)
def test_written_legacy_equals_gguf(tmp_path, weights, wtype, fmt, version, parts) -> None:
    write_model(tmp_path / "ref.gguf", SHAPE, weights, wtype)
    write_legacy(tmp_path / "m.bin", weights, wtype, fmt, version, parts)
    ids = [1, 7, 42, 299, 3, 150, 8]
    ref = llama_rs.Model(tmp_path / "ref.gguf", n_ctx=16, n_threads=2).eval(ids, all_logits=True)
    leg = llama_rs.Model(tmp_path / "m.bin", n_ctx=16, n_threads=2)
    assert leg.metadata["legacy.n_parts"] == parts
    np.testing.assert_array_equal(leg.eval(ids, all_logits=True), ref)


def test_bad_legacy_files(tmp_path, weights) -> None:
    write_legacy(tmp_path / "m.bin", weights, "F16", "ggmf", 1, 2)
    data = (tmp_path / "m.bin").read_bytes()
    # A missing part.
    part1 = (tmp_path / "m.bin.1").read_bytes()
    (tmp_path / "m.bin.1").unlink()
    with pytest.raises(llama_rs.ModelError, match=r"m\.bin\.1: part 2 of 2 is missing"):
        llama_rs.Model(tmp_path / "m.bin")
    # An inconsistent part (another model's header).
    other = bytearray(part1)
    other[16:20] = struct.pack("<i", 64)  # n_mult
    (tmp_path / "m.bin.1").write_bytes(bytes(other))
    with pytest.raises(llama_rs.ModelError, match=r"m\.bin\.1: header differs"):
        llama_rs.Model(tmp_path / "m.bin")
    (tmp_path / "m.bin.1").write_bytes(part1[:-10])
    with pytest.raises(llama_rs.ModelError, match=r"m\.bin\.1: .*truncated"):
        llama_rs.Model(tmp_path / "m.bin")
    (tmp_path / "m.bin.1").write_bytes(part1)
    with pytest.raises(llama_rs.ModelError, match="later part"):
        llama_rs.Model(tmp_path / "m.bin.1")
    # Unsupported versions.
    for magic, version in ((MAGIC["ggmf"], 2), (MAGIC["ggjt"], 4)):
        bad = tmp_path / f"v{version}.bin"
        bad.write_bytes(struct.pack("<II", magic, version) + data[8:])
        with pytest.raises(llama_rs.ModelError, match=rf"v{version}\.bin: unsupported legacy file version"):
            llama_rs.Model(bad)
    # Every truncation of a single-part file is an error, never a crash.
    write_legacy(tmp_path / "s.bin", weights, "Q4_0", "ggjt", 1, 1)
    full = (tmp_path / "s.bin").read_bytes()
    for n in list(range(0, 64)) + list(range(64, len(full), 997)):
        (tmp_path / "t.bin").write_bytes(full[:n])
        with pytest.raises(llama_rs.ModelError, match=r"t\.bin"):
            llama_rs.Model(tmp_path / "t.bin")
    # Hostile counts do not allocate.
    hostile = bytearray(full)
    hostile[8:12] = struct.pack("<i", 2**31 - 1)
    (tmp_path / "h.bin").write_bytes(bytes(hostile))
    with pytest.raises(llama_rs.ModelError, match=r"h\.bin"):
        llama_rs.Model(tmp_path / "h.bin")
