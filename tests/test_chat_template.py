"""Chat messages -> prompt: the model's GGUF chat template when present, else LLaMA-2 style."""

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


def test_default_llama2_style() -> None:
    assert render_chat(MSGS, None) == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. [INST] Joke? [/INST]"
    assert render_chat([{"role": "user", "content": "Hi"}], None) == "[INST] Hi [/INST]"


def test_the_models_template_is_used() -> None:
    out = render_chat(MSGS, CHATML)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nJoke?<|im_end|>\n<|im_start|>assistant\n")


def test_template_errors_and_sandbox() -> None:
    with pytest.raises(ValueError, match="chat template failed: roles must alternate"):
        render_chat(MSGS, "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="chat template failed"):
        render_chat(MSGS, "{{ ''.__class__.__mro__[1].__subclasses__() }}")  # the sandbox refuses
