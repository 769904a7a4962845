"""The seed's (llama-go's) `POST /api/completion`."""

from __future__ import annotations

from fastapi import FastAPI, Request

from . import docs, schemas
from .edge import checked, parse_body, responses, stop_list
from .runner import Job, Runner
from .schemas import SeedCompletionRequest

NAMES = {"max_tokens": "tokens"}  # engine parameter -> this API's field


def register(app: FastAPI, runner: Runner, auth: list) -> None:
    @app.post(
        "/api/completion",
        dependencies=auth,
        tags=["seed"],
        openapi_extra=docs.json_body(SeedCompletionRequest),
        responses=responses(schemas.SeedCompletionResponse),
        summary="The seed's completion endpoint",
        description='CompleteReason is "length" (tokens reached), "eos" (the model ended the text), "stop" '
        '(a stop string) or "context" (the context is full).',
    )
    async def seed_completion(request: Request):
        req = await parse_body(request, SeedCompletionRequest)
        params = checked(
            dict(
                max_tokens=runner.check_tokens(req.tokens, "tokens"),
                top_k=req.top_k,
                top_p=req.top_p,
                temp=req.temp,
                repeat_penalty=req.repeat_penalty,
                repeat_lastn=req.repeat_lastn,
                seed=req.seed,
                stop=stop_list(req.stop),
            ),
            NAMES,
            runner.cfg.n_vocab,
        )
        (c,) = await runner.collect(request, [Job(req.prompt, params, names=NAMES)])
        return {
            "Prompt": req.prompt,
            "Text": c.text,
            "Tokens": c.done["tokens"],
            "CompleteReason": c.done["finish_reason"],
        }
