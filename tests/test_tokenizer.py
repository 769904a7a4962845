"""Tokenizer against sentencepiece and llama.cpp's own test vectors."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

import llama_rs

from conftest import need_data

CORPUS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    " \n \t ",
    "Hello world",
    " Hello world",
    "Hello  world",
    "  leading and trailing  ",
    "ASCII punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "Café, naïve, façade, Ærøskøbing, Straße",
    "日本語のテキストと中文字符",
    "한국어 텍스트",
    "emoji 🦙🔥👍🏽 and flags 🇫🇷",
    "digits 0123456789 3.14159 1,000,000",
    "tabs\tin\tthe\tmiddle",
    "line one\nline two\r\nline three",
    "byte fallback: \u0001\u007f\u200b\ufeff \U0001f9ec",
    "<s> and </s> are text here, <unk> too",
    "Never trust a computer you can't throw out a window.",
    "   multiple   runs    of     spaces   ",
    "ied 4 ½ months",
    "Führer",
    "\u00a0non-breaking\u2009thin",
    "Привет, мир",
    "مرحبا بالعالم",
    "x" * 300,
    "▁ already a meta space ▁▁",
]


def sp_vocab_gguf(model: Path, out: Path) -> Path:
    """A vocab-only GGUF holding a sentencepiece model's pieces, scores, types and its
    whitespace rules (what a converter carries over)."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([int(p.type) for p in proto.pieces])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


SP_MODELS = ["llama-tokenizer.model", "fortunes-1M/tokenizer.model", "tok512-other.model"]


@pytest.fixture(scope="module", params=SP_MODELS)
def pair(request, tmp_path_factory) -> tuple[spm.SentencePieceProcessor, llama_rs.Tokenizer]:
    models = need_data(request.param)
    src = models / request.param
    out = sp_vocab_gguf(src, tmp_path_factory.mktemp("vocab") / "vocab.gguf")
    return spm.SentencePieceProcessor(model_file=str(src)), llama_rs.Tokenizer(out)


def test_corpus_equals_sentencepiece(pair) -> None:
    sp, ours = pair
    for text in CORPUS:
        assert ours.encode(text) == sp.encode(text), repr(text)
        assert ours.encode(text, bos=True) == [sp.bos_id()] + sp.encode(text), repr(text)
        ids = sp.encode(text)
        assert ours.decode(ids) == sp.decode(ids), repr(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60))
def test_generated_strings_equal_sentencepiece(pair, text: str) -> None:
    sp, ours = pair
    ids = ours.encode(text)
    assert ids == sp.encode(text)
    assert ours.decode(ids) == sp.decode(ids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(min_value=0, max_value=511), max_size=40))
def test_decoding_any_ids_equals_sentencepiece(pair, ids: list[int]) -> None:
    sp, ours = pair
    if sp.id_to_piece(0) == "<unk>" and sp.decode([0]) != " \u2047 ":
        # tok512-other.model's unk_surface is a broken literal ("\\342\\201\\207"); GGUF
        # does not store unk_surface, so we decode unk as sentencepiece's default " ⁇ ".
        ids = [i for i in ids if i != 0]
    assert ours.decode(ids) == sp.decode(ids)


def test_decode_round_trips_on_identity_models() -> None:
    models = need_data("llama-tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(models / "llama-tokenizer.model"))
    tok = llama_rs.Tokenizer(models / "ggml-vocab-llama-spm.gguf")
    for text in CORPUS:
        if text.startswith(" ") or "▁" in text:
            continue  # a leading space is dropped on decode, and ▁ reads as a space, as in sentencepiece
        assert tok.decode(tok.encode(text)) == text == sp.decode(sp.encode(text))


def test_llama_cpp_vectors() -> None:
    models = need_data("ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-spm.gguf.inp", "ggml-vocab-llama-spm.gguf.out")
    texts = (models / "ggml-vocab-llama-spm.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = (models / "ggml-vocab-llama-spm.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(expected) > 30
    tok = llama_rs.Tokenizer(models / "ggml-vocab-llama-spm.gguf")
    for text, line in zip(texts, expected):
        assert tok.encode(text) == [int(x) for x in line.split()], repr(text)


def test_stream_decoder_never_splits_a_character() -> None:
    models = need_data("llama-tokenizer.model")
    tok = llama_rs.Tokenizer(models / "ggml-vocab-llama-spm.gguf")
    text = "Llamas 🦙 love 日本語 and Ærø 🇫🇷!"
    ids = tok.encode(text)
    pieces = tok._tok.stream_decode(ids)
    assert "".join(pieces) == tok.decode(ids) == text
    for p in pieces:
        p.encode("utf-8")  # a lone surrogate or replacement would show a split character
        assert "\ufffd" not in p
    assert any(p == "" for p in pieces), "the emoji's byte tokens should be held until complete"


def test_model_tokenize_uses_the_file_vocab() -> None:
    m = llama_rs.Model.demo()
    models = need_data("fortunes-1M/tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(models / "fortunes-1M" / "tokenizer.model"))
    for text in CORPUS:
        assert m.tokenize(text, bos=False) == sp.encode(text)
    assert m.tokenize("The meaning of life is") == [1, 374, 423, 274, 283, 292, 666, 306]
    assert m.detokenize(m.tokenize("Never trust a computer")) == "Never trust a computer"


def test_control_tokens_parsed_only_when_asked() -> None:
    """llama.cpp's parse_special for SentencePiece: `<s>` / `</s>` in the text are those tokens
    only when asked; the text after one gets the space prefix again."""
    models = need_data("llama-tokenizer.model", "ggml-vocab-llama-spm.gguf")
    sp = spm.SentencePieceProcessor(model_file=str(models / "llama-tokenizer.model"))
    tok = llama_rs.Tokenizer(models / "ggml-vocab-llama-spm.gguf")
    text = "<s>[INST] hello</s>world"
    assert tok.encode(text) == sp.encode(text)
    assert 1 not in tok.encode(text) and 2 not in tok.encode(text)
    assert tok.encode(text, special=True) == [1, *sp.encode("[INST] hello"), 2, *sp.encode("world")]
    assert tok.encode(text, bos=True, special=True)[:2] == [1, 1]
    assert tok.decode(tok.encode(text, special=True)) == "[INST] hello world"
    assert tok.eog_tokens == [2] and tok.model == "llama"
