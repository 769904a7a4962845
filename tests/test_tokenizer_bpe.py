"""Byte-level BPE (Llama 3) against llama.cpp's test vectors, tiktoken with Meta's
`tokenizer.model`, and llama_models' own expected ids; the vocab is built by our converter."""

from __future__ import annotations

from collections.abc import Mapping

import os
import random
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llama_rs
from llama_rs.convert.bpe_vocab import read_hf_tokenizer, read_tiktoken
from llama_rs.convert.writer import write_vocab_gguf

from conftest import need_data


def need_module(name: str):
    """Import `name`; skip when it is missing (fail under LLAMA_RS_REQUIRE_DATA=1)."""
    try:
        return __import__(name)
    except ImportError:
        msg = f"the {name} package is not installed"
        if os.environ.get("LLAMA_RS_REQUIRE_DATA") == "1":
            pytest.fail(msg + " (LLAMA_RS_REQUIRE_DATA=1)")
        pytest.skip(msg)


def meta_tokenizer_model() -> Path:
    need_module("llama_models")
    import llama_models

    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.is_file():
        pytest.skip(f"{path} is not in this llama_models")
    return path


@pytest.fixture(scope="module")
def meta() -> "object":
    """llama_models' Llama 3 tokenizer (tiktoken inside)."""
    meta_tokenizer_model()
    need_module("tiktoken")
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    v = read_tiktoken(meta_tokenizer_model())
    return write_vocab_gguf(v, tmp_path_factory.mktemp("llama3") / "llama3-vocab.gguf")


@pytest.fixture(scope="module")
def tok(vocab_file) -> llama_rs.Tokenizer:
    return llama_rs.Tokenizer(vocab_file)


def tiktoken_ids(meta, text: str) -> list[int]:
    return meta.model.encode(text, allowed_special=set(), disallowed_special=())


def test_converted_vocab_is_llama3s(vocab_file) -> None:
    r = gguf.GGUFReader(vocab_file)

    def field(k):
        f = r.fields[k]
        return f.contents()

    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "llama-bpe"
    assert len(field("tokenizer.ggml.tokens")) == 128256
    # The merges as Meta-Llama-3's tokenizer.json has them (280147 lines; its first ones).
    merges = field("tokenizer.ggml.merges")
    assert len(merges) == 280147
    assert merges[:4] == ["Ġ Ġ", "Ġ ĠĠĠ", "ĠĠ ĠĠ", "ĠĠĠ Ġ"]
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (128000, 128001)
    assert field("tokenizer.ggml.eot_token_id") == 128009
    types = field("tokenizer.ggml.token_type")
    assert set(types[:128000]) == {1} and set(types[128000:]) == {3}


