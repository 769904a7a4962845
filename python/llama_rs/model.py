"""The Python face of the engine: `Model` loads a GGUF file and generates text.

Everything numeric happens in Rust (`llama_rs._core`); this module only shapes arguments
and results. The GIL is released while the engine computes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Literal, Mapping, Sequence, Tuple

from . import _core
from .batch import BatchEngine, BatchEvent
from .chat import check_messages, render_chat
from .generation import DEFAULTS

if TYPE_CHECKING:
    import numpy as np

FinishReason = Literal["length", "eos", "stop", "context"]

#: A generated token's log-probability: (id, logprob, [(id, logprob)] of the most likely
#: alternatives, most likely first). Log-probabilities are of the raw model logits, before
#: logit_bias, penalties and temperature.
TokenLogprob = Tuple[int, float, List[Tuple[int, float]]]

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
    #: One entry per generated token when asked for (`logprobs=n`), else None.
    logprobs: list[TokenLogprob] | None = None
    #: Of the prompt's tokens, those reused from the cache of an earlier prompt that started
    #: the same way (not evaluated again). How the result was reached, not part of it: two
    #: completions of the same text compare equal whatever their caches held.
    cached_tokens: int = field(kw_only=True, compare=False)


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Model:
    """A LLaMA-family model loaded from a GGUF file, with its own KV cache.

    Args:
        path: the ``.gguf`` file. Weights are memory-mapped, not copied.
        n_ctx: context length in tokens (prompt plus generated text).
        n_threads: worker threads for the matrix products (default: the CPUs available).
        seed: default seed for sampling (-2^63 to 2^64-1); negative draws a fresh seed for
            every generation.
        kv_type: how the KV cache stores keys and values: "f16" (llama.cpp's default: half
            the memory, same results as llama.cpp) or "f32" (full precision).

    Raises:
        ModelError: the file is missing, unreadable, or not a model llama_rs can run.
        ParamError: a seed out of range.
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
        self._kv_type = kv_type

    @classmethod
    def demo(
        cls, n_ctx: int = 256, n_threads: int | None = None, seed: int = -1, kv_type: Literal["f16", "f32"] = "f16"
    ) -> "Model":
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

    def wait_repacked(self) -> int:
        """Wait until the weights are in the layout this CPU's kernels read fastest, and return
        how many matrices were repacked (Q4_0, Q8_0, Q4_K and Q6_K on AVX-512 CPUs: a private
        copy per process, see LLAMA_RS_REPACK). A thread started at load does it while the model
        is already in use, matrix by matrix; every layout gives the same results, so only
        benchmarks need to wait."""
        return self._engine.repacked

    @property
    def repacked(self) -> int:
        """How many weight matrices were repacked (waits for the repack: see `wait_repacked`)."""
        return self.wait_repacked()

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
    def tokenize(self, text: str, bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text` by the file's tokenizer (SentencePiece or byte-level BPE).
        `bos`: the model's BOS first (and EOS last) as its vocab asks (GGUF
        `add_bos_token` / `add_eos_token`). `special`: control tokens written in the text
        (`<|eot_id|>`, `<s>`) are those tokens, as llama.cpp's `parse_special`; otherwise they
        are ordinary text."""
        return self._engine.tokenize(text, bos, special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids; the leading space of the first piece is dropped, as SentencePiece does."""
        return self._engine.detokenize(list(ids))

    def token_piece(self, id: int) -> str | None:
        """The vocab piece of a token id (with ``▁`` for spaces), or None if out of range."""
        return self._engine.token_piece(id)

    def token_bytes(self, id: int) -> bytes:
        """The bytes a token stands for in the middle of a text: ``▁`` as a space, a byte
        token (``<0x0A>``) as that byte, control tokens (BOS, EOS) as nothing. A single byte
        token may be part of a UTF-8 character, so this is bytes, not text. Raises ValueError
        for an id outside the vocab."""
        return self._engine.token_bytes(id)

    # -- evaluation ----------------------------------------------------------------------
    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Evaluate `ids` after the tokens already in the KV cache.

        Returns the logits of the last position (shape ``[n_vocab]``), or of every new
        position (``[len(ids), n_vocab]``) when `all_logits`. Raises ValueError when the
        context would overflow or an id is outside the vocab.
        """
        # numpy only here: importing it starts OpenBLAS's threads, which would spin beside the
        # engine's in processes that never need an array (serve's workers and front).
        import numpy as np

        data, rows = self._engine.eval(list(ids), all_logits)
        logits = np.frombuffer(data, dtype="<f4")
        return logits.reshape(rows, self.n_vocab) if all_logits else logits

    def score(self, ids: Sequence[int], top_n: int = 0) -> list[tuple[float, list[tuple[int, float]]]]:
        """Log-probabilities of a token sequence (OpenAI's ``echo`` with ``logprobs``).

        Returns ``len(ids) - 1`` entries: entry ``i`` is ``(logprob of ids[i+1] after
        ids[:i+1], [(id, logprob)] of the top_n most likely tokens there, most likely
        first)``, from the raw logits (log-softmax in float64). Empties the KV cache first and
        leaves it holding `ids`. Raises ValueError when `ids` is empty, longer than n_ctx, or
        has an id outside the vocab, or when top_n is not from 0 to n_vocab.
        """
        return self._engine.score(list(ids), top_n)

    @property
    def n_past(self) -> int:
        """Number of tokens in the KV cache."""
        return self._engine.n_past()

    def reset(self) -> None:
        """Empty the KV cache."""
        self._engine.reset()

    # -- generation ----------------------------------------------------------------------
    def _start(
        self,
        prompt,
        max_tokens,
        top_k,
        top_p,
        temp,
        repeat_penalty,
        repeat_lastn,
        seed,
        stop,
        presence_penalty,
        frequency_penalty,
        logit_bias,
        logprobs,
    ) -> "Generation":
        # Values go to Rust unconverted: it checks them all (ParamError), even ones that
        # int()/float() would refuse or overflow on.
        if isinstance(stop, str):
            stop = [stop]
        else:
            try:
                stop = list(stop)
            except TypeError:
                pass
        if not isinstance(prompt, str):
            prompt = list(prompt)  # ids are checked by the engine (a ValueError naming a bad one)
        t0 = time.perf_counter()
        core = self._engine.start(
            prompt,
            max_tokens,
            top_k,
            top_p,
            temp,
            repeat_penalty,
            repeat_lastn,
            seed,
            stop,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            logit_bias=logit_bias,
            logprobs=logprobs,
        )
        return Generation(core, time.perf_counter() - t0)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = DEFAULTS.max_tokens,
        top_k: int = DEFAULTS.top_k,
        top_p: float = DEFAULTS.top_p,
        temp: float = DEFAULTS.temp,
        repeat_penalty: float = DEFAULTS.repeat_penalty,
        repeat_lastn: int = DEFAULTS.repeat_lastn,
        seed: int | None = DEFAULTS.seed,
        stop: str | Sequence[str] = DEFAULTS.stop,
        presence_penalty: float = DEFAULTS.presence_penalty,
        frequency_penalty: float = DEFAULTS.frequency_penalty,
        logit_bias: Mapping[int, float] | None = DEFAULTS.logit_bias,
        logprobs: int | None = DEFAULTS.logprobs,
    ) -> "Generation":
        """Generate text after `prompt`, yielding pieces as they are produced.

        `prompt` is text (tokenized with BOS) or a list of token ids. Sampling: `logit_bias`
        added to the logits, repeat penalty over the last `repeat_lastn` tokens, presence and
        frequency penalties over the tokens generated so far, then top-k (0 = all), top-p,
        then temperature; `temp <= 0` is greedy. `seed` None uses the model's seed.
        Generation ends after `max_tokens`, at an end-of-generation token (EOS, end of turn,
        end of message: `Tokenizer.eog_tokens`; never printed), before any of the
        `stop` strings, or when the context is full. The KV cache keeps the prompt's longest
        common prefix with the previous call, so a growing conversation is cheap. With
        `logprobs` set, each generated token's log-probability is recorded
        (`Generation.take_logprobs`). Every parameter is described, with its range, in
        `GenerationConfig`.

        The prompt is evaluated before this returns; the returned `Generation` is an
        iterator of text pieces that also reports counts, the finish reason and timings.

        Raises:
            ParamError: a parameter out of its range (`.param` names it).
            ValueError: the prompt does not fit the context.
        """
        return self._start(
            prompt,
            max_tokens,
            top_k,
            top_p,
            temp,
            repeat_penalty,
            repeat_lastn,
            seed,
            stop,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
        )

    def complete(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = DEFAULTS.max_tokens,
        top_k: int = DEFAULTS.top_k,
        top_p: float = DEFAULTS.top_p,
        temp: float = DEFAULTS.temp,
        repeat_penalty: float = DEFAULTS.repeat_penalty,
        repeat_lastn: int = DEFAULTS.repeat_lastn,
        seed: int | None = DEFAULTS.seed,
        stop: str | Sequence[str] = DEFAULTS.stop,
        presence_penalty: float = DEFAULTS.presence_penalty,
        frequency_penalty: float = DEFAULTS.frequency_penalty,
        logit_bias: Mapping[int, float] | None = DEFAULTS.logit_bias,
        logprobs: int | None = DEFAULTS.logprobs,
    ) -> Completion:
        """Like `generate`, but returns the whole text with counts, the finish reason and
        (when `logprobs` is set) the tokens' log-probabilities. Ctrl+C interrupts it between
        tokens (KeyboardInterrupt)."""
        gen = self._start(
            prompt,
            max_tokens,
            top_k,
            top_p,
            temp,
            repeat_penalty,
            repeat_lastn,
            seed,
            stop,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
        )
        text = "".join(gen)
        return Completion(
            text=text,
            tokens=gen.tokens,
            prompt_tokens=gen.prompt_tokens,
            finish_reason=gen.finish_reason,
            logprobs=gen.take_logprobs() if logprobs is not None else None,
            cached_tokens=gen.cached_tokens,
        )

    # -- batches ----------------------------------------------------------------------------
    def batch_engine(
        self, n_parallel: int, n_ctx: int | None = None, n_threads: int | None = None, kv_cells: int | None = None
    ) -> "BatchEngine":
        """A continuous-batching engine over this model's weights (not loaded again):
        `n_parallel` sequences of up to `n_ctx` positions each (default: the model's), stepped
        together on `n_threads` threads. `generate_many` and the server's workers drive one.

        The sequences share one pool of `kv_cells` KV cells (default `n_parallel * n_ctx`,
        room for every one's whole context); each cache grows as its sequence needs, so
        memory follows the tokens held. A sequence is admitted only if the pool can hold
        all it may need (prompt + max_tokens, at most `n_ctx`), else `add` raises `KvFull`.

        Raises:
            ValueError: `n_parallel` out of 1..256, `kv_cells` 0, or a pool too large.
        """
        core = self._engine.batch(
            n_parallel,
            self.n_ctx if n_ctx is None else n_ctx,
            n_threads or self.n_threads,
            self._kv_type,
            kv_cells=kv_cells,
        )
        return BatchEngine(core)

    def _events(
        self, prompts: Sequence[str | Sequence[int]], n_parallel: int | None, params: Mapping[str, Any]
    ) -> Iterator[tuple[int, BatchEvent]]:
        """Start a batch over `prompts` (checking the parameters and the first prompts now)
        and return its events, each with the index of its prompt."""
        waiting = [(i, p if isinstance(p, str) else list(p)) for i, p in enumerate(prompts)]
        if not waiting:
            BatchEngine.arguments(params)  # still checked
            return iter(())
        n = min(len(waiting), 16) if n_parallel is None else n_parallel
        batch = self.batch_engine(n)
        index: dict[int, int] = {}

        def admit() -> None:  # as many waiting prompts as there are free slots
            while waiting and batch.active < batch.capacity:
                i, p = waiting.pop(0)
                index[batch.add(p, params)] = i

        admit()

        def run() -> Iterator[tuple[int, BatchEvent]]:
            done = 0
            while done < len(index) or waiting:
                for e in batch.step():
                    if e.error is not None:  # its cache could not grow: no text to give
                        raise MemoryError(e.error)
                    done += e.finish is not None
                    yield index[e.id], e
                admit()

        return run()

    def generate_many(
        self,
        prompts: Sequence[str | Sequence[int]],
        n_parallel: int | None = None,
        max_tokens: int = DEFAULTS.max_tokens,
        top_k: int = DEFAULTS.top_k,
        top_p: float = DEFAULTS.top_p,
        temp: float = DEFAULTS.temp,
        repeat_penalty: float = DEFAULTS.repeat_penalty,
        repeat_lastn: int = DEFAULTS.repeat_lastn,
        seed: int | None = DEFAULTS.seed,
        stop: str | Sequence[str] = DEFAULTS.stop,
        presence_penalty: float = DEFAULTS.presence_penalty,
        frequency_penalty: float = DEFAULTS.frequency_penalty,
        logit_bias: Mapping[int, float] | None = DEFAULTS.logit_bias,
    ) -> Iterator[tuple[int, str]]:
        """Generate after every prompt at once, yielding `(index of the prompt, piece)` as
        pieces are produced (continuous batching: each forward pass reads the weights once for
        all running sequences; `n_parallel` of them at a time, default all up to 16, the
        others join as slots free up). Each sequence gets exactly the tokens it gets alone
        with the same seed (`seed` None: the model's seed; the same seed for every prompt).
        Parameters as `generate` (no `logprobs`), checked when this is called. Each slot has
        its own KV cache of `n_ctx` positions; this model's own cache is untouched.

        Raises:
            ParamError: a parameter out of its range (`.param` names it).
            ValueError: a prompt does not fit the context, or `n_parallel` is out of 1..256.
        """
        events = self._events(
            prompts,
            n_parallel,
            dict(
                max_tokens=max_tokens, top_k=top_k, top_p=top_p, temp=temp, repeat_penalty=repeat_penalty,
                repeat_lastn=repeat_lastn, seed=seed, stop=stop, presence_penalty=presence_penalty,
                frequency_penalty=frequency_penalty, logit_bias=logit_bias,
            ),
        )  # fmt: skip
        return ((i, e.piece) for i, e in events if e.piece)

    def complete_many(
        self, prompts: Sequence[str | Sequence[int]], n_parallel: int | None = None, **params: Any
    ) -> list[Completion]:
        """`complete` for every prompt at once (see `generate_many`), in prompt order;
        `params` are `complete`'s."""
        texts = [""] * len(prompts)
        last: dict[int, BatchEvent] = {}  # each prompt's latest event: its final one at the end
        logprobs: list[list[TokenLogprob]] = [[] for _ in prompts]
        for i, e in self._events(prompts, n_parallel, params):
            texts[i] += e.piece or ""
            logprobs[i] += e.logprobs
            last[i] = e
        return [
            Completion(
                text=texts[i],
                tokens=last[i].tokens,
                prompt_tokens=last[i].prompt_tokens,
                finish_reason=last[i].finish,
                logprobs=logprobs[i] if params.get("logprobs") is not None else None,
                cached_tokens=last[i].cached_tokens,
            )
            for i in range(len(prompts))
        ]

    # -- chat -------------------------------------------------------------------------------
    @cached_property
    def chat_template(self) -> str | None:
        """The file's chat template (GGUF `tokenizer.chat_template`), or None: then chat
        uses a plain `User: ... / Assistant:` transcript, which base models continue."""
        t = self.metadata.get("tokenizer.chat_template")
        return t if isinstance(t, str) and t.strip() else None

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> "Generation":
        """The assistant's next turn after `messages` (`[{"role": "system" | "developer" |
        "user" | "assistant", "content": text}]`), as a `Generation` of text pieces.
        `params` are `generate`'s (see `GenerationConfig`); the format's own stop strings
        are added to `stop`. A growing conversation re-evaluates only its new turns.

        Raises:
            ValueError: malformed messages, or the model's chat template failed.
            ParamError: a parameter out of its range.
        """
        ids, params = self.chat_request(messages, params)
        return self.generate(ids, **params)

    def chat_request(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> tuple[list[int], dict[str, Any]]:
        """The prompt ids of the assistant's next turn after `messages` and `params` with the
        format's own stop strings added to `stop` (what `chat_stream` generates from)."""
        ids, format_stops = self.chat_tokens(messages)
        params = dict(params)
        stop = params.pop("stop", DEFAULTS.stop)
        stop = [stop] if isinstance(stop, str) else list(stop)
        return ids, {**params, "stop": [*stop, *format_stops]}

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[str]]:
        """The prompt ids of the assistant's next turn after `messages` (what `chat_stream`
        evaluates; `tokenizer.apply_chat_template(..., add_generation_prompt=True)` of
        transformers for the same template), and the format's own stop strings."""
        messages = check_messages(messages)
        if self.chat_template is None:
            prompt = render_chat(messages, None)
            return self.tokenize(prompt.text, bos=True), list(prompt.stop)
        bos, eos = (self.token_piece(t) or "" if t is not None else "" for t in (self.bos_token, self.eos_token))
        prompt = render_chat(messages, self.chat_template, bos_token=bos, eos_token=eos)
        # A template writes the model's control tokens (`<|start_header_id|>`, `[INST]`, `</s>`)
        # as text: they are parsed as tokens. A BOS it writes first is the BOS; if it writes
        # none, the vocab's add_bos_token decides.
        wrote_bos = bool(bos) and prompt.text.startswith(bos)
        return self._engine.tokenize_template(prompt.text, not wrote_bos), list(prompt.stop)

    def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Completion:
        """Like `chat_stream`, but returns the whole reply (as llama-cpp-python's
        `create_chat_completion` does, without the OpenAI wrapping)."""
        gen = self.chat_stream(messages, **params)
        text = "".join(gen)
        return Completion(
            text=text,
            tokens=gen.tokens,
            prompt_tokens=gen.prompt_tokens,
            finish_reason=gen.finish_reason,
            logprobs=gen.take_logprobs() if params.get("logprobs") is not None else None,
            cached_tokens=gen.cached_tokens,
        )


class Generation(Iterator[str]):
    """A generation in progress: iterate for text pieces (never half a UTF-8 character).

    `tokens`, `prompt_tokens`, `cached_tokens` and `finish_reason` (None until it ends)
    describe it so far; `prompt_seconds` is the time taken by the prompt, `gen_seconds` by the
    tokens since.
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
    def cached_tokens(self) -> int:
        """Of the prompt's tokens, those the model's cache already held from an earlier
        prompt that started the same way (not evaluated again)."""
        return self._core.cached_tokens

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._core.finish_reason

    def take_logprobs(self) -> list[TokenLogprob]:
        """The log-probabilities of the tokens generated since the last call, and forget
        them: one `(id, logprob, top)` per token (the EOS that ends a generation has none).
        A piece can span several tokens, so after a `next()` there may be several entries,
        or none. Empty unless the generation was started with `logprobs`."""
        return self._core.take_logprobs()


class Tokenizer:
    """The tokenizer stored in a GGUF file (a model or a vocab-only file; SentencePiece or byte-level BPE),
    usable without loading any weights."""

    def __init__(self, path: str | os.PathLike[str]):
        self._tok = _core.TokenizerFile(Path(path))

    @property
    def n_vocab(self) -> int:
        return self._tok.n_vocab

    @property
    def bos_token(self) -> int | None:
        return self._tok.bos

    @property
    def eos_token(self) -> int | None:
        return self._tok.eos

    @property
    def eog_tokens(self) -> list[int]:
        """The ids that end generation: EOS, end of turn, end of message (sorted)."""
        return self._tok.eog

    @property
    def model(self) -> str:
        """The GGUF tokenizer model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)."""
        return self._tok.model

    def encode(self, text: str, bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`; `bos`: BOS first (EOS last) as the vocab asks; `special`:
        control tokens written in the text are parsed (see `Model.tokenize`)."""
        return self._tok.encode(text, bos, special)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def piece(self, id: int) -> str | None:
        return self._tok.piece(id)
