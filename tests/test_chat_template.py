"""Chat messages -> prompt: the model's GGUF chat template when present, else a plain transcript."""

from __future__ import annotations

import pytest

from llama_rs.server.chat import render_chat

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Joke?"},
]

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