def test_llama_cpp_vectors(tok) -> None:
    models = need_data("ggml-vocab-llama-bpe.gguf.inp", "ggml-vocab-llama-bpe.gguf.out")
    texts = (models / "ggml-vocab-llama-bpe.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = (models / "ggml-vocab-llama-bpe.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(expected) > 40
    for text, line in zip(texts, expected):
        assert tok.encode(text) == [int(x) for x in line.split()], repr(text)


# Characters chosen to hit every branch of Llama 3's pre-tokenizer regex and the byte mapping.
PIECES = [
    *"aAzZ09 \t\n\r'.,;:!?-_()[]{}<>|/\\\"#$%&*+=@^`~",
    *["  ", "   ", "\r\n", " \n", "\n\n", "\t\t", "'s", "'S", "'LL", "'Re", "'VE", "'d", "'M", "'t", "'x"],
    *["ſ", "ǅ", "Ⅻ", "٣", "²", "½", "日本", "語", "中文字符", "한국어", "Привет", "مرحبا", "Ærø", "Straße"],
    *["😀", "🦙", "👍🏽", "🇫🇷", "👨‍👩‍👧", "\U0001f9ec", "\u00a0", "\u3000", "\u2009", "\u200b", "\u2028"],
    *["é", "e\u0301", "İ", "Ω", "ﬁ", "\ufeff", "\x00", "\x7f", "\x85", "１２３", "1234567", "𝟘𝟙", "0x1F"],
    *[" the", " quick", "brown", " fox", "HELLO", "don't", "I'M", "3.14159", "1,000,000", "<|eot_id|>"],
    *["<s>", "</s>", "<|begin_of_text|>", "[INST]", "\u00ad", "\ud7ff", "\ue000", "\uffff", "\U0010ffff"],
]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_random_texts_equal_tiktoken(tok, meta) -> None:
    for text in random_texts(3000, seed=1):
        assert tok.encode(text) == tiktoken_ids(meta, text), repr(text)


def test_long_runs_equal_tiktoken(tok, meta) -> None:
    """Long words (the heap merge), long whitespace runs and digit runs."""
    texts = [
        "a" * 5000,
        "ab" * 3000,
        " " * 3000 + "x",
        "\t " * 1000 + "\n" * 7 + " y",
        "7" * 1001,
        "🦙" * 700,
        "".join(random.Random(3).choice("abcdefghij") for _ in range(20000)),
        "x" + "\u0301" * 2000,
    ]
    for text in texts:
        assert tok.encode(text) == tiktoken_ids(meta, text), repr(text[:40])


def test_fortunes_heldout_equals_tiktoken(tok, meta) -> None:
    """Real English prose (quotes, tabs, blank lines): every line, each with its newline, and
    the whole file at once (where whitespace runs across lines meet the look-ahead)."""
    text = (need_data("fortunes-heldout.txt") / "fortunes-heldout.txt").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    assert len(lines) > 1000
    for line in lines:
        assert tok.encode(line) == tiktoken_ids(meta, line), repr(line)
    ids = tok.encode(text)
    assert ids == tiktoken_ids(meta, text)
    assert tok.decode(ids) == text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80))
def test_generated_strings_equal_tiktoken(tok, meta, text: str) -> None:
    ids = tok.encode(text)
    assert ids == tiktoken_ids(meta, text)
    assert tok.decode(ids) == text


def test_llama_models_expected_ids(tok) -> None:
    """The ids of llama_models' own tests (llama3/tests/api/test_tokenizer.py)."""
    assert tok.encode("This is a test sentence.", bos=True) == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert tok.decode([128000, 2028, 374, 264, 1296, 11914, 13, 128001]) == "This is a test sentence."
    header = "<|start_header_id|>user<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>"
    assert tok.encode(header, special=True) == [128006, 882, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009]
    dialog = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThis is a response.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.encode(dialog, special=True) == [
        *[128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009],
        *[128006, 882, 128007, 271, 2028, 374, 264, 2077, 13, 128009],
        *[128006, 78191, 128007, 271],
    ]


def test_special_tokens_only_when_asked(tok, meta) -> None:
    text = "<|begin_of_text|>Hi<|eot_id|> <|reserved_special_token_250|>"
    plain = tok.encode(text)
    assert not any(i >= 128000 for i in plain)
    assert plain == tiktoken_ids(meta, text)
    assert tok.encode(text, special=True) == meta.model.encode(text, allowed_special="all")
    assert tok.encode(text, special=True)[0] == 128000
    two = "<|reserved_special_token_2|><|reserved_special_token_25|>"
    assert tok.encode(two, special=True) == [meta.special_tokens[t] for t in two.replace("><", ">\0<").split("\0")]
    assert tok.eog_tokens == [128001, 128008, 128009]


def test_decode_round_trip_and_control_tokens(tok, meta) -> None:
    for text in random_texts(500, seed=2):
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("<|start_header_id|>user<|end_header_id|>\n\nHi", special=True)
    assert tok.decode(ids) == "user\n\nHi"  # control tokens decode to nothing


