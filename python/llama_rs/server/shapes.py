"""What a worker reports for one choice, and how OpenAI's responses spell it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

OPENAI_FINISH = {"length": "length", "context": "length", "eos": "stop", "stop": "stop"}


@dataclass
class Choice:
    """One generation as the worker streamed it (see protocol.py for the messages)."""

    index: int
    prompt_index: int = 0
    echo: str = ""
    echo_tokens: list[dict] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    tokens: list[dict] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)

    def add(self, msg: dict) -> None:
        if "echo" in msg:
            self.echo = msg["echo"]
            self.echo_tokens = msg.get("logprobs") or []
        elif "text" in msg:
            self.pieces.append(msg["text"])
            self.tokens.extend(msg.get("logprobs") or [])
        elif msg.get("done"):
            self.done = msg

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finish_reason(self) -> str:
        return OPENAI_FINISH[self.done["finish_reason"]]


def usage(choices: list[Choice]) -> dict:
    """Prompt tokens once per prompt (choices of one prompt share it), completions summed;
    `prompt_tokens_details.cached_tokens` (OpenAI's field): the prompt tokens taken from the
    prefix cache, once per prompt (those every choice of it reused)."""
    per_prompt = {c.prompt_index: c.done.get("prompt_tokens", 0) for c in choices}
    cached: dict[int, int] = {}
    for c in choices:
        n = c.done.get("cached_tokens", 0)
        cached[c.prompt_index] = min(cached.get(c.prompt_index, n), n)
    prompt = sum(per_prompt.values())
    completion = sum(c.done.get("tokens", 0) for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(cached.values())},
    }


def token_text(t: dict) -> str:
    return bytes(t["bytes"]).decode("utf-8", errors="replace")


def chat_logprobs(tokens: list[dict]) -> Optional[dict]:
    def top(t: dict) -> list[dict]:
        return [
            {"token": bytes(b).decode("utf-8", errors="replace"), "logprob": lp, "bytes": b}
            for _, b, lp in t["top"] or []
        ]

    return {
        "content": [
            {"token": token_text(t), "logprob": t["logprob"], "bytes": t["bytes"], "top_logprobs": top(t)}
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: list[dict], offset: int) -> dict:
    """OpenAI's legacy shape; `offset` is where the first token starts in prompt + text."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        text = token_text(t)
        out["tokens"].append(text)
        out["token_logprobs"].append(t["logprob"])
        out["top_logprobs"].append(
            None if t["top"] is None else {bytes(b).decode("utf-8", errors="replace"): lp for _, b, lp in t["top"]}
        )
        out["text_offset"].append(offset)
        offset += len(text)
    return out
