"""What every deployment of the server must answer with the demo model, as `llama-rs serve`
does: the same checks run against a local server (test_serve.py) and against Ray Serve's
proxy in front of replicas (test_serve_ray.py)."""

from __future__ import annotations

import json

import httpx
import openai

import llama_rs

from serve_helpers import Endpoint

#: (path, body, status, words in the error message); the server runs with --max-body 20000.
BAD_REQUESTS = [
    ("/api/completion", b"{not json", 400, "not valid JSON"),
    ("/api/completion", b"[1, 2]", 400, "JSON object"),
    ("/api/completion", {"tokens": 5}, 400, "prompt"),
    ("/api/completion", {"prompt": "x"}, 400, "tokens"),
    ("/api/completion", {"prompt": 5, "tokens": 5}, 400, "prompt"),
    ("/api/completion", {"prompt": "x", "tokens": "many"}, 400, "tokens"),
    ("/api/completion", {"prompt": "x", "tokens": 0}, 400, "tokens"),
    ("/api/completion", {"prompt": "x", "tokens": 100000}, 400, "beyond the context"),
    ("/api/completion", {"prompt": "x", "tokens": 5, "top_p": 0}, 400, "top_p"),
    ("/api/completion", {"prompt": "x", "tokens": 5, "top_p": 1.5}, 400, "top_p"),
    ("/api/completion", {"prompt": "x", "tokens": 5, "temp": -1}, 400, "temp"),
    ("/api/completion", {"prompt": "x", "tokens": 5, "top_k": -1}, 400, "top_k"),
    ("/api/completion", {"prompt": "word " * 700, "tokens": 5}, 400, "longer than the context"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5, "temperature": -2}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "n": 17}, 400, "n"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/api/completion", {"prompt": "x" * 30000, "tokens": 5}, 413, "larger than the limit"),
]


def check_seed_completion(s: Endpoint) -> None:
    body = {"prompt": "Never trust a computer", "tokens": 30, "seed": 4}
    r = s.post("/api/completion", body)
    assert r.status_code == 200
    out = r.json()
    assert set(out) == {"Prompt", "Text", "Tokens", "CompleteReason"}
    want = llama_rs.Model.demo(n_ctx=512).complete("Never trust a computer", max_tokens=30, seed=4)
    assert out == {
        "Prompt": "Never trust a computer",
        "Text": want.text,
        "Tokens": want.tokens,
        "CompleteReason": want.finish_reason,
    }
    # No Content-Type (the seed's clients) works too, and stop strings end the text.
    r = s.post("/api/completion", json.dumps({**body, "stop": [want.text[5:8]]}), headers={"content-type": ""})
    assert r.status_code == 200 and r.json()["CompleteReason"] == "stop"
    assert r.json()["Text"] == want.text[: want.text.index(want.text[5:8])]


def check_openai_completions(s: Endpoint) -> None:
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused")
    models = client.models.list()
    assert [m.id for m in models.data] == ["fortunes-1M"]
    r = client.completions.create(model="fortunes-1M", prompt="Q:", max_tokens=12, temperature=0)
    want = llama_rs.Model.demo(n_ctx=512).complete("Q:", max_tokens=12, temp=0, repeat_penalty=1.1)
    assert r.choices[0].text == want.text
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == want.tokens
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    pieces = list(
        client.completions.create(model="fortunes-1M", prompt="Q:", max_tokens=12, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in pieces) == want.text
    assert pieces[-1].choices[0].finish_reason in ("length", "stop")


def check_openai_chat(s: Endpoint) -> None:
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused")
    msgs = [{"role": "system", "content": "You write fortunes."}, {"role": "user", "content": "Tell me one."}]
    r = client.chat.completions.create(model="fortunes-1M", messages=msgs, max_tokens=20, temperature=0, seed=1)
    assert r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10
    stream = client.chat.completions.create(
        model="fortunes-1M", messages=msgs, max_tokens=20, temperature=0, seed=1, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def check_health_docs_and_page(s: Endpoint, workers: int) -> dict:
    """/health (returned: the caller checks what differs), the OpenAPI document, /docs, the page."""
    h = s.health()
    assert h["status"] == "ok" and h["model"] == "fortunes-1M" and h["queue"] == 0
    assert [w["alive"] for w in h["workers"]] == [True] * workers
    assert all(set(w) >= {"busy", "restarts", "pid"} for w in h["workers"])
    spec = httpx.get(s.url + "/openapi.json").json()
    assert {"/api/completion", "/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])
    assert httpx.get(s.url + "/docs").status_code == 200
    page = httpx.get(s.url + "/").text
    assert "<textarea" in page and "fortunes-1M" in page and "/v1/completions" in page
    assert "http://" not in page and "https://" not in page  # self-contained, works offline
    return h


def check_bad_request(s: Endpoint, path: str, body, status: int, needle: str) -> None:
    r = s.post(path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"], err
    # ... and the server keeps serving.
    assert s.post("/api/completion", {"prompt": "Q:", "tokens": 2}).status_code == 200


def check_unknown_route(s: Endpoint) -> None:
    r = httpx.get(s.url + "/nope")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
