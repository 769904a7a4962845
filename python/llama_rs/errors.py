"""Exceptions raised by llama_rs."""


class ModelError(OSError, ValueError):
    """A model file could not be loaded: missing, unreadable, truncated or inconsistent.

    The message names the file and the problem. It is both an ``OSError`` (the file is
    at fault) and a ``ValueError`` (its contents are), like ``io.UnsupportedOperation``.
    """


class ParamError(ValueError):
    """A generation parameter is out of its range (or not a value of its kind).

    ``param`` is the engine's name for it (``"top_p"``, ``"seed"``, ``"logit_bias"``...), so
    a server can report which request field is at fault; ``str(e)`` is the message, which
    names the parameter and the accepted range.
    """

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param

    def __reduce__(self):  # pickles (e.g. across worker processes) with both arguments
        return (type(self), (self.param, str(self)))


class KvFull(RuntimeError):
    """A batch engine's KV cells are held or reserved by running sequences, so a new one
    cannot be admitted now; it can once some of them finish (a server keeps the request
    waiting). A prompt that could never fit is a ``ValueError`` instead.
    """
