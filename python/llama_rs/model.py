"""The Python face of the engine: `Model` loads a GGUF file and generates text.

Everything numeric happens in Rust (`llama_rs._core`); this module only shapes arguments
and results. The GIL is released while the engine computes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from . import _core

FinishReason = Literal["length", "eos", "stop", "context"]

DEMO_MODEL = "fortunes-1M.gguf"


@dataclass(frozen=True)
class Completion:
    """The result of `Model.complete`."""

    text: str
    #: Number of tokens generated (EOS not counted).
    tokens: int
    #: Number of tokens in the prompt, BOS included.
    prompt_tokens: int
    #: Why generation ended: max_tokens reached, end-of-sequence token, a stop string, or
    #: the context (n_ctx) full.
    finish_reason: FinishReason


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Model:
    """A LLaMA-family model loaded from a GGUF file, with its own KV cache.

    Args:
        path: the ``.gguf`` file. Weights are memory-mapped, not copied.
        n_ctx: context length in tokens (prompt plus generated text).
        n_threads: worker threads for the matrix products (default: the CPUs available).
        seed: default seed for sampling; -1 draws a fresh seed for every generation.
        kv_type: how the KV cache stores keys and values: "f16" (llama.cpp's default: half
            the memory, same results as llama.cpp) or "f32" (full precision).

    Raises:
        ModelError: the file is missing, unreadable, or not a model llama_rs can run.
        ValueError: a bad argument (n_ctx < 1, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_ctx: int = 512,
        n_threads: int | None = None,
        seed: int = -1,
        kv_type: Literal["f16", "f32"] = "f16",
    ):
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
        threads = _default_threads() if n_threads is None else n_threads
        if threads < 1:
            raise ValueError(f"n_threads must be at least 1, got {threads}")
        self._engine = _core.Engine(Path(path), n_ctx, threads, seed, kv_type)

    @classmethod
    def demo(cls, n_ctx: int = 256, n_threads: int | None = None, seed: int = -1, kv_type: Literal["f16", "f32"] = "f16") -> "Model":
        """The demo model shipped inside the wheel: fortunes-1M, a 1M-parameter LLaMA trained
        on Debian's fortune cookies."""
        path = resources.files("llama_rs") / "data" / DEMO_MODEL
        with resources.as_file(path) as p:
            return cls(p, n_ctx=n_ctx, n_threads=n_threads, seed=seed, kv_type=kv_type)

    # -- facts ---------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Context length in tokens."""
        return self._engine.n_ctx

    @property
    def n_vocab(self) -> int:
        """Vocabulary size (rows of the logits)."""
        return self._engine.n_vocab

    @property
    def n_threads(self) -> int:
        return self._engine.n_threads

    @property
    def path(self) -> Path:
        return Path(self._engine.path)

    @property
    def metadata(self) -> dict[str, object]:
        """The file's GGUF metadata (arrays as lists)."""
        return self._engine.metadata()

    @property
    def config(self) -> dict[str, float | int]:
        """Hyperparameters: dim, n_layer, n_head, n_head_kv, ffn_dim, n_vocab, ..."""
        return self._engine.config()

    @property
    def bos_token(self) -> int | None:
        return self._engine.bos

    @property
    def eos_token(self) -> int | None:
        return self._engine.eos

    def __repr__(self) -> str:
        engine = getattr(self, "_engine", None)  # absent when __init__ failed
        return engine.__repr__() if engine is not None else "Model(<not loaded>)"

    # -- tokens --------------------------------------------------------------------------
    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of `text` (SentencePiece rules), with the BOS token first if `bos`."""
        return self._engine.tokenize(text, bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids; the leading space of the first piece is dropped, as SentencePiece does."""
        return self._engine.detokenize(list(ids))

    def token_piece(self, id: int) -> str | None:
        """The vocab piece of a token id (with ``▁`` for spaces), or None if out of range."""
        return self._engine.token_piece(id)

    # -- evaluation ----------------------------------------------------------------------
    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Evaluate `ids` after the tokens already in the KV cache.

        Returns the logits of the last position (shape ``[n_vocab]``), or of every new
        position (``[len(ids), n_vocab]``) when `all_logits`. Raises ValueError when the
        context would overflow or an id is outside the vocab.
        """
        data, rows = self._engine.eval(list(ids), all_logits)
        logits = np.frombuffer(data, dtype="<f4")
        return logits.reshape(rows, self.n_vocab) if all_logits else logits

    @property
    def n_past(self) -> int:
        """Number of tokens in the KV cache."""
        return self._engine.n_past()

    def reset(self) -> None:
        """Empty the KV cache."""
        self._engine.reset()

    # -- generation ----------------------------------------------------------------------
    def _start(self, prompt, max_tokens, top_k, top_p, temp, repeat_penalty, repeat_lastn, seed, stop) -> "Generation":
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(prompt, str):
            prompt = [int(t) for t in prompt]
        t0 = time.perf_counter()
        core = self._engine.start(
            prompt, int(max_tokens), int(top_k), float(top_p), float(temp), float(repeat_penalty),
            int(repeat_lastn), seed, list(stop),
        )
        return Generation(core, time.perf_counter() - t0)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        top_k: int = 40,
        top_p: float = 0.9,
        temp: float = 0.8,
        repeat_penalty: float = 1.3,
        repeat_lastn: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
    ) -> "Generation":
        """Generate text after `prompt`, yielding pieces as they are produced.

        `prompt` is text (tokenized with BOS) or a list of token ids. Sampling: repeat
        penalty over the last `repeat_lastn` tokens, then top-k (0 = all), top-p, then
        temperature; `temp <= 0` is greedy. `seed` None uses the model's seed. Generation
        ends after `max_tokens`, at the end-of-sequence token, before any of the `stop`
        strings, or when the context is full. The KV cache keeps the prompt's longest
        common prefix with the previous call, so a growing conversation is cheap.

        The prompt is evaluated before this returns; the returned `Generation` is an
        iterator of text pieces that also reports counts, the finish reason and timings.
        """
        return self._start(prompt, max_tokens, top_k, top_p, temp, repeat_penalty, repeat_lastn, seed, stop)

    def complete(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        top_k: int = 40,
        top_p: float = 0.9,
        temp: float = 0.8,
        repeat_penalty: float = 1.3,
        repeat_lastn: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
    ) -> Completion:
        """Like `generate`, but returns the whole text with counts and the finish reason.
        Ctrl+C interrupts it between tokens (KeyboardInterrupt)."""
        gen = self._start(prompt, max_tokens, top_k, top_p, temp, repeat_penalty, repeat_lastn, seed, stop)
        text = "".join(gen)
        return Completion(text=text, tokens=gen.tokens, prompt_tokens=gen.prompt_tokens, finish_reason=gen.finish_reason)


class Generation(Iterator[str]):
    """A generation in progress: iterate for text pieces (never half a UTF-8 character).

    `tokens`, `prompt_tokens` and `finish_reason` (None until it ends) describe it so far;
    `prompt_seconds` is the time taken by the prompt, `gen_seconds` by the tokens since.
    """

    def __init__(self, core, prompt_seconds: float):
        self._core = core
        self.prompt_seconds = prompt_seconds
        self.gen_seconds = 0.0

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        while True:
            t0 = time.perf_counter()
            piece = self._core.step()
            self.gen_seconds += time.perf_counter() - t0
            if piece is None:
                raise StopIteration
            if piece:
                return piece

    @property
    def tokens(self) -> int:
        """Tokens generated so far (EOS not counted)."""
        return self._core.generated

    @property
    def prompt_tokens(self) -> int:
        return self._core.prompt_tokens

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._core.finish_reason


class Tokenizer:
    """The SentencePiece tokenizer stored in a GGUF file (a model or a vocab-only file),
    usable without loading any weights."""

    def __init__(self, path: str | os.PathLike[str]):
        self._tok = _core.TokenizerFile(Path(path))

    @property
    def n_vocab(self) -> int:
        return self._tok.n_vocab

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of `text`; BOS first if `bos`."""
        return self._tok.encode(text, bos)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def piece(self, id: int) -> str | None:
        return self._tok.piece(id)
