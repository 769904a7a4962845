"""Rotary scaling of a checkpoint, as GGUF stores it: none, linear (`llama.rope.scaling.type`
and `.factor`), or Llama 3.1's per-pair frequency divisors (the `rope_freqs.weight` tensor).
Other kinds (YaRN, LongRoPE, dynamic NTK ...) are refused: the engine does not compute them,
and a file without them would run with the wrong angles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import ConvertError

#: Meta's and llama.cpp's values for Llama 3.1 (llama_models' apply_scaling, convert_hf_to_gguf.py).
LLAMA3_DEFAULTS = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class RopeScaling:
    #: "linear" or "llama3".
    kind: str
    #: Linear: positions are divided by it (GGUF `rope.scaling.factor`).
    factor: float = 1.0
    #: Llama 3: one float32 divisor per rotary pair (GGUF `rope_freqs.weight`).
    freq_factors: Optional[np.ndarray] = None


def llama3_rope_factors(
    base: float,
    head_dim: int,
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_context: int = 8192,
) -> np.ndarray:
    """`rope_freqs.weight` for Llama 3.1 scaling, computed as llama.cpp's converter does
    (LlamaModel.generate_extra_tensors): the frequencies in float32 torch, then each pair's
    divisor from its wavelength -- 1 for short wavelengths, `factor` for long ones, and a
    smooth blend between (the divisor transformers' `_compute_llama3_parameters` and Meta's
    `apply_scaling` divide the frequency by)."""
    import torch

    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor
    if low_freq_wavelen == high_freq_wavelen:
        raise ValueError("low_freq_factor equals high_freq_factor")
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = []
    for freq in freqs:  # 0-d float32 tensors: the arithmetic stays in float32, as llama.cpp's
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(1)
        elif wavelen > low_freq_wavelen:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


def _number(source: Path, what: str, v, positive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise ConvertError(f"{source}: {what} = {v!r} is not a positive number")
    return float(v)


def llama3_scaling(source: Path, params: dict, head_dim: int, base: float, where: str) -> RopeScaling:
    """Llama 3 scaling from `params` (keys as in Hugging Face's `rope_scaling`, defaults Meta's)."""
    p = {k: params.get(k, d) for k, d in LLAMA3_DEFAULTS.items()}
    for k, v in p.items():
        _number(source, f"{where}.{k}", v)
    if p["low_freq_factor"] == p["high_freq_factor"]:
        raise ConvertError(
            f"{source}: {where}: low_freq_factor and high_freq_factor are equal ({p['low_freq_factor']})"
        )
    factors = llama3_rope_factors(
        base,
        head_dim,
        p["factor"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        int(p["original_max_position_embeddings"]),
    )
    return RopeScaling("llama3", freq_factors=factors)


def from_hf(source: Path, cfg: dict, head_dim: int, base: float) -> Optional[RopeScaling]:
    """From config.json: `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5),
    `rope_type` (or the older `type`): default, linear or llama3."""
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or rope
    if not isinstance(scaling, dict):
        raise ConvertError(f"{source}: rope_scaling = {scaling!r} is not an object")
    where = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return None
    if kind == "linear":
        factor = _number(source, f"{where}.factor", scaling.get("factor"))
        return None if factor == 1.0 else RopeScaling("linear", factor=factor)
    if kind == "llama3":
        # llama.cpp reads original_max_position_embeddings from the top level of config.json,
        # transformers from rope_scaling: they agree on every Llama 3.x release (8192 in
        # rope_scaling, absent at the top); transformers (the model's definition) decides.
        params = dict(scaling)
        if "original_max_position_embeddings" not in params and "original_max_position_embeddings" in cfg:
            params["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        return llama3_scaling(source, params, head_dim, base, where)
    raise ConvertError(
        f"{source}: rope scaling {kind!r} is not supported (llama-rs computes default, linear and llama3 rotary)"
    )


def from_meta(source: Path, params: dict, head_dim: int, base: float) -> Optional[RopeScaling]:
    """From params.json: `use_scaled_rope` means Llama 3.1 scaling with Meta's constants
    (llama_models' apply_scaling); a `rope_scaling_factor` / `rope_high_freq_factor` (later
    params.json files) replaces factor / high_freq_factor."""
    if not params.get("use_scaled_rope"):
        return None
    p = {}
    if params.get("rope_scaling_factor") is not None:
        p["factor"] = params["rope_scaling_factor"]
    if params.get("rope_high_freq_factor") is not None:
        p["high_freq_factor"] = params["rope_high_freq_factor"]
    return llama3_scaling(source, p, head_dim, base, "params")
