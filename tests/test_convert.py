"""`llama-rs convert`: Meta, Hugging Face and llama2.c checkpoints to GGUF, checked against
torch's reference forward, transformers' logits, and the real checkpoints' expected ids."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import llama_rs
from llama_rs.convert import convert
from llama_rs_cli.convert import convert as convert_command

from conftest import MODELS, need_data
from convert_helpers import hf_logits, random_hf_llama, save_hf_bin, train_tokenizer, write_meta
from reference import Shape, random_weights, reference_logits

ROOT = Path(__file__).resolve().parents[1]
IDS = [1, 17, 250, 3, 99, 42, 7, 300, 120, 64, 5, 2, 200]


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tok", vocab_size=320)


SHAPE = Shape(dim=64, n_layer=2, n_head=4, n_head_kv=2, ffn=96, vocab=320, eps=1e-5, rope_base=10000.0)


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return random_weights(SHAPE, seed=3)


@pytest.fixture(scope="module")
def meta_dirs(tmp_path_factory, tokenizer, weights) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("meta")
    return {n: write_meta(root / f"tiny-{n}part", SHAPE, weights, n, tokenizer) for n in (1, 2)}


def cli(*args) -> "typer.testing.Result":
    """The convert command as the app registers it (the full app is exercised in a subprocess)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("convert")(convert_command)
    return CliRunner().invoke(app, ["convert", *map(str, args)])


def engine_logits(path: Path, ids=IDS) -> np.ndarray:
    m = llama_rs.Model(path, n_ctx=64, n_threads=2, kv_type="f32")
    return m.eval(ids, all_logits=True)


def greedy(m: llama_rs.Model, prompt: list[int], n: int) -> list[int]:
    got, logits = [], m.eval(prompt)
    for _ in range(n):
        t = int(np.argmax(logits))
        got.append(t)
        if t == m.eos_token:
            break
        logits = m.eval([t])
    return got


# -- 1. Meta layout, 1 and 2 parts, vs the torch reference ------------------------------
@pytest.mark.parametrize("n_parts", [1, 2])
def test_meta_layout_matches_torch_reference(meta_dirs, weights, tmp_path, n_parts) -> None:
    src = meta_dirs[n_parts]
    ref = reference_logits(SHAPE, weights, IDS)
    scale = np.abs(ref).max()

    out32 = tmp_path / "f32.gguf"
    s = convert(src, out32, "f32")
    assert s.tensors == 2 + 9 * SHAPE.n_layer + 1 and s.parameters == sum(w.size for w in weights.values())
    got = engine_logits(out32)
    assert np.abs(got - ref).max() < 2e-5 * max(1.0, scale), np.abs(got - ref).max()  # measured 9e-7

    out16 = tmp_path / "f16.gguf"
    convert(src, out16, "f16")
    got16 = engine_logits(out16)
    # Exactly the reference on the F16-rounded matrices ...
    w16 = {k: (v.astype(np.float16) if v.ndim == 2 else v).astype(np.float64) for k, v in weights.items()}
    ref16 = reference_logits(SHAPE, w16, IDS)
    assert np.abs(got16 - ref16).max() < 2e-5 * max(1.0, scale)  # measured 1.2e-6
    # ... and within F16 rounding of the F32 weights' logits.
    assert np.abs(got16 - ref).max() < 5e-3 * max(1.0, scale), np.abs(got16 - ref).max()  # measured 1.9e-3
    assert out16.stat().st_size < 0.6 * out32.stat().st_size