def test_stream_decoder_joins_split_characters(tok) -> None:
    text = "Llamas 🦙🦙 like 👨‍👩‍👧 and 日本語!"
    ids = tok.encode(text)
    # Some emoji are split across tokens: their partial bytes are held back.
    assert any(len(tok._tok.decode([i]).encode()) and "\ufffd" in tok._tok.decode([i]) for i in ids)
    pieces = tok._tok.stream_decode(ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces


def test_tokenizer_properties(tok) -> None:
    assert tok.model == "gpt2"
    assert tok.n_vocab == 128256
    assert (tok.bos_token, tok.eos_token) == (128000, 128001)
    assert tok.piece(128009) == "<|eot_id|>"
    assert tok.piece(220) == "Ġ"


def bpe_vocab_file(
    path: Path, pre: str | None, model: str = "gpt2", merges: "list[str] | tuple[str, ...] | None" = ("a b",)
) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b", "ab"])
    if merges is not None:
        w.add_token_merges(list(merges))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unknown_pre_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(llama_rs.ModelError, match='tokenizer.ggml.pre = "qwen2" is not supported'):
        llama_rs.Tokenizer(bpe_vocab_file(tmp_path / "v.gguf", "qwen2"))
    with pytest.raises(llama_rs.ModelError, match='tokenizer model "t5" is not supported'):
        llama_rs.Tokenizer(bpe_vocab_file(tmp_path / "w.gguf", None, model="t5"))
    t = llama_rs.Tokenizer(bpe_vocab_file(tmp_path / "x.gguf", None))  # no pre: GPT-2's
    assert t.encode("abab a") == [2, 2, 0] and t.bos_token is None


def test_missing_or_bad_merges_are_clear_errors(tmp_path) -> None:
    with pytest.raises(llama_rs.ModelError, match=r"has no merges \(tokenizer.ggml.merges\)"):
        llama_rs.Tokenizer(bpe_vocab_file(tmp_path / "v.gguf", "llama-bpe", merges=None))
    for merges, bad in [(["a b", "a c"], '"c"'), (["a b", "b a"], '"ba"')]:
        with pytest.raises(llama_rs.ModelError) as e:
            llama_rs.Tokenizer(bpe_vocab_file(tmp_path / "w.gguf", "llama-bpe", merges=merges))
        assert f"merge 1 ({merges[1]!r}) names {bad}, which is not a token of the vocab".replace("'", '"') in str(
            e.value
        )


def test_hf_tokenizer_json_equals_tiktoken_vocab(tmp_path, meta) -> None:
    """A Hugging Face tokenizer.json, written by transformers' own tiktoken converter from
    Meta's file, gives the same vocab as our tiktoken reader, and the same ids through the
    `tokenizers` library as ours."""
    need_module("transformers")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = list(meta.special_tokens)
    hf = TikTokenConverter(vocab_file=str(meta_tokenizer_model()), extra_special_tokens=specials).converted()
    hf.save(str(tmp_path / "tokenizer.json"))
    v = read_hf_tokenizer(tmp_path)
    w = read_tiktoken(meta_tokenizer_model())
    assert (v.tokens, v.types, v.merges, v.pre) == (w.tokens, w.types, w.merges, w.pre)
    assert (v.bos, v.eos, v.eot, v.eom) == (w.bos, w.eos, w.eot, w.eom)
    ours = llama_rs.Tokenizer(write_vocab_gguf(v, tmp_path / "hf.gguf"))
    for text in random_texts(300, seed=4):
        # `tokenizers` always matches added tokens in text: our special=True.
        assert ours.encode(text, special=True) == hf.encode(text, add_special_tokens=False).ids, repr(text)


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory) -> llama_rs.Model:
    """A 1-layer random model with Meta's Llama 3 vocab, written by our converter's writer."""
    import numpy as np

    from llama_rs.convert.writer import LAYER_TENSORS, Hparams, Plan, Tensor, expected_shapes, write_gguf

    v = read_tiktoken(meta_tokenizer_model())
    h = Hparams(name="tiny-llama3", context_length=64, dim=16, n_layer=1, n_head=2, n_head_kv=1, ffn=32, eps=1e-5)
    assert LAYER_TENSORS
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("llama3-model") / "tiny.gguf"
    tensors = []
    for name, shape in expected_shapes(h, len(v), with_output=True).items():
        a = rng.standard_normal(shape).astype(np.float32) * 0.5
        tensors.append(Tensor(name, shape, lambda a=a: a, source=out))
    write_gguf(Plan(h, v, tensors, [], out), out, "f32")
    return llama_rs.Model(out, n_ctx=64, seed=1)


