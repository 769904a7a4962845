"""Errors of `llama_rs.convert`. Importing this module imports nothing heavy."""

from __future__ import annotations

INSTALL_HINT = "pip install 'llama-rs[convert]'"


class ConvertError(ValueError):
    """A checkpoint that cannot be converted. The message is one line naming the file and
    the problem."""


class MissingDependency(ImportError):
    """A package that `convert` needs (torch, safetensors, sentencepiece, protobuf, gguf) is
    not installed. The message says what to install."""
