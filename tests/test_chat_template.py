"""Chat messages -> prompt: the model's GGUF chat template when present, else a plain transcript."""

from __future__ import annotations

import pytest

import llama_rs

from llama_rs.chat import check_messages, render_chat

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Joke?"},
]


@pytest.fixture(scope="module")
def demo() -> llama_rs.Model:
    return llama_rs.Model.demo(n_ctx=256)


# A ChatML-style template of the kind GGUF files carry in tokenizer.chat_template.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_default_is_a_transcript_a_base_model_continues() -> None:
    p = render_chat(MSGS, None)
    assert p.text == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Joke?\nAssistant:"
    assert "\nUser:" in p.stop  # the model must not write the user's next turn
    assert render_chat([{"role": "developer", "content": " x "}], None).text == "System: x\nAssistant:"


def test_the_models_template_is_used() -> None:
    out = render_chat(MSGS, CHATML)
    assert out.stop == ()
    assert out.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nJoke?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_errors_and_sandbox() -> None:
    with pytest.raises(ValueError, match="chat template failed: roles must alternate"):
        render_chat(MSGS, "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="chat template failed"):
        render_chat(MSGS, "{{ ''.__class__.__mro__[1].__subclasses__() }}")  # the sandbox refuses


def test_messages_are_checked() -> None:
    assert check_messages([{"role": "user", "content": None}]) == [{"role": "user", "content": ""}]
    for bad, needle in [
        ([], "non-empty"),
        ("hi", "non-empty"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([{"role": "user", "content": 5}], "content must be text"),
        (["hi"], "dict"),
    ]:
        with pytest.raises(ValueError, match=needle):
            check_messages(bad)


def test_model_chat_is_the_transcript_continued(demo) -> None:
    msgs = [{"role": "user", "content": "Tell me a fortune."}]
    r = demo.chat(msgs, max_tokens=30, seed=2)
    want = demo.complete("User: Tell me a fortune.\nAssistant:", max_tokens=30, seed=2, stop=["\nUser:", "\nSystem:"])
    assert r == want and r.text.strip()
    assert "".join(demo.chat_stream(msgs, max_tokens=30, seed=2)) == want.text
    with pytest.raises(ValueError, match="role"):
        demo.chat([{"role": "robot", "content": "x"}])


# Mistral-7B-Instruct-v0.3's chat template (its tokenizer_config.json; the tool-call branches
# are left out: these messages have none). The system message joins the last user turn, as
# mistral-common's v3 instruct encoding does.
MISTRAL_V3 = (
    '{%- if messages[0]["role"] == "system" %}'
    '{%- set system_message = messages[0]["content"] %}{%- set loop_messages = messages[1:] %}'
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- set ns = namespace() %}{%- set ns.index = 0 %}"
    "{%- for message in loop_messages %}"
    '{%- if (message["role"] == "user") != (ns.index % 2 == 0) %}'
    '{{- raise_exception("After the optional system message, conversation roles must alternate '
    'user/assistant/user/assistant/...") }}'
    "{%- endif %}{%- set ns.index = ns.index + 1 %}{%- endfor %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    '{%- if message["role"] == "user" %}'
    "{%- if loop.last and system_message is defined %}"
    '{{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}'
    '{%- else %}{{- "[INST] " + message["content"] + "[/INST]" }}{%- endif %}'
    '{%- elif message["role"] == "assistant" %}'
    '{{- " " + message["content"]|trim + eos_token}}'
    "{%- else %}"
    '{{- raise_exception("Only user and assistant roles are supported, with the exception of an '
    'initial optional system message!") }}'
    "{%- endif %}{%- endfor %}"
)


def mistral_v3_model(tmp_path) -> tuple[llama_rs.Model, object]:
    """A 1-layer random model with mistral-common's v3 SentencePiece vocab (its [INST],
    [/INST] and tool tokens are control tokens), written by our converter, carrying the
    v0.3 template; and mistral-common's tokenizer of the same file."""
    import os
    from pathlib import Path

    import numpy as np

    try:
        import mistral_common
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    except ImportError as e:
        if os.environ.get("LLAMA_RS_REQUIRE_DATA") == "1":
            pytest.fail(f"mistral-common is not importable ({e}) (LLAMA_RS_REQUIRE_DATA=1)")
        pytest.skip(f"mistral-common is not importable ({e})")
    from llama_rs.convert.vocab import load_vocab
    from llama_rs.convert.writer import Hparams, Plan, Tensor, expected_shapes, write_gguf

    path = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    v = load_vocab(path)
    h = Hparams(name="tiny-mistral-v3", context_length=512, dim=16, n_layer=1, n_head=2, n_head_kv=1, ffn=32, eps=1e-5)
    rng = np.random.default_rng(0)
    out = tmp_path / "mistral-v3.gguf"
    tensors = [
        Tensor(name, shape, lambda a=rng.standard_normal(shape).astype(np.float32): a, source=out)
        for name, shape in expected_shapes(h, len(v), with_output=True).items()
    ]
    write_gguf(Plan(h, v, tensors, [], out, chat_templates={"": MISTRAL_V3}), out, "f32")
    return llama_rs.Model(out, n_ctx=512), MistralTokenizer.from_file(str(path))


MISTRAL_CHATS = [
    [{"role": "user", "content": "Hello!"}],
    MSGS,
    [
        {"role": "user", "content": "What is 2+2?"},
        # (Answers without surrounding spaces: the template trims them, mistral-common not.)
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Ünïcödé 🦙 and [brackets] typed by a user"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "  spaces  around\tand\nnewlines "},
    ],
]


def test_mistral_v3_chat_ids_equal_mistral_common(tmp_path) -> None:
    """The v0.3 template rendered by `Model.chat_tokens` gives mistral-common's instruct
    encoding: one BOS, [INST]/[/INST] as their control ids, `</s>` after each answer."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    m, mt = mistral_v3_model(tmp_path)
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    inst, end_inst = m.tokenize("[INST]", bos=False, special=True), m.tokenize("[/INST]", bos=False, special=True)
    assert (inst, end_inst) == ([3], [4])
    for messages in MISTRAL_CHATS:
        req = ChatCompletionRequest(messages=[kinds[x["role"]](content=x["content"]) for x in messages])
        want = mt.encode_chat_completion(req).tokens
        got, _ = m.chat_tokens(messages)
        assert got == want, messages
        assert got.count(1) == 1 and got.count(3) == sum(x["role"] == "user" for x in messages)
