"""The wire between the front and a worker: newline-delimited JSON over a unix socket.

One connection is one lease of one of the worker's sequence slots (several run at once). The
front sends request lines one at a time; the worker answers each with zero or more message
lines and then exactly one `done` or `error` line. Closing the connection cancels whatever the worker is doing (it notices
before its next token). Requests (front -> worker):

    {"op": "ping"}
    {"op": "stats"}                                        the worker's counters (for /metrics)
    {"op": "generate", "prompt": "text" | [ids], "params": {...}, "echo": false}   Model.generate
    {"op": "generate", "messages": [{"role": ..., "content": ...}], "params": {...}}  Model.chat_stream

`params` are `Model.generate`'s keyword arguments (logit_bias keys arrive as strings).
Messages (worker -> front):

    {"pong": true, "pid": 123}                                   answer to {"op": "ping"}
    {"stats": {"active": 2, "kv_used": 300, ...}, "pid": 123}    answer to {"op": "stats"}
    {"echo": "prompt text", "logprobs": [TOKEN, ...]?}          first, when echo was asked
    {"text": "piece", "logprobs": [TOKEN, ...]?}                a piece of the generation
    {"done": true, "tokens": 12, "prompt_tokens": 3, "cached_tokens": 0, "finish_reason": "length", ...}
    {"error": {"message": "...", "type": "invalid_request_error", "param": "top_p"}}

TOKEN is `{"id": 5, "bytes": [32, 104], "logprob": -0.3, "top": [[id, [bytes], logprob], ...]}`,
sent only when log-probabilities were asked for.
"""

from __future__ import annotations

import json
from typing import Any

# A request line may carry a prompt near the front's body limit, in escaped form.
MAX_LINE = 64 << 20


def encode(msg: dict[str, Any]) -> bytes:
    # ASCII escapes: any str encodes (a lone surrogate too); the worker reports it as an error.
    return (json.dumps(msg, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")


def decode(line: bytes) -> dict[str, Any]:
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError(f"expected a JSON object, got {type(msg).__name__}")
    return msg
