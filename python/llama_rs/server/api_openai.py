"""OpenAI's `POST /v1/completions` and `POST /v1/chat/completions`, as the official client
calls them: several prompts and choices, log-probabilities, echo, streaming with usage."""

from __future__ import annotations

import time
import uuid
from typing import Optional

from fastapi import FastAPI, Request

from . import docs, schemas
from .edge import ApiError, checked, completion_prompts, parse_body, responses, stop_list
from .runner import Job, Runner, seeds
from .schemas import ChatRequest, CompletionRequest, OpenAIRequest
from .shapes import Choice, chat_logprobs, completion_logprobs, token_text, usage


def register(app: FastAPI, runner: Runner, auth: list) -> None:
    cfg = runner.cfg

    def openai_params(req: OpenAIRequest, max_tokens: int, logprobs: Optional[int], names: dict) -> dict:
        bias = None
        if req.logit_bias is not None:
            try:
                bias = {int(k): v for k, v in req.logit_bias.items()}
            except ValueError:
                raise ApiError(
                    400, "logit_bias: keys must be token ids (integers, as strings)", param="logit_bias"
                ) from None
        return checked(
            dict(
                max_tokens=max_tokens,
                top_k=req.top_k,
                top_p=req.top_p,
                temp=req.temperature,
                repeat_penalty=req.repeat_penalty,
                repeat_lastn=req.repeat_last_n,
                seed=req.seed,
                stop=stop_list(req.stop),
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                logit_bias=bias,
                logprobs=logprobs,
            ),
            names,
            cfg.n_vocab,
        )

    def jobs_for(
        prompts: list, params: dict, n: int, echo: bool, names: dict, messages: Optional[list] = None
    ) -> list[Job]:
        if len(prompts) * n > schemas.MAX_CHOICES:
            raise ApiError(
                400, f"n: {len(prompts)} prompt(s) x n={n} is more than {schemas.MAX_CHOICES} choices", param="n"
            )
        per = seeds(params["seed"], len(prompts) * n)
        return [
            Job(p, {**params, "seed": per[i * n + j]}, i * n + j, i, echo=echo, names=names, messages=messages)
            for i, p in enumerate(prompts)
            for j in range(n)
        ]

    def include_usage(req: OpenAIRequest) -> bool:
        return bool(req.stream_options and req.stream_options.include_usage)

    @app.post(
        "/v1/completions",
        dependencies=auth,
        tags=["openai"],
        openapi_extra=docs.json_body(CompletionRequest),
        responses=responses(schemas.CompletionResponse, stream=True),
    )
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        prompts = completion_prompts(req.prompt, cfg.n_vocab)
        names = {"temp": "temperature", "repeat_lastn": "repeat_last_n"}
        max_tokens = runner.check_tokens(
            schemas.COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens,
            "max_tokens",
            allow_zero=req.echo,
        )
        params = openai_params(req, max_tokens, req.logprobs, names)
        jobs = jobs_for(prompts, params, req.n, req.echo, names)
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def body(choices: list[dict], **extra) -> dict:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": cfg.model_name,
                "choices": choices,
                **extra,
            }

        def lp(tokens: list[dict], offset: int) -> Optional[dict]:
            return completion_logprobs(tokens, offset) if req.logprobs is not None else None

        def prompt_chars(job: Job) -> int:  # where the completion starts in prompt + text
            return len(job.prompt) if isinstance(job.prompt, str) and not job.echo else 0

        if req.stream:
            offsets: dict[int, int] = {}
            done: list[Choice] = []

            def frame(job: Optional[Job], msg: Optional[dict]) -> list[dict]:
                if job is None:
                    return [body([], usage=usage(done))] if include_usage(req) else []
                extra = {"usage": None} if include_usage(req) else {}
                tokens = msg.get("logprobs") or []
                start = offsets.get(job.index, prompt_chars(job))
                offsets[job.index] = start + sum(len(token_text(t)) for t in tokens)
                if "echo" in msg:
                    return [
                        body(
                            [
                                {
                                    "text": msg["echo"],
                                    "index": job.index,
                                    "finish_reason": None,
                                    "logprobs": lp(tokens, start),
                                }
                            ],
                            **extra,
                        )
                    ]
                if msg.get("done"):
                    c = Choice(job.index, job.prompt_index, done=msg)
                    done.append(c)
                    return [
                        body(
                            [{"text": "", "index": job.index, "logprobs": None, "finish_reason": c.finish_reason}],
                            **extra,
                        )
                    ]
                return [
                    body(
                        [
                            {
                                "text": msg["text"],
                                "index": job.index,
                                "finish_reason": None,
                                "logprobs": lp(tokens, start),
                            }
                        ],
                        **extra,
                    )
                ]

            return await runner.stream(request, jobs, frame)

        choices = await runner.collect(request, jobs)

        def one(c: Choice) -> dict:
            return {
                "text": c.echo + c.text,
                "index": c.index,
                "finish_reason": c.finish_reason,
                "logprobs": lp(c.echo_tokens + c.tokens, prompt_chars(jobs[c.index])),
            }

        return body([one(c) for c in choices], usage=usage(choices))

    @app.post(
        "/v1/chat/completions",
        dependencies=auth,
        tags=["openai"],
        openapi_extra=docs.json_body(ChatRequest),
        responses=responses(schemas.ChatCompletionResponse, stream=True),
    )
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatRequest)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        limit_name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        names = {
            "temp": "temperature",
            "repeat_lastn": "repeat_last_n",
            "logprobs": "top_logprobs",
            "max_tokens": limit_name,
        }
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = runner.check_tokens(
            min(schemas.CHAT_DEFAULT_MAX_TOKENS, cfg.n_ctx) if limit is None else limit, limit_name
        )
        params = openai_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None, names)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        jobs = jobs_for([None], params, req.n, False, names, messages)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        if req.stream:
            done: list[Choice] = []
            started: set[int] = set()

            def chunk(index: int, delta: dict, finish: Optional[str] = None, logprobs=None) -> dict:
                out = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": cfg.model_name,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                }
                return {**out, "usage": None} if include_usage(req) else out

            def frame(job: Optional[Job], msg: Optional[dict]) -> list[dict]:
                if job is None:
                    if not include_usage(req):
                        return []
                    return [
                        {
                            "id": ident,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": cfg.model_name,
                            "choices": [],
                            "usage": usage(done),
                        }
                    ]
                out = []
                if job.index not in started:
                    started.add(job.index)
                    out.append(chunk(job.index, {"role": "assistant", "content": ""}))
                if msg.get("done"):
                    c = Choice(job.index, job.prompt_index, done=msg)
                    done.append(c)
                    out.append(chunk(job.index, {}, c.finish_reason))
                elif "text" in msg:
                    logprobs = chat_logprobs(msg.get("logprobs") or []) if req.logprobs else None
                    out.append(chunk(job.index, {"content": msg["text"]}, logprobs=logprobs))
                return out

            return await runner.stream(request, jobs, frame)

        choices = await runner.collect(request, jobs)
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": cfg.model_name,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(c.tokens) if req.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": usage(choices),
        }
