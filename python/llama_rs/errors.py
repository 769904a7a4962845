"""Exceptions raised by llama_rs."""


class ModelError(OSError, ValueError):
    """A model file could not be loaded: missing, unreadable, truncated or inconsistent.

    The message names the file and the problem. It is both an ``OSError`` (the file is
    at fault) and a ``ValueError`` (its contents are), like ``io.UnsupportedOperation``.
    """
