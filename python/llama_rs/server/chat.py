"""Chat messages -> one prompt string: the model's own template (GGUF `tokenizer.chat_template`,
a Jinja template, rendered in a sandbox) when it has one, else a LLaMA-2-style default.

Special tokens are not spelled out as text (`<s>`, `</s>` would be tokenized as plain
characters): the engine adds BOS itself, and turns are separated by the [INST] markers."""

from __future__ import annotations

from typing import Optional

DEFAULT_TEMPLATE_DOC = "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} [INST] {user} [/INST]"


def render_default(messages: list[dict]) -> str:
    system = "\n".join(m.get("content") or "" for m in messages if m["role"] == "system")
    out: list[str] = []
    first_user = True
    for m in messages:
        content = (m.get("content") or "").strip()
        if m["role"] == "user":
            if first_user and system:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            first_user = False
            out.append(f"[INST] {content} [/INST]")
        elif m["role"] == "assistant":
            out.append(f" {content} ")
    return "".join(out).rstrip() if out and messages[-1]["role"] != "user" else "".join(out)


def render_chat(messages: list[dict], template: Optional[str]) -> str:
    if template:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str):
            raise ValueError(msg)

        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="",
                                                    eos_token="")
        except Exception as e:  # a broken template in a file should not take the endpoint down
            raise ValueError(f"the model's chat template failed: {e}") from None
    return render_default(messages)
