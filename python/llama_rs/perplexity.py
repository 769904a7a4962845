"""Perplexity with llama.cpp's method (DESIGN.md, "Perplexity"), so numbers compare with
`llama-perplexity`'s. The scoring (log-softmax, negative log-likelihood) runs in Rust."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from .model import Model


@dataclass
class Perplexity:
    """The result of `perplexity`."""

    #: exp(mean negative log-likelihood) over every scored token.
    value: float
    ctx: int
    chunks: int
    #: Tokens scored (ctx - 1 - ctx//2 per chunk) and the text's token count (BOS included).
    scored: int
    tokens: int
    nll: float
    #: The running estimate after each chunk, as llama.cpp prints it.
    running: list[float] = field(default_factory=list)


def perplexity(
    model: Model,
    text: str,
    ctx: int = 256,
    max_chunks: Optional[int] = None,
    progress: Optional[Callable[[int, int, float], None]] = None,
) -> Perplexity:
    """Perplexity of `model` on `text`: the tokens (with BOS) in chunks of `ctx`; each chunk
    starts with BOS and is evaluated from an empty cache; the second half of each chunk is
    scored. `progress(done, total, running_ppl)` is called after each chunk.

    Raises ValueError when `ctx` is too small, larger than the model's n_ctx, or the text
    shorter than one chunk. The model's KV cache is left empty.
    """
    if ctx < 8:
        raise ValueError(f"ctx must be at least 8 tokens, got {ctx}")
    if ctx > model.n_ctx:
        raise ValueError(f"ctx {ctx} is larger than the model's context n_ctx={model.n_ctx}")
    tokens = model.tokenize(text, bos=True)
    n = len(tokens) // ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n < 1:
        raise ValueError(
            f"the text is {len(tokens)} tokens, fewer than one chunk of {ctx}; use a longer text or a smaller ctx"
        )
    nll, scored, running = 0.0, 0, []
    for i in range(n):
        s, c = model._engine.perplexity_chunk(tokens[i * ctx : (i + 1) * ctx])
        nll += s
        scored += c
        running.append(math.exp(nll / scored))
        if progress is not None:
            progress(i + 1, n, running[-1])
    return Perplexity(value=running[-1], ctx=ctx, chunks=n, scored=scored, tokens=len(tokens), nll=nll, running=running)