@pytest.mark.parametrize("name", ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"])
def test_end_of_generation_tokens_stop_generation(llama3_model, name) -> None:
    m = llama3_model
    eog = m.tokenize(name, bos=False, special=True)
    assert len(eog) == 1
    # Forced first: nothing is generated and nothing printed.
    c = m.complete("Hello", max_tokens=8, temp=0, logit_bias={eog[0]: 100})
    assert (c.text, c.tokens, c.finish_reason) == ("", 0, "eos")
    # Forced to a normal token instead: it is printed, and generation runs to max_tokens.
    gen = m.generate("Hello", max_tokens=8, temp=0, logit_bias={13347: 100})
    assert next(gen) == "Hi"
    c = m.complete("Hello", max_tokens=8, temp=0, logit_bias={13347: 100})
    assert (c.text, c.finish_reason) == ("Hi" * 8, "length")


def test_model_tokenize_parses_special_only_when_asked(llama3_model) -> None:
    m = llama3_model
    assert m.tokenize("Hi", bos=True) == [128000, 13347]
    assert m.tokenize("<|eot_id|>", bos=False) != [128009]
    assert m.tokenize("<|eot_id|>", bos=False, special=True) == [128009]
    assert m.detokenize([128000, 13347, 128009]) == "Hi"


def test_chat_template_control_tokens_are_parsed(llama3_model, monkeypatch) -> None:
    """A chat template's control tokens reach the model as tokens, not text."""
    m = llama3_model
    template = (
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
        "{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    monkeypatch.setitem(m.__dict__, "chat_template", template)
    gen = m.chat_stream([{"role": "user", "content": "This is a test sentence."}], max_tokens=1, temp=0)
    list(gen)
    assert gen.prompt_tokens == 1 + 11 + 4  # BOS, the user turn (llama_models' ids), the header


# Meta-Llama-3-8B-Instruct's chat template (its tokenizer_config.json).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def test_llama3_chat_ids_equal_transformers(tmp_path, meta) -> None:
    """The Llama 3 template rendered by `Model.chat_tokens` gives the ids transformers'
    `apply_chat_template` gives, control tokens and the single BOS included."""
    need_module("transformers")
    import numpy as np
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from llama_rs.convert.writer import Hparams, Plan, Tensor, expected_shapes, write_gguf

    v = read_tiktoken(meta_tokenizer_model())
    h = Hparams(name="tiny-llama3-chat", context_length=256, dim=16, n_layer=1, n_head=2, n_head_kv=1, ffn=32, eps=1e-5)
    rng = np.random.default_rng(0)
    out = tmp_path / "chat.gguf"
    tensors = [
        Tensor(name, shape, lambda a=rng.standard_normal(shape).astype(np.float32): a, source=out)
        for name, shape in expected_shapes(h, len(v), with_output=True).items()
    ]
    write_gguf(Plan(h, v, tensors, [], out, chat_templates={"": LLAMA3_TEMPLATE}), out, "f32")
    m = llama_rs.Model(out, n_ctx=256)
    hf = TikTokenConverter(vocab_file=str(meta_tokenizer_model()), extra_special_tokens=list(meta.special_tokens))
    tok = PreTrainedTokenizerFast(tokenizer_object=hf.converted(), bos_token="<|begin_of_text|>")
    tok.chat_template = LLAMA3_TEMPLATE
    for messages in [
        [{"role": "user", "content": "Hello!"}],
        [
            {"role": "system", "content": "You are terse.  "},
            {"role": "user", "content": "What is 2+2?\n"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "Ünïcödé 🦙 and <|eot_id|> typed by a user"},
        ],
    ]:
        want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if isinstance(want, Mapping) else want  # a dict in transformers 5
        got, _ = m.chat_tokens(messages)
        assert got == list(want), messages
        assert got.count(128000) == 1
