"""The edge of the HTTP API: error bodies, request bodies parsed and checked (JSON, Unicode,
strict schemas, the engine's ranges), with errors naming the request's own field."""

from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

import llama_rs

from . import schemas
from .schemas import Unsupported


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        headers: Optional[dict] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def error_body(message: str, type: str, param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": None}}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param), status_code=e.status, headers=e.headers)


def internal_error(e: Exception) -> ApiError:
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error")


def busy(message: str) -> ApiError:
    """Every sequence slot taken and the queue full: come back in a second."""
    return ApiError(503, f"{message}; retry later", "server_busy", headers={"Retry-After": "1"})


ERRORS = {  # documented on every API route
    400: "Invalid request: the message names the field.",
    401: "Missing or wrong API key.",
    413: "Request body over --max-body.",
    502: "The worker failed; it is being restarted.",
    503: "Every worker is busy and the queue is full (Retry-After).",
    504: "The request ran past --timeout.",
}


def responses(ok: type[BaseModel], stream: bool = False) -> dict:
    out: dict[Any, Any] = {code: {"model": schemas.ErrorResponse, "description": d} for code, d in ERRORS.items()}
    out[200] = {
        "model": ok,
        "description": "The answer" + (" (text/event-stream when stream is true)" if stream else ""),
    }
    if stream:
        # Each event's data is a JSON chunk, then the literal [DONE].
        event = {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
        }
        out[200]["content"] = {"text/event-stream": {"schema": event}}
    return out


def _no_constants(name: str):
    raise ApiError(400, f"request body is not valid JSON: {name} is not a JSON number")


def first_bad_string(data: Any) -> Optional[str]:
    """Path of the first string (or key) that is not valid Unicode (a lone surrogate such as
    "\\ud800", which JSON escapes can spell but UTF-8 cannot encode)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((f"{path}.{k}" if path else str(k), k))
                stack.append((f"{path}.{k}" if path else str(k), x))
        elif isinstance(v, list):
            stack.extend((f"{path}.{i}" if path else str(i), x) for i, x in enumerate(v))
    return None


async def parse_body(request: Request, model: type[BaseModel]):
    """JSON body -> `model`, whatever the Content-Type (the seed's clients send none)."""
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # also: digits past Python's int limit, deep nesting
        why = "nested too deeply" if isinstance(e, RecursionError) else None
        raise ApiError(400, f"request body is not valid JSON{': ' + why if why else ''}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    bad = first_bad_string(data)
    if bad is not None:
        raise ApiError(400, f"{bad}: invalid Unicode (a lone UTF-16 surrogate)", param=bad)
    try:
        return model.model_validate(data)
    except Unsupported as e:
        raise ApiError(400, str(e), param=e.field) from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None) from None


def param_error(message: str, param: Optional[str], names: dict) -> ApiError:
    """The engine's error about `param` as a 400 about the request's own field: "temp must be
    >= 0" becomes "temperature must be >= 0" on the OpenAI routes."""
    if not param:
        return ApiError(400, message)
    name = names.get(param, param)
    if message.startswith(param):
        message = name + message[len(param) :]
    return ApiError(400, message if message.startswith(name) else f"{name}: {message}", param=name)


def checked(params: dict, names: dict, n_vocab: int) -> dict:
    """The engine's own range checks, before a worker is taken."""
    try:
        llama_rs.check_generation(**params, n_vocab=n_vocab)
    except llama_rs.ParamError as e:
        raise param_error(str(e), e.param, names) from None
    return params


def worker_error(msg: dict, names: dict) -> ApiError:
    err = msg.get("error") or {}
    text = str(err.get("message") or "the worker refused the request")
    if err.get("type") == "server_error":
        return ApiError(500, text, "server_error")
    return param_error(text, err.get("param"), names)


def stop_list(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def completion_prompts(prompt, n_vocab: int) -> list:
    """OpenAI's four prompt forms -> a list of prompts (text or token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", param="prompt")
    prompts = [prompt] if isinstance(prompt[0], int) else list(prompt)
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            if not p:
                raise ApiError(400, f"prompt.{i}: must not be empty", param="prompt")
            bad = next((t for t in p if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise ApiError(400, f"prompt: token id {bad} is outside the vocab of {n_vocab}", param="prompt")
    return prompts
