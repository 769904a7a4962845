"""Every HTTP request and response body, declared once (types, defaults, descriptions).

Types are strict (`"5"` is not a number, `"yes"` is not a boolean, NaN and infinities are
refused). Ranges of the generation parameters are the engine's (`llama_rs.check_generation`,
in Rust), checked by the front before a worker is taken; they are not repeated here.
OpenAI requests refuse unknown fields, and fields that would change the answer but that
llama-rs does not implement get a 400 that says so instead of being ignored.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_rs.generation import GenerationConfig

D = GenerationConfig()
#: OpenAI clients expect less repetition control than the library's default.
OPENAI_REPEAT_PENALTY = 1.1
#: Choices per request (prompts x n): each is generated in turn on one worker.
MAX_CHOICES = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's
CHAT_DEFAULT_MAX_TOKENS = 256


class Unsupported(Exception):
    """A field we do not implement was given a value that would change the answer."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field = field


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


def reject_unsupported(data: Any, rules: dict[str, tuple]) -> None:
    """`rules`: field -> (values that are fine, why not). Raises Unsupported (not a
    ValueError, so it passes through pydantic unchanged and keeps its field name)."""
    if not isinstance(data, dict):
        return
    for field, (fine, why) in rules.items():
        if field in data and data[field] not in fine:
            raise Unsupported(field, why)


# -- the seed's API (llama-go) -----------------------------------------------------------------


class SeedCompletionRequest(Strict):
    """llama-go's request. Unknown fields are ignored, as its Go server did."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    prompt: str
    tokens: int = Field(description="Tokens to generate at most.")
    top_k: int = D.top_k
    top_p: float = D.top_p
    temp: float = Field(D.temp, description="Temperature; 0 is greedy.")
    repeat_penalty: float = D.repeat_penalty
    repeat_lastn: int = D.repeat_lastn
    seed: Optional[int] = Field(None, description="Same seed, same text; negative or absent: random.")
    stop: Optional[Union[str, list[str]]] = None


class SeedCompletionResponse(BaseModel):
    Prompt: str
    Text: str
    Tokens: int
    CompleteReason: Literal["length", "eos", "stop", "context"]


# -- OpenAI ------------------------------------------------------------------------------------


class StreamOptions(Strict):
    include_usage: bool = False


class OpenAIRequest(Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: Optional[str] = Field(None, description="Accepted for compatibility: the server has one model.")
    max_tokens: Optional[int] = None
    temperature: float = D.temp
    top_p: float = D.top_p
    top_k: int = Field(D.top_k, description="llama.cpp extension: keep the k most likely tokens (0 = all).")
    repeat_penalty: float = Field(OPENAI_REPEAT_PENALTY, description="llama.cpp extension.")
    repeat_last_n: int = Field(D.repeat_lastn, description="llama.cpp extension.")
    presence_penalty: float = D.presence_penalty
    frequency_penalty: float = D.frequency_penalty
    logit_bias: Optional[dict[str, float]] = Field(
        None, description="Token id (as a string) -> bias added to its logit."
    )
    seed: Optional[int] = Field(None, description="Choice i of a request uses seed + i.")
    stop: Optional[Union[str, list[str]]] = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # Accepted; they do not change the answer.
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None


class CompletionRequest(OpenAIRequest):
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="Text, texts, token ids, or lists of token ids (one choice set per prompt)."
    )
    echo: bool = Field(False, description="Put the prompt before the completion (with its log-probabilities).")
    logprobs: Optional[int] = Field(
        None, description="Log-probabilities of the chosen tokens and this many alternatives."
    )
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        reject_unsupported(
            data,
            {
                "suffix": ((None, ""), "not supported (no fill-in-the-middle)"),
                "best_of": ((None, 1), "not supported (use n)"),
            },
        )
        return data


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("role") in ("tool", "function"):
                raise Unsupported("role", f"{data['role']!r} messages are not supported (no tool calling)")
            reject_unsupported(
                data,
                {
                    "tool_calls": ((None, []), "not supported (no tool calling)"),
                    "function_call": ((None,), "not supported (no tool calling)"),
                },
            )
            content = data.get("content")
            if isinstance(content, list):
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if isinstance(kind, str) and kind != "text":
                        raise Unsupported("content", f"content parts of type {kind!r} are not supported (text only)")
        return data

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, description="Takes precedence over max_tokens.")
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, description="Alternatives per token, with logprobs: true.")
    parallel_tool_calls: Optional[bool] = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        no_tools = "not supported (no tool calling)"
        reject_unsupported(
            data,
            {
                "tools": ((None, []), no_tools),
                "tool_choice": ((None, "none"), no_tools),
                "functions": ((None, []), no_tools),
                "function_call": ((None, "none"), no_tools),
                "response_format": (
                    (None, {"type": "text"}),
                    'not supported (no structured output yet); only {"type": "text"}',
                ),
                "audio": ((None,), "not supported (text only)"),
                "modalities": ((None, ["text"]), "not supported (text only)"),
                "prediction": ((None,), "not supported"),
                "web_search_options": ((None,), "not supported"),
                "reasoning_effort": ((None,), "not supported"),
                "verbosity": ((None,), "not supported"),
            },
        )
        return data


class PromptTokensDetails(BaseModel):
    #: Prompt tokens whose KV cells came from the prefix cache instead of being evaluated.
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[Literal["length", "stop"]] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: Optional[list[TokenLogprob]] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Literal["length", "stop"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class WorkerHealth(BaseModel):
    index: int
    pid: Optional[int]
    alive: bool
    state: Literal["starting", "idle", "busy", "draining", "restarting"]
    busy: bool
    sequences: int = Field(description="Requests the worker is generating now.")
    parallel: int = Field(description="Requests it can generate at once (--parallel).")
    kv_cells_used: Optional[int] = Field(None, description="KV cache cells holding tokens of its running requests.")
    kv_cells: Optional[int] = Field(None, description="Its KV cache cells in all.")
    tokens_per_second: Optional[float] = Field(None, description="Tokens it generated per second, last 10 s.")
    seconds_in_state: float
    stuck: bool = Field(description="Busy past the request deadline, or not stopping a cancelled request.")
    restarts: int
    route_hits: int = Field(
        description="Requests sent to this worker because it last served the start of their prompt (prefix cache)."
    )


class ReplicaHealth(BaseModel):
    id: str = Field(description="The Ray Serve replica answering (also the x-llama-rs-replica header).")
    node: str = Field(description="The Ray node it runs on.")
    pid: int = Field(description="The replica's process.")


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    model: str
    n_ctx: int
    workers: list[WorkerHealth]
    queue: int
    queue_limit: int
    recent: list[dict[str, Any]]
    replica: Optional[ReplicaHealth] = Field(None, description="Only under `serve --ray`: which replica this is.")


REQUEST_MODELS = [SeedCompletionRequest, CompletionRequest, ChatRequest]
