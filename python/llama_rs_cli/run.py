"""`llama-rs run`: load a model once, then answer prompt after prompt (the seed's main job);
or generate once for a script (`-p TEXT`, or text piped on stdin)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

import typer

import llama_rs
from llama_rs.generation import DEFAULTS

from .common import (
    check_generation_options,
    errors_as_messages,
    fail,
    given,
    missing_model_hint,
    one_line,
    physical_cores,
    warn_if_beyond_training,
)

HELP = """\
Type a prompt; an empty line sends it (the prompt can span several lines).
  key=value ...   change parameters, e.g. `temp=0.2 top_k=10` (keys: {keys})
  /params         show the parameters
  /reset          empty the model's context cache
  /help           this text
  /quit           leave (also Ctrl+D, or Ctrl+C at an empty prompt)
Ctrl+C while text is being generated stops it and returns to the prompt."""


@dataclass
class Params:
    """The interactive prompt's parameters; the engine owns their ranges (check_generation)."""

    tokens: int = DEFAULTS.max_tokens
    temp: float = DEFAULTS.temp
    top_k: int = DEFAULTS.top_k
    top_p: float = DEFAULTS.top_p
    repeat_penalty: float = DEFAULTS.repeat_penalty
    repeat_lastn: int = DEFAULTS.repeat_lastn
    seed: int = -1  # DEFAULTS.seed (None): the model's seed, which -s sets; -1 is random

    def kwargs(self) -> dict:
        """The engine's generation arguments (`Model.generate`, `llama_rs.check_generation`)."""
        return dict(
            max_tokens=self.tokens,
            temp=self.temp,
            top_k=self.top_k,
            top_p=self.top_p,
            repeat_penalty=self.repeat_penalty,
            repeat_lastn=self.repeat_lastn,
            seed=None if self.seed < 0 else self.seed,
        )

    def update(self, line: str) -> str:
        """Apply `key=value ...`; returns the echo. Raises ValueError on a bad pair or a value
        the engine would refuse, and then changes nothing."""
        types = {f.name: f.type for f in fields(self)}
        changes, typed = {}, {}
        for pair in line.split():
            key, _, raw = pair.partition("=")
            key = {"n": "tokens", "n_predict": "tokens", "repeat_last_n": "repeat_lastn"}.get(key, key)
            if key not in types:
                raise ValueError(f"unknown parameter {key!r} (known: {', '.join(types)})")
            is_int = types[key] in ("int", int)
            try:
                changes[key] = int(raw) if is_int else float(raw)
            except ValueError:
                raise ValueError(f"{key} wants {'an integer' if is_int else 'a number'}, got {raw!r}") from None
            typed[key] = pair
        new = replace(self, **changes)
        try:
            llama_rs.check_generation(**new.kwargs())
        except llama_rs.ParamError as e:
            key = ENGINE_TO_KEY.get(e.param, e.param)
            raise ValueError(f"{typed.get(key, key)}: {one_line(str(e))}; parameters unchanged") from None
        for k, v in changes.items():
            setattr(self, k, v)
        return " ".join(f"{k}={v}" for k, v in changes.items())

    def show(self) -> str:
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())


# The engine's parameter names (ParamError.param) as the prompt's keys and as run's options.
ENGINE_TO_KEY = {"max_tokens": "tokens"}
OPTIONS = {
    "max_tokens": "'-n' / '--tokens'",
    "temp": "'--temp'",
    "top_k": "'--top-k'",
    "top_p": "'--top-p'",
    "repeat_penalty": "'--repeat-penalty'",
    "repeat_lastn": "'--repeat-last-n'",
    "seed": "'-s' / '--seed'",
}


def is_param_line(line: str) -> bool:
    parts = line.split()
    return (
        bool(parts)
        and all("=" in p and not p.startswith("=") and " " not in p for p in parts)
        and all(p.split("=", 1)[0].replace("_", "").isalnum() for p in parts)
    )


def count_parameters(c: dict) -> int:
    kv = c["dim"] // c["n_head"] * c["n_head_kv"]
    per_layer = 2 * c["dim"] * c["dim"] + 2 * c["dim"] * kv + 3 * c["dim"] * c["ffn_dim"] + 2 * c["dim"]
    return 2 * c["n_vocab"] * c["dim"] + c["n_layer"] * per_layer + c["dim"]


