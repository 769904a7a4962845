"""`BatchEngine`: several generations on one model, stepped together (continuous batching,
`rust/batch.rs`). `Model.batch_engine` makes one; `Model.generate_many` and the server's
workers drive it. Not thread-safe: drive it from one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from .generation import DEFAULTS

#: The generation parameters a sequence takes (`Model.generate`'s), in the order
#: `_core.BatchEngine.add` takes the first eight.
PARAMS = (
    "max_tokens", "top_k", "top_p", "temp", "repeat_penalty", "repeat_lastn", "seed", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
)  # fmt: skip
_POSITIONAL = 8


@dataclass(frozen=True)
class BatchEvent:
    """What one step produced for one sequence."""

    id: int
    #: Text (None or empty while a character or a possible stop string is incomplete).
    piece: Optional[str]
    #: Set on the sequence's last event ("length", "eos", "stop", "context").
    finish: Optional[str]
    #: Tokens generated so far.
    tokens: int
    prompt_tokens: int
    #: Of the prompt's tokens, those reused from the prefix cache (not evaluated again).
    cached_tokens: int
    #: (id, logprob, top) of the tokens sampled since the sequence's last event.
    logprobs: List[Tuple[int, float, List[Tuple[int, float]]]]
    #: Set (and `finish` None) when the sequence failed, e.g. the machine had no memory to
    #: grow its KV cache: its last event; the others run on.
    error: Optional[str] = None


class BatchEngine:
    def __init__(self, core):
        self._core = core

    @staticmethod
    def arguments(params: Mapping[str, Any]) -> tuple[list, dict]:
        """`Model.generate`-style keyword parameters as `_core.BatchEngine.add`'s arguments
        (defaults from `GenerationConfig`); values are checked by the engine."""
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown} (a sequence takes {', '.join(PARAMS)})")
        args = {k: params.get(k, getattr(DEFAULTS, k)) for k in PARAMS}
        stop = args["stop"]
        if isinstance(stop, str):
            args["stop"] = [stop]
        elif hasattr(stop, "__iter__"):
            args["stop"] = list(stop)
        # Anything else goes as it is: the engine names the error.
        positional = [args.pop(k) for k in PARAMS[:_POSITIONAL]]
        return positional, args

    def add(self, prompt: str | Sequence[int], params: Mapping[str, Any]) -> int:
        """Start a generation of `prompt` (text, tokenized with BOS, or token ids) with
        `Model.generate`'s parameters; its events carry the returned id.

        Raises:
            ParamError: a parameter out of its range.
            KvFull: the KV pool cannot hold what this sequence may need (prompt + max_tokens,
                at most n_ctx) beside the running ones; try again when one finishes.
            ValueError: the prompt can never fit (the context or the whole pool), or every
                slot is busy.
        """
        positional, kw = self.arguments(params)
        if not isinstance(prompt, str):
            prompt = list(prompt)  # ids are checked by the engine (a ValueError naming a bad one)
        return self._core.add(prompt, *positional, **kw)

    def step(self) -> list[BatchEvent]:
        """One forward pass over every running sequence; at most one event each."""
        return [BatchEvent(*e) for e in self._core.step()]

    def cancel(self, id: int) -> bool:
        """Stop sequence `id` now; False if it is not running."""
        return self._core.cancel(id)

    @property
    def active(self) -> int:
        """Sequences running."""
        return self._core.active

    @property
    def capacity(self) -> int:
        """Sequences that can run at once."""
        return self._core.capacity

    @property
    def n_ctx(self) -> int:
        """Positions a sequence may hold (the context, or the whole pool if smaller)."""
        return self._core.n_ctx

    @property
    def kv_cells(self) -> int:
        """The KV pool: cells all sequences' caches may hold together."""
        return self._core.kv_cells

    @property
    def kv_allocated(self) -> int:
        """KV cells allocated now (each cache grows as its sequence needs)."""
        return self._core.kv_allocated

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV cache allocated now."""
        return self._core.kv_bytes

    @property
    def kv_used(self) -> int:
        """KV cells holding tokens of running sequences."""
        return self._core.kv_used

    @property
    def kv_cached(self) -> int:
        """KV cells holding tokens kept for reuse by a later prompt with the same start."""
        return self._core.kv_cached
