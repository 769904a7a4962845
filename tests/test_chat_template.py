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