def human(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}T"


def banner(model: llama_rs.Model, load_s: float, demo: bool) -> str:
    c = model.config
    meta = model.metadata
    name = meta.get("general.name") or model.path.stem
    lines = [
        f"model    {name}{' (demo model shipped with llama-rs; pass -m for a real one)' if demo else ''}",
        f"file     {model.path}",
        f"shape    {human(count_parameters(c))} parameters, {c['n_layer']} layers, dim {c['dim']}, "
        f"{c['n_head']} heads ({c['n_head_kv']} KV), vocab {c['n_vocab']}",
        f"weights  {model._engine.file_type}",
        f"context  {model.n_ctx} tokens, {model.n_threads} threads, loaded in {load_s:.2f} s",
    ]
    return "\n".join(lines)


def stat_line(gen: llama_rs.Generation) -> str:
    pp = gen.prompt_tokens / gen.prompt_seconds if gen.prompt_seconds > 0 else 0.0
    tg = gen.tokens / gen.gen_seconds if gen.gen_seconds > 0 else 0.0
    return (
        f"[{gen.prompt_tokens} prompt tokens at {pp:.1f} tok/s, {gen.tokens} generated at {tg:.1f} tok/s, "
        f"{gen.finish_reason or 'stopped'}]"
    )


def dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stdout.isatty() else text


def read_prompt() -> Optional[str]:
    """Lines until an empty one; None on Ctrl+D / Ctrl+C at an empty prompt."""
    lines: list[str] = []
    while True:
        try:
            line = input(">>> " if not lines else "... ")
        except (EOFError, KeyboardInterrupt):
            if lines:  # Ctrl+D / Ctrl+C in the middle of a prompt drops the prompt
                print()
                lines = []
                continue
            print()
            return None
        if line == "":
            if lines:
                return "\n".join(lines)
            continue
        # Commands and parameter lines act at once, on the first line only.
        if not lines and (line.strip().startswith("/") or is_param_line(line)):
            return line.strip()
        lines.append(line)


def interactive(model: llama_rs.Model, params: Params, chat: bool = False) -> None:
    try:
        converse(model, params, chat)
    except KeyboardInterrupt:
        # Ctrl+C between two prompts (while a reply's stats print, before `>>> ` shows) ends
        # the session as it does at an empty prompt; during a reply, `converse` stops the reply.
        print()


def converse(model: llama_rs.Model, params: Params, chat: bool) -> None:
    what = "a message" if chat else "a prompt"
    print(dim(f"Type {what} and an empty line to send it; /help for commands."))
    history: list[dict] = []  # chat mode: the conversation so far
    while True:
        text = read_prompt()
        if text is None or text in ("/quit", "/exit", "/q"):
            return
        if text.startswith("/"):
            if text == "/help":
                print(HELP.format(keys=", ".join(f.name for f in fields(params))))
            elif text == "/params":
                print(params.show())
            elif text == "/reset":
                model.reset()
                history.clear()
                print("context cleared" + (" (and the conversation)" if chat else ""))
            else:
                print(f"unknown command {text}; /help lists them")
            continue
        if is_param_line(text):
            try:
                print(params.update(text))
            except ValueError as e:
                print(f"error: {e}")
            continue
        try:
            if chat:
                gen = model.chat_stream([*history, {"role": "user", "content": text}], **params.kwargs())
            else:
                gen = model.generate(text, **params.kwargs())
        except ValueError as e:
            print(f"error: {e}")
            continue
        reply = []
        try:
            for piece in gen:
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(dim(" [interrupted]"))
        if chat:  # what was shown is what the model said, interrupted or not
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(reply)}]
        print()
        print(dim(stat_line(gen)))


