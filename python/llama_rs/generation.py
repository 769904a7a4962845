"""Generation parameters, declared once.

`GenerationConfig` holds every default that `Model.generate` / `Model.complete` use. The
ranges in the docstrings are documentation only: the Rust engine checks every value (one
place, `GenerateArgs::validate`) and raises `ParamError` naming the parameter.
`check_generation` runs those checks without a model, e.g. for a server validating a request
before it queues it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence, Union

from . import _core


@dataclass(frozen=True)
class GenerationConfig:
    """The defaults of a generation. Sampling order: `logit_bias`, repeat penalty,
    presence/frequency penalties, top-k, top-p, temperature, then the draw."""

    max_tokens: int = 128
    """Most tokens to generate (the end-of-sequence token not counted); 0 to 2^31-1."""

    top_k: int = 40
    """Keep only the k most likely tokens; 0 keeps all. 0 to 2^31-1."""

    top_p: float = 0.9
    """Keep the smallest set of most likely tokens whose probability reaches top_p; in (0, 1]."""

    temp: float = 0.8
    """Temperature: above 1 flattens, below 1 sharpens; 0 is greedy (always the most likely
    token). Finite, >= 0."""

    repeat_penalty: float = 1.3
    """Divide the positive logits (multiply the negative ones) of tokens among the last
    `repeat_lastn` of the context, prompt included; 1 is off. Finite, > 0."""

    repeat_lastn: int = 64
    """How many of the last context tokens the repeat penalty looks at; 0 to 2^31-1."""

    seed: Optional[int] = None
    """Random seed; None uses the model's seed, a negative one draws a fresh seed each
    time. Same seed, parameters and model: same text. From -2^63 to 2^64-1."""

    stop: Union[str, Sequence[str]] = ()
    """Strings that end the generation; the text returned stops before the first one. At
    most 16, each 1 to 256 characters."""

    presence_penalty: float = 0.0
    """OpenAI's presence penalty: subtracted once from the logit of every token already
    generated (the prompt does not count). In [-2, 2]."""

    frequency_penalty: float = 0.0
    """OpenAI's frequency penalty: subtracted from a token's logit once per time it was
    generated so far (the prompt does not count). In [-2, 2]."""

    logit_bias: Optional[Mapping[int, float]] = None
    """{token id: bias} added to the raw logits before anything else; +100 all but forces a
    token, -100 all but bans it. Ids in the vocab (ints, or decimal strings as in OpenAI's
    JSON), biases in [-100, 100]."""

    logprobs: Optional[int] = None
    """None: off. An integer n from 0 to 20: record each generated token's log-probability
    (under the raw model logits) with its n most likely alternatives; read them with
    `Generation.take_logprobs`."""


DEFAULTS = GenerationConfig()
_NAMES = tuple(f.name for f in fields(GenerationConfig))


def check_generation(*, n_vocab: int | None = None, **params: object) -> None:
    """Check generation parameters as `Model.generate` would, without a model.

    Parameters not given take their `GenerationConfig` defaults. Token ids in `logit_bias`
    are checked against `n_vocab` when it is given.

    Raises:
        ParamError: a value out of its range; `.param` names it.
        TypeError: an unknown parameter name.
    """
    unknown = sorted(set(params) - set(_NAMES))
    if unknown:
        raise TypeError(f"unknown generation parameter(s): {', '.join(unknown)} (known: {', '.join(_NAMES)})")
    values = {name: params.get(name, getattr(DEFAULTS, name)) for name in _NAMES}
    if isinstance(values["stop"], str):
        values["stop"] = [values["stop"]]
    _core.check_generation(**values, n_vocab=n_vocab)
