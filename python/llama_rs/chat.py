"""Chat messages -> one prompt string: the model's own template (GGUF `tokenizer.chat_template`,
a Jinja template, rendered in a sandbox) when it has one, else a plain transcript.

The transcript (`User: ...` / `Assistant: ...` lines, ending with `Assistant:`) is what a
base model without chat training continues sensibly; the `\\nUser:` stop string keeps it
from writing the user's next turn too. `messages` are dicts with `role` and `content` (text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def check_messages(messages: Any) -> list[dict]:
    """`[{"role": ..., "content": text}]` as plain dicts, or a ValueError naming the message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLE_NAMES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLE_NAMES)}, got {role!r}")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be text, got {type(content).__name__}")
        out.append({"role": role, "content": content or ""})
    return out


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    #: Stop strings the format needs (added to the request's own).
    stop: tuple[str, ...] = ()


def render_transcript(messages: list[dict]) -> ChatPrompt:
    lines = [f"{ROLE_NAMES[m['role']]}: {(m.get('content') or '').strip()}" for m in messages]
    lines.append("Assistant:")
    return ChatPrompt("\n".join(lines), stop=("\nUser:", "\nSystem:"))


def render_chat(messages: list[dict], template: Optional[str], bos_token: str = "", eos_token: str = "") -> ChatPrompt:
    """`messages` (checked by `check_messages`) as the prompt for a model with `template`;
    `bos_token` / `eos_token` are the texts of the model's BOS and EOS (templates write
    them: Mistral's `</s>` after each answer, Llama 2's `<s>` before each turn)."""
    if not template:
        return render_transcript(messages)
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg: str):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    try:
        # The control tokens the template writes are parsed by `Model.chat_tokens`.
        return ChatPrompt(
            env.from_string(template).render(
                messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
            )
        )
    except Exception as e:  # a broken template in a file should not take the endpoint down
        raise ValueError(f"the model's chat template failed: {e}") from None