def run(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(
        None,
        "-m",
        "--model",
        help="GGUF model file. Default: the small demo model shipped with llama-rs.",
        show_default=False,
    ),
    prompt: Optional[str] = typer.Option(
        None, "-p", "--prompt", help="Generate once for this prompt, print, and exit (no interactive prompt)."
    ),
    ctx_size: int = typer.Option(
        512, "-c", "--ctx-size", min=1, help="Context size in tokens (prompt + generated text)."
    ),
    seed: int = typer.Option(-1, "-s", "--seed", help="Sampling seed; -1 picks a random one each time."),
    threads: Optional[int] = typer.Option(
        None, "-t", "--threads", min=1, help="Threads. Default: the number of physical cores.", show_default=False
    ),
    tokens: int = typer.Option(DEFAULTS.max_tokens, "-n", "--tokens", help="Maximum tokens to generate per prompt."),
    top_k: int = typer.Option(DEFAULTS.top_k, "--top-k", help="Sample from the k most likely tokens (0 = all)."),
    top_p: float = typer.Option(
        DEFAULTS.top_p, "--top-p", help="Sample from the smallest set of tokens whose probability reaches p, in (0, 1]."
    ),
    temp: float = typer.Option(DEFAULTS.temp, "--temp", help="Temperature; 0 = always the most likely token (greedy)."),
    repeat_penalty: float = typer.Option(
        DEFAULTS.repeat_penalty, "--repeat-penalty", help="Penalty for repeating recent tokens (1 = none)."
    ),
    repeat_last_n: int = typer.Option(
        DEFAULTS.repeat_lastn, "--repeat-last-n", help="How many recent tokens the repeat penalty looks at."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One-shot mode: print {prompt, text, tokens, finish_reason, timings} as JSON."
    ),
    chat: bool = typer.Option(
        False,
        "--chat",
        help="Chat: each prompt is a user message, answered in the model's chat format (its GGUF template, "
        "else a User:/Assistant: transcript), with the conversation kept until /reset.",
    ),
) -> None:
    """Chat with a model at an interactive prompt, or generate once with -p (or stdin)."""
    params = Params(
        tokens=tokens,
        temp=temp,
        top_k=top_k,
        top_p=top_p,
        repeat_penalty=repeat_penalty,
        repeat_lastn=repeat_last_n,
        seed=seed,
    )
    # Before reading stdin or loading the model: a bad value is a usage error (exit 2).
    check_generation_options(params.kwargs(), OPTIONS)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if prompt.endswith("\n"):
            prompt = prompt[:-1]
        if not prompt:
            fail("no prompt: stdin was empty (pass -p TEXT, or run in a terminal for the interactive prompt)")
    if as_json and prompt is None:
        fail("--json needs a prompt (-p TEXT or text on stdin)")
    if model is not None and not model.exists():
        fail(missing_model_hint(model))
    n_threads = threads or physical_cores()
    with errors_as_messages():
        t0 = time.perf_counter()
        if model is None:
            m = llama_rs.Model.demo(n_ctx=ctx_size, n_threads=n_threads, seed=seed)
        else:
            m = llama_rs.Model(model, n_ctx=ctx_size, n_threads=n_threads, seed=seed)
        load_s = time.perf_counter() - t0
        if given(ctx, "ctx_size"):
            warn_if_beyond_training(m, ctx_size)
        if prompt is not None:
            one_shot(m, prompt, params, as_json, load_s, chat)
            return
        print(banner(m, load_s, demo=model is None))
        interactive(m, params, chat)


def one_shot(m: llama_rs.Model, prompt: str, params: Params, as_json: bool, load_s: float, chat: bool) -> None:
    if chat:
        gen = m.chat_stream([{"role": "user", "content": prompt}], **params.kwargs())
    else:
        gen = m.generate(prompt, **params.kwargs())
    parts = []
    try:
        for piece in gen:
            parts.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        if not as_json:
            print()
        raise typer.Exit(130) from None
    if as_json:
        print(
            json.dumps(
                {
                    "prompt": prompt,
                    "text": "".join(parts),
                    "tokens": gen.tokens,
                    "finish_reason": gen.finish_reason,
                    "timings": {
                        "load_seconds": round(load_s, 4),
                        "prompt_tokens": gen.prompt_tokens,
                        "prompt_seconds": round(gen.prompt_seconds, 4),
                        "generated_seconds": round(gen.gen_seconds, 4),
                        "prompt_tokens_per_second": round(gen.prompt_tokens / gen.prompt_seconds, 2)
                        if gen.prompt_seconds
                        else None,
                        "generated_tokens_per_second": round(gen.tokens / gen.gen_seconds, 2)
                        if gen.gen_seconds
                        else None,
                    },
                },
                ensure_ascii=False,
            )
        )
    else:
        print()
        if sys.stderr.isatty():
            print(dim(stat_line(gen)), file=sys.stderr)
