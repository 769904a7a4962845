"""Shared fixtures: where the reference data lives, and how its absence is handled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("LLAMA_RS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MODELS = SHARED / "models"


def need_data(*names: str) -> Path:
    """Path to ../shared/models; skip (or fail under LLAMA_RS_REQUIRE_DATA=1) if a file is absent."""
    missing = [n for n in names if not (MODELS / n).exists()]
    if not MODELS.is_dir() or missing:
        msg = f"reference data not found: {MODELS} {missing or ''}"
        if os.environ.get("LLAMA_RS_REQUIRE_DATA") == "1":
            pytest.fail(msg + " (LLAMA_RS_REQUIRE_DATA=1)")
        pytest.skip(msg)
    return MODELS


@pytest.fixture
def models_dir() -> Path:
    return need_data()
