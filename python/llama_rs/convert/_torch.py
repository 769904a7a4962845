"""Reading PyTorch files without running pickled code, memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import ConvertError


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True, mmap=True)`: tensors stay in the file until touched."""
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise ConvertError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
        # Files from torch < 1.6 (not zip-based) cannot be mapped: read them whole.
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:
            raise ConvertError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e2)})") from None
    except Exception as e:  # UnpicklingError (code in the pickle), EOFError, zip errors ...
        raise ConvertError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ConvertError(f"{path}: not a state dict of tensors")
    return sd


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy array; a view on the mapped file when the tensor is already float32."""
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.numpy()


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