def test_meta_two_parts_equal_one_part(meta_dirs, tmp_path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(meta_dirs[1], a, "f16")
    convert(meta_dirs[2], b, "f16")
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    for ta, tb in zip(ra.tensors, rb.tensors):
        assert np.array_equal(ta.data, tb.data), ta.name


# -- 2. Hugging Face: safetensors (single, sharded), .bin (single, sharded) -------------
HF_CASES = {
    "safetensors": lambda m, d: m.save_pretrained(d),
    "safetensors-sharded": lambda m, d: m.save_pretrained(d, max_shard_size="60KB"),
    "bin": lambda m, d: save_hf_bin(m, d),
    "bin-sharded": lambda m, d: save_hf_bin(m, d, shards=3),
}


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_llama(vocab=320, seed=1)


@pytest.mark.parametrize("case", HF_CASES)
def test_hugging_face_matches_transformers(hf_model, tokenizer, tmp_path, case) -> None:
    src = tmp_path / "hf"
    HF_CASES[case](hf_model, src)
    shutil.copy(tokenizer, src / "tokenizer.model")
    if case == "safetensors-sharded":
        assert len(list(src.glob("model-*-of-*.safetensors"))) > 2
    out = tmp_path / "hf.gguf"
    convert(src, out, "f32")
    want = hf_logits(hf_model, IDS)
    got = engine_logits(out)
    assert np.abs(got - want).max() < 2e-5 * max(1.0, np.abs(want).max()), np.abs(got - want).max()  # measured 1.2e-6
    md = llama_rs.Model(out, n_ctx=8).metadata
    assert md["llama.attention.head_count_kv"] == 2 and md["llama.attention.head_count"] == 4
    assert md["llama.rope.freq_base"] == pytest.approx(5000.0)
    assert md["llama.context_length"] == 96
    assert md["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)


def test_hugging_face_tied_embeddings(tokenizer, tmp_path) -> None:
    model = random_hf_llama(vocab=320, seed=2, tie=True, rope_theta=10000.0)
    src = tmp_path / "hf"
    model.save_pretrained(src)
    shutil.copy(tokenizer, src / "tokenizer.model")
    out = tmp_path / "tied.gguf"
    convert(src, out, "f32")
    assert "output.weight" not in [t.name for t in gguf.GGUFReader(out).tensors]
    want = hf_logits(model, IDS)
    assert np.abs(engine_logits(out) - want).max() < 2e-5 * max(1.0, np.abs(want).max())


# -- 3. Real checkpoints -----------------------------------------------------------------
def expected_cases() -> dict:
    return json.loads((MODELS / "expected.json").read_text())["greedy"]


def test_real_meta_checkpoint_fortunes(tmp_path) -> None:
    models = need_data("expected.json", "fortunes-1M/consolidated.00.pth")
    out = tmp_path / "fortunes-f32.gguf"
    r = cli(models / "fortunes-1M", "-o", out, "--outtype", "f32")
    assert r.exit_code == 0, r.output
    assert "39 tensors" in r.output and "1,000,576 parameters" in r.output
    m = llama_rs.Model(out, n_ctx=256, n_threads=2, kv_type="f32")
    cases = {k: c for k, c in expected_cases().items() if c["file"] == "fortunes-1M-f32.gguf"}
    assert len(cases) == 3
    for name, c in cases.items():
        m.reset()
        assert m.tokenize(c["prompt"]) == c["prompt_ids"]
        assert greedy(m, c["prompt_ids"], len(c["continuation"])) == c["continuation"], name


def test_real_llama2c_checkpoint_stories(tmp_path) -> None:
    models = need_data("expected.json", "stories260K.bin", "tok512-other.model")
    out = tmp_path / "stories.gguf"
    r = cli(models / "stories260K.bin", "--vocab", models / "tok512-other.model", "-o", out, "--outtype", "f32")
    assert r.exit_code == 0, r.output
    c = expected_cases()["stories260K"]
    m = llama_rs.Model(out, n_ctx=256, n_threads=2, kv_type="f32")
    assert m.config["n_head_kv"] == 4 and m.config["n_head"] == 8
    assert greedy(m, c["prompt_ids"], len(c["continuation"])) == c["continuation"]


def test_seed_positional_form_through_the_app(tmp_path) -> None:
    """`llama-rs convert models/7B/ 1` (the seed's form): F16 into the folder by default."""
    models = need_data("fortunes-1M/consolidated.00.pth")
    src = tmp_path / "7B"
    shutil.copytree(models / "fortunes-1M", src)
    from llama_rs_cli.app import app

    r = CliRunner().invoke(app, ["convert", str(src), "1"])
    assert r.exit_code == 0, r.output
    out = src / "ggml-model-f16.gguf"
    assert str(out) in r.output
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].parts[-1][0] == 1
    demo = llama_rs.Model.demo(kv_type="f32")
    ours = llama_rs.Model(out, n_ctx=256, kv_type="f32")
    assert (
        ours.complete("Never trust a computer", max_tokens=30, temp=0).text
        == demo.complete("Never trust a computer", max_tokens=30, temp=0).text
    )


# -- 4. Metadata -------------------------------------------------------------------------
DESIGN_KEYS = [
    "general.architecture",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.rope.dimension_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "general.file_type",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
]


def field(r: gguf.GGUFReader, key: str):
    return r.fields[key].contents()


def test_metadata_keys_and_gguf_reader(meta_dirs, tokenizer, tmp_path) -> None:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    out = tmp_path / "m.gguf"
    convert(meta_dirs[2], out)  # default f16
    r = gguf.GGUFReader(out)
    for k in DESIGN_KEYS:
        assert k in r.fields, k
    assert field(r, "general.architecture") == "llama"
    assert field(r, "llama.context_length") == 128
    assert field(r, "llama.embedding_length") == 64 and field(r, "llama.block_count") == 2
    assert field(r, "llama.feed_forward_length") == 96 and field(r, "llama.rope.dimension_count") == 16
    assert field(r, "llama.attention.head_count") == 4 and field(r, "llama.attention.head_count_kv") == 2
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(r, "general.file_type") == 1
    proto = pb.ModelProto()
    proto.ParseFromString(tokenizer.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    assert field(r, "tokenizer.ggml.tokens") == [p.piece for p in proto.pieces]
    assert np.allclose(field(r, "tokenizer.ggml.scores"), [p.score for p in proto.pieces])
    assert field(r, "tokenizer.ggml.token_type") == [int(p.type) for p in proto.pieces]
    assert (
        field(r, "tokenizer.ggml.bos_token_id"),
        field(r, "tokenizer.ggml.eos_token_id"),
        field(r, "tokenizer.ggml.unknown_token_id"),
    ) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert field(r, "tokenizer.ggml.add_space_prefix") == proto.normalizer_spec.add_dummy_prefix
    assert field(r, "tokenizer.ggml.remove_extra_whitespaces") == proto.normalizer_spec.remove_extra_whitespaces
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert r.alignment == 32 and all(t.data_offset % 32 == 0 for t in r.tensors)
    # The embedded vocab tokenizes as the sentencepiece model does.
    m = llama_rs.Model(out, n_ctx=32)
    for text in ["the quick brown llama", " never  trust\ta computer ", "ünïcödé 🦙"]:
        assert m.tokenize(text, bos=False) == sp.encode(text), text


def test_real_vocab_metadata(tmp_path) -> None:
    models = need_data("fortunes-1M/consolidated.00.pth")
    out = tmp_path / "f.gguf"
    convert(models / "fortunes-1M", out)
    r = gguf.GGUFReader(out)
    ref = gguf.GGUFReader(models / "fortunes-1M-f32.gguf")  # llama.cpp's converter
    assert field(r, "llama.context_length") == 256  # params.json's max_seq_len (llama.cpp wrote 4096)
    for k in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "llama.attention.head_count_kv",
        "llama.feed_forward_length",
        "llama.rope.dimension_count",
        "llama.attention.layer_norm_rms_epsilon",
    ]:
        assert field(r, k) == field(ref, k), k
    assert np.allclose(field(r, "tokenizer.ggml.scores"), field(ref, "tokenizer.ggml.scores"))


# -- 5. Bad input --------------------------------------------------------------------------
def assert_fails(args: list, names: Path | str, *words: str, folder: Path | None = None) -> str:
    before = set(folder.iterdir()) if folder is not None else None
    r = cli(*args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert str(names) in lines[0], (names, lines[0])
    for w in words:
        assert w in lines[0], (w, lines[0])
    if folder is not None:
        assert set(folder.iterdir()) == before, "files left behind"
    return lines[0]


@pytest.fixture
def meta1(tmp_path, meta_dirs) -> Path:
    d = tmp_path / "m1"
    shutil.copytree(meta_dirs[1], d)
    return d


@pytest.fixture
def meta2(tmp_path, meta_dirs) -> Path:
    d = tmp_path / "m2"
    shutil.copytree(meta_dirs[2], d)
    return d


@pytest.fixture
def hf_sharded(tmp_path, hf_model, tokenizer) -> Path:
    d = tmp_path / "hf"
    hf_model.save_pretrained(d, max_shard_size="60KB")
    shutil.copy(tokenizer, d / "tokenizer.model")
    return d


def test_bad_missing_params_json(meta1, tmp_path) -> None:
    (meta1 / "params.json").unlink()
    assert_fails([meta1, "-o", tmp_path / "o.gguf"], meta1 / "params.json", "missing", folder=tmp_path)


def test_bad_missing_config_json(hf_sharded, tmp_path) -> None:
    (hf_sharded / "config.json").unlink()
    assert_fails([hf_sharded, "-o", tmp_path / "o.gguf"], hf_sharded / "config.json", "missing", folder=tmp_path)


def test_bad_missing_tokenizer(meta1, hf_sharded, tmp_path) -> None:
    (meta1 / "tokenizer.model").unlink()
    assert_fails([meta1, "-o", tmp_path / "o.gguf"], meta1 / "tokenizer.model", "missing", folder=tmp_path)
    (hf_sharded / "tokenizer.model").unlink()
    assert_fails([hf_sharded, "-o", tmp_path / "o.gguf"], hf_sharded / "tokenizer.model", "missing", folder=tmp_path)
    bin_ = need_data("stories260K.bin") / "stories260K.bin"
    assert_fails([bin_, "-o", tmp_path / "o.gguf"], bin_, "--vocab", folder=tmp_path)


def test_bad_missing_shard(meta2, hf_sharded, tmp_path) -> None:
    # A gap in the numbering names the missing part ...
    (meta2 / "consolidated.01.pth").rename(meta2 / "consolidated.02.pth")
    assert_fails([meta2, "-o", tmp_path / "o.gguf"], meta2 / "consolidated.01.pth", "missing", folder=tmp_path)
    # ... and a missing last part shows in the shapes against params.json.
    (meta2 / "consolidated.02.pth").unlink()
    assert_fails(
        [meta2, "-o", tmp_path / "o.gguf"], meta2 / "consolidated.00.pth", "part is missing or extra", folder=tmp_path
    )
    shard = sorted(hf_sharded.glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    assert_fails([hf_sharded, "-o", tmp_path / "o.gguf"], shard, "missing shard", folder=tmp_path)


def test_bad_extra_shard(meta2, hf_sharded, tmp_path) -> None:
    shutil.copy(meta2 / "consolidated.01.pth", meta2 / "consolidated.02.pth")
    assert_fails(
        [meta2, "-o", tmp_path / "o.gguf"], meta2 / "consolidated.00.pth", "part is missing or extra", folder=tmp_path
    )
    shards = sorted(hf_sharded.glob("model-*-of-*.safetensors"))
    extra = hf_sharded / "model-00099-of-00099.safetensors"
    shutil.copy(shards[0], extra)
    assert_fails([hf_sharded, "-o", tmp_path / "o.gguf"], extra, "extra shard", folder=tmp_path)


def test_bad_parts_disagree_in_shape(meta2, tmp_path) -> None:
    p1 = meta2 / "consolidated.01.pth"
    sd = torch.load(p1, weights_only=True)
    sd["layers.1.attention.wq.weight"] = torch.zeros(32, 48)  # part 0 has [32, 64]
    torch.save(sd, p1)
    assert_fails([meta2, "-o", tmp_path / "o.gguf"], p1, "layers.1.attention.wq.weight", "disagree", folder=tmp_path)
    sd = torch.load(p1, weights_only=True)
    sd["layers.1.attention.wq.weight"] = torch.zeros(32, 64)
    sd["norm.weight"] = torch.ones(65)
    torch.save(sd, p1)
    assert_fails([meta2, "-o", tmp_path / "o.gguf"], p1, "norm.weight", "disagree", folder=tmp_path)


def test_bad_architecture(hf_sharded, tmp_path) -> None:
    cfg = json.loads((hf_sharded / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (hf_sharded / "config.json").write_text(json.dumps(cfg))
    assert_fails(
        [hf_sharded, "-o", tmp_path / "o.gguf"],
        hf_sharded / "config.json",
        "GPT2LMHeadModel",
        "not LLaMA",
        folder=tmp_path,
    )


def test_bad_unexpected_tensor_name_or_shape(meta1, tmp_path) -> None:
    p = meta1 / "consolidated.00.pth"
    sd = torch.load(p, weights_only=True)
    torch.save({**sd, "layers.0.attention.wq.bias": torch.zeros(64)}, p)
    assert_fails([meta1, "-o", tmp_path / "o.gguf"], p, "unexpected tensor layers.0.attention.wq.bias", folder=tmp_path)
    torch.save({**sd, "layers.1.feed_forward.w2.weight": torch.zeros(64, 90)}, p)
    assert_fails(
        [meta1, "-o", tmp_path / "o.gguf"],
        p,
        "layers.1.feed_forward.w2.weight",
        "[64, 90]",
        "expected [64, 96]",
        folder=tmp_path,
    )
    sd.pop("layers.1.ffn_norm.weight")
    torch.save(sd, p)
    assert_fails(
        [meta1, "-o", tmp_path / "o.gguf"], meta1 / "params.json", "blk.1.ffn_norm.weight is missing", folder=tmp_path
    )


def test_bad_vocab_size(meta1, tmp_path) -> None:
    other = train_tokenizer(tmp_path / "other", vocab_size=300)
    shutil.copy(other, meta1 / "tokenizer.model")
    assert_fails(
        [meta1, "-o", tmp_path / "o.gguf"], meta1 / "tokenizer.model", "300 pieces", "320 rows", folder=tmp_path
    )


def test_bad_llama2c_file(tmp_path) -> None:
    models = need_data("stories260K.bin", "tok512-other.model")
    bad = tmp_path / "cut.bin"
    bad.write_bytes((models / "stories260K.bin").read_bytes()[:-100])
    assert_fails(
        [bad, "--vocab", models / "tok512-other.model", "-o", tmp_path / "o.gguf"], bad, "truncated", folder=tmp_path
    )
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 64)
    assert_fails(
        [junk, "--vocab", models / "tok512-other.model", "-o", tmp_path / "o.gguf"],
        junk,
        "not a llama2.c checkpoint",
        folder=tmp_path,
    )


def test_bad_output_exists_or_is_an_input(meta1, tmp_path) -> None:
    out = tmp_path / "o.gguf"
    out.write_bytes(b"keep me")
    assert_fails([meta1, "-o", out], out, "already exists", "--force", folder=tmp_path)
    assert out.read_bytes() == b"keep me"
    part = meta1 / "consolidated.00.pth"
    size = part.stat().st_size
    assert_fails([meta1, "-o", part, "--force"], part, "input", folder=meta1)
    assert_fails([meta1, "-o", meta1 / "tokenizer.model", "--force"], meta1 / "tokenizer.model", "input", folder=meta1)
    assert part.stat().st_size == size
    r = cli(meta1, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert gguf.GGUFReader(out).tensors


def test_bad_source_paths(tmp_path) -> None:
    assert_fails(
        [tmp_path / "nowhere", "-o", tmp_path / "o.gguf"], tmp_path / "nowhere", "no such file", folder=tmp_path
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails([empty, "-o", tmp_path / "o.gguf"], empty, "no checkpoint found", folder=tmp_path)


def test_failure_while_writing_leaves_no_temp_file(meta1, tmp_path, monkeypatch) -> None:
    """A failure (or Ctrl+C) halfway through the tensors removes the partial file."""
    import llama_rs.convert.writer as writer

    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    seen = []

    def boom(files):
        seen.append(files)
        assert writer.temp_path(out).exists()  # the partial file is being written
        if len(seen) == 5:
            raise exc

    monkeypatch.setattr(writer, "drop_mapped_pages", boom)
    for exc in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        seen.clear()
        with pytest.raises(type(exc)):
            convert(meta1, out)
        assert list(out.parent.iterdir()) == []


# -- torch stays out of the import path; missing torch says what to install -------------
def run_python(code: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def test_torch_not_imported_by_library_or_cli() -> None:
    r = run_python("""
        import sys
        import llama_rs, llama_rs.convert, llama_rs_cli.convert
        assert 'torch' not in sys.modules, 'library'
        from typer.testing import CliRunner
        from llama_rs_cli.app import app
        for args in (['--help'], ['convert', '--help']):
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
        assert 'torch' not in sys.modules, 'cli'
        print('ok')
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == 'torch' or name.startswith('torch.'):
                raise ImportError(f"No module named {name!r} (blocked)")
    sys.meta_path.insert(0, Block())
""")


def test_convert_without_torch_says_what_to_install(tmp_path) -> None:
    models = need_data("fortunes-1M/consolidated.00.pth")
    r = run_python(
        BLOCK_TORCH
        + textwrap.dedent("""
        sys.argv = ['llama-rs', 'convert', sys.argv[1], '-o', sys.argv[2]]
        from llama_rs_cli.app import main
        main()
    """),
        models / "fortunes-1M",
        tmp_path / "o.gguf",
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip() == "error: llama-rs convert needs torch, not installed: pip install 'llama-rs[convert]'"
    assert list(tmp_path.iterdir()) == []
    # Models still load and run without torch.
    r = run_python(
        BLOCK_TORCH
        + textwrap.dedent("""
        import llama_rs
        print(llama_rs.Model.demo().complete('Never', max_tokens=3, temp=0).tokens)
    """)
    )
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr


# -- 6. Peak memory ----------------------------------------------------------------------
MiB = 1 << 20

MEASURE = """
    import os, resource, sys
    from llama_rs.convert import convert, require_dependencies
    import llama_rs.convert.meta, llama_rs.convert.hf, llama_rs.convert.writer, gguf, torch, numpy, safetensors
    require_dependencies()
    args = sys.argv[1:]
    for src, out in zip(args[::2], args[1::2]):
        # Each conversion in a forked child: its ru_maxrss starts at the RSS it inherits (the
        # baseline, everything imported) and is its own from there on.
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            convert(src, out, "f16")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            hwm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
            os.write(wfd, f"{base} {peak} {hwm}".encode())
            os._exit(0)
        os.close(wfd)
        line = os.read(r, 200).decode()
        assert os.waitpid(pid, 0)[1] == 0
        print(line)
"""


HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def write_hf_safetensors(folder: Path, s: Shape, w: dict[str, np.ndarray], tokenizer: Path) -> Path:
    """A Hugging Face folder written without transformers (the weights are random anyway, so
    the q/k permutation does not matter here)."""
    from safetensors.torch import save_file

    folder.mkdir()
    sd = {}
    for name, a in w.items():
        if name.startswith("blk."):
            i, kind = name.split(".")[1:3]
            sd[f"model.layers.{i}.{HF_NAMES[kind]}.weight"] = torch.from_numpy(a)
        else:
            sd[HF_NAMES[name]] = torch.from_numpy(a)
    save_file(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": s.dim,
                "intermediate_size": s.ffn,
                "num_hidden_layers": s.n_layer,
                "num_attention_heads": s.n_head,
                "num_key_value_heads": s.n_head_kv,
                "vocab_size": s.vocab,
                "rms_norm_eps": s.eps,
                "max_position_embeddings": 128,
            }
        )
    )
    shutil.copy(tokenizer, folder / "tokenizer.model")
    return folder


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units and /proc are Linux's")
def test_peak_memory_stays_near_the_largest_tensor(tokenizer, tmp_path) -> None:
    """One layer whose three FFN matrices are 64 MiB each (F32: 256 x 65536), so each
    checkpoint (Meta .pth, HF safetensors) is ~193 MiB and the F16 output ~97 MiB.

    Bound on the growth of the peak RSS during a conversion, 160 MiB:
      64 MiB  the largest tensor's pages of the memory-mapped checkpoint, resident while it is
              read (given back with madvise after it is written),
    + 64 MiB  one converted copy of it (32 MiB as F16 here; at most its F32 size in general),
    + 32 MiB  everything else: the vocab, the small tensors, allocator and page-table slack.
    Holding the model instead (gguf's add_tensor + write_tensors_to_file) takes the mapped
    checkpoint plus the F16 copies, ~290 MiB; streaming but leaving the mapping resident
    takes ~230 MiB (measured with the page release switched off). Measured: ~100-115 MiB."""
    s = Shape(dim=256, n_layer=1, n_head=4, n_head_kv=4, ffn=65536, vocab=320)
    g = torch.Generator().manual_seed(0)
    w = {}
    for name, shape in [
        ("token_embd.weight", (320, 256)),
        ("output.weight", (320, 256)),
        ("blk.0.attn_q.weight", (256, 256)),
        ("blk.0.attn_k.weight", (256, 256)),
        ("blk.0.attn_v.weight", (256, 256)),
        ("blk.0.attn_output.weight", (256, 256)),
        ("blk.0.ffn_gate.weight", (65536, 256)),
        ("blk.0.ffn_up.weight", (65536, 256)),
        ("blk.0.ffn_down.weight", (256, 65536)),
    ]:
        w[name] = torch.randn(shape, generator=g).numpy()
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w[name] = np.ones(256, np.float32)
    assert w["blk.0.ffn_gate.weight"].nbytes == 64 * MiB
    meta = write_meta(tmp_path / "meta", s, w, 1, tokenizer)
    hf = write_hf_safetensors(tmp_path / "hf", s, w, tokenizer)
    del w
    checkpoints = {"meta": meta / "consolidated.00.pth", "hf-safetensors": hf / "model.safetensors"}
    outs = {k: tmp_path / f"{k}.gguf" for k in checkpoints}
    r = run_python(MEASURE, meta, outs["meta"], hf, outs["hf-safetensors"])
    assert r.returncode == 0, r.stderr
    for layout, line in zip(checkpoints, r.stdout.split("\n")):
        base, peak, hwm = map(int, line.split())
        assert abs(hwm - peak) < 8 * MiB  # getrusage agrees with the kernel's high-water mark
        growth = peak - base
        assert checkpoints[layout].stat().st_size > 190 * MiB and outs[layout].stat().st_size > 96 * MiB
        print(f"{layout}: peak RSS growth {growth / MiB:.0f} MiB (baseline {base / MiB:.0f} MiB)")
        assert growth < 160 * MiB, f"{layout}: peak RSS grew by {growth / MiB:.0f} MiB"


def test_progress_and_summary(meta_dirs, tmp_path) -> None:
    """The writer reports every tensor and its bytes (the CLI draws a rich bar from these on a
    terminal only: under CliRunner stderr is not a terminal and the output is the summary)."""
    events = []

    class Record:
        def start(self, n, nbytes):
            events.append(("start", n, nbytes))

        def advance(self, name, nbytes):
            events.append((name, nbytes))

    out = tmp_path / "p.gguf"
    s = convert(meta_dirs[2], out, "f16", progress=Record())
    assert events[0] == ("start", s.tensors, sum(e[1] for e in events[1:]))
    assert len(events) == 1 + s.tensors and events[1][0] == "token_embd.weight"
    assert s.bytes == out.stat().st_size > events[0][2]
    assert "tensors" in str(s) and "parameters" in str(s) and str(out) in str(s)
    r = cli(meta_dirs[1], "-o", tmp_path / "q.gguf")
    assert r.exit_code == 0, r.output
    size = (tmp_path / "q.gguf").stat().st_size
    pattern = rf"wrote {re.escape(str(tmp_path / 'q.gguf'))}: 21 tensors, {s.parameters:,} parameters, {size / 1024:.1f} KB, f16, [0-9.]+ s"
    assert re.fullmatch(pattern, r.output.strip()), r.output


def test_warns_about_a_normalizer_the_engine_does_not_apply(meta1, tmp_path) -> None:
    """sentencepiece's default nmt_nfkc normalizer is not LLaMA's (identity) and llama_rs does
    not apply it: the conversion works and says so on stderr."""
    train_tokenizer(tmp_path / "nfkc", vocab_size=320, normalizer="nmt_nfkc")
    shutil.copy(tmp_path / "nfkc.model", meta1 / "tokenizer.model")
    r = cli(meta1, "-o", tmp_path / "o.gguf")
    assert r.exit_code == 0, r.output
    assert f"warning: {meta1 / 'tokenizer.model'}: normalizer 'nmt_nfkc' is not applied" in r.output
