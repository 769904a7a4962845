"""The OpenAI surface as today's clients call it, judged by the official `openai` client:
every field we accept does what OpenAI documents (compared with the library's own answer),
every field we do not implement is a 400 that says so, and the OpenAPI document is whole."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

import llama_rs

from serve_helpers import Server

SEED_DEFAULTS = dict(repeat_penalty=1.1)  # the OpenAI routes' default, see schemas.py


@pytest.fixture(scope="module")
def server():
    s = Server("-w", "2", "-t", "1", "--api-key", "sekret", key="sekret")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)


@pytest.fixture(scope="module")
def demo() -> llama_rs.Model:
    return llama_rs.Model.demo(n_ctx=512)


def test_max_completion_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=7, temperature=0
    )
    assert r.usage.completion_tokens <= 7
    r2 = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=7, max_tokens=100, temperature=0
    )
    assert r2.usage.completion_tokens <= 7 and r2.choices[0].message.content == r.choices[0].message.content


def test_content_parts_are_text(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi there"}], max_tokens=10, temperature=0
    )
    parts = client.chat.completions.create(
        model="m",
        max_tokens=10,
        temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="image_url.*not supported"):
        client.chat.completions.create(
            model="m",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
        )


def test_prompt_list_and_n_with_derived_seeds(client: openai.OpenAI, demo: llama_rs.Model) -> None:
    r = client.completions.create(model="m", prompt=["Q:", "A fool"], n=2, max_tokens=8, seed=40)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        prompt = ["Q:", "A fool"][c.index // 2]
        want = demo.complete(prompt, max_tokens=8, seed=40 + c.index, **SEED_DEFAULTS)
        assert c.text == want.text, c.index
    # Token-id prompts are prompts too.
    ids = demo.tokenize("Q:")
    r2 = client.completions.create(model="m", prompt=ids, max_tokens=8, seed=40)
    assert r2.choices[0].text == r.choices[0].text
    # Prompt tokens are counted once per prompt, completion tokens per choice.
    assert r.usage.prompt_tokens == len(demo.tokenize("Q:")) + len(demo.tokenize("A fool"))


def test_n_streams_every_choice(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=6, seed=1, stream=True
        )
    )
    text = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in range(3)
    }
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=6, seed=1
    )
    assert text == {c.index: c.message.content for c in r.choices}
    finished = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1, 2]


def test_chat_logprobs_are_the_models(client: openai.OpenAI, demo: llama_rs.Model, server: Server) -> None:
    r = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    # The same generation through the library, token by token.
    gen = demo.chat_stream([{"role": "user", "content": "hi"}], max_tokens=6, temp=0, logprobs=3, **SEED_DEFAULTS)
    text = "".join(gen)
    want = gen.take_logprobs()
    assert r.choices[0].message.content == text
    assert [t.logprob for t in content] == pytest.approx([lp for _, lp, _ in want], abs=1e-6)
    for got, (id, _, top) in zip(content, want):
        assert got.bytes == list(demo.token_bytes(id))
        assert [t.logprob for t in got.top_logprobs] == pytest.approx([x for _, x in top], abs=1e-6)
        assert [t.bytes for t in got.top_logprobs] == [list(demo.token_bytes(i)) for i, _ in top]
        assert got.logprob <= 0 and got.top_logprobs[0].logprob >= got.top_logprobs[-1].logprob
    # top_logprobs without logprobs is refused, as OpenAI does.
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], top_logprobs=2)


def test_completion_logprobs_and_echo(client: openai.OpenAI, demo: llama_rs.Model) -> None:
    r = client.completions.create(model="m", prompt="Never trust", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    gen = demo.generate("Never trust", max_tokens=5, temp=0, logprobs=2, **SEED_DEFAULTS)
    assert "".join(gen) == r.choices[0].text
    want = gen.take_logprobs()
    assert lp.token_logprobs == pytest.approx([x for _, x, _ in want], abs=1e-6)
    assert "".join(lp.tokens) == r.choices[0].text or r.choices[0].text.startswith("".join(lp.tokens).lstrip())
    assert all(len(d) <= 2 for d in lp.top_logprobs)
    assert lp.text_offset[0] == len("Never trust")
    # echo: the prompt comes first, and with max_tokens 0 and logprobs the prompt is scored
    # (what evaluation harnesses do): logprob of each prompt token given the ones before it.
    e = client.completions.create(model="m", prompt="Never trust a computer", max_tokens=0, echo=True, logprobs=1)
    assert e.choices[0].text == "Never trust a computer"
    ids = demo.tokenize("Never trust a computer")
    scored = demo.score(ids, 1)
    assert e.choices[0].logprobs.token_logprobs == pytest.approx([x for x, _ in scored], abs=1e-6)
    assert len(e.choices[0].logprobs.tokens) == len(ids) - 1  # BOS is context, not text
    e2 = client.completions.create(model="m", prompt="Q:", max_tokens=4, echo=True, temperature=0)
    plain = client.completions.create(model="m", prompt="Q:", max_tokens=4, temperature=0)
    assert e2.choices[0].text == "Q:" + plain.choices[0].text


def test_stop_penalties_and_bias(client: openai.OpenAI, demo: llama_rs.Model) -> None:
    kw = dict(max_tokens=30, temperature=0.9, seed=3)
    for extra in [
        dict(presence_penalty=1.5),
        dict(frequency_penalty=-1.0),
        dict(presence_penalty=0.5, frequency_penalty=1.2),
    ]:
        r = client.completions.create(model="m", prompt="Q:", **kw, **extra)
        want = demo.complete("Q:", max_tokens=30, temp=0.9, seed=3, **SEED_DEFAULTS, **extra)
        assert r.choices[0].text == want.text, extra
    base = demo.complete("Q:", max_tokens=30, temp=0.9, seed=3, **SEED_DEFAULTS).text
    for stop in [base[4:6], [base[4:6], "zzz"]]:
        r = client.completions.create(model="m", prompt="Q:", stop=stop, **kw)
        assert r.choices[0].text == base[: base.index(base[4:6])] and r.choices[0].finish_reason == "stop"
    forced = demo.tokenize("x", bos=False)[-1]
    r = client.completions.create(model="m", prompt="Q:", max_tokens=3, temperature=0, logit_bias={str(forced): 100})
    assert r.choices[0].text.replace(" ", "") == demo.detokenize([forced] * 3).replace(" ", "")


def test_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="m", prompt="Q:", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.completions.create(model="m", prompt="Q:", max_tokens=5, stream=True))
    assert all(c.usage is None for c in plain)


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools: not supported"),
        ({"tool_choice": "required"}, "tool_choice: not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format: not supported"),
        ({"modalities": ["audio"]}, "modalities: not supported"),
        ({"stream": "yes"}, "stream"),
        ({"temperature": "0.5"}, "temperature"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        (
            {"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]},
            "role: 'tool' messages are not supported",
        ),
        ({"n": 17}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"seed": 2**64}, "seed"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ],
)
def test_unsupported_or_bad_chat_fields_are_400(server: Server, extra: dict, needle: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **extra}
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"], r.json()


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"suffix": "end"}, "suffix: not supported"),
        ({"best_of": 3}, "best_of: not supported"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [5, 10**6]}, "outside the vocab"),
        ({"prompt": ["a"] * 9, "n": 2}, "more than 16 choices"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
    ],
)
def test_bad_completion_fields_are_400(server: Server, extra: dict, needle: str) -> None:
    r = server.post("/v1/completions", {"prompt": "Q:", "max_tokens": 3, **extra})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"], r.json()


def test_bearer_is_case_insensitive(server: Server) -> None:
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = httpx.post(
            server.url + "/api/completion",
            json={"prompt": "Q:", "tokens": 2},
            headers={"Authorization": f"{scheme} sekret"},
        )
        assert r.status_code == 200, scheme
    r = httpx.post(
        server.url + "/api/completion", json={"prompt": "Q:", "tokens": 2}, headers={"Authorization": "Basic sekret"}
    )
    assert r.status_code == 401


def test_demo_chat_answers_simple_messages(client: openai.OpenAI) -> None:
    """A model without a chat template gets a transcript it continues (not [INST] markers a
    base model ends at once)."""
    messages = [
        "Hello!",
        "Tell me a fortune.",
        "What is the meaning of life?",
        "Any advice for today?",
        "Say something funny.",
        "Who are you?",
        "What should I eat?",
        "Tell me about computers.",
        "Is it going to rain?",
        "Good night.",
    ]
    for i, m in enumerate(messages):
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": m}], max_tokens=40, seed=i)
        assert r.choices[0].message.content.strip(), m
        assert "User:" not in r.choices[0].message.content


def test_openapi_is_whole_and_docs_work_offline(server: Server) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', __import__("json").dumps(spec)))
    assert refs and refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])
    for path in ("/api/completion", "/v1/completions", "/v1/chat/completions"):
        documented = set(spec["paths"][path]["post"]["responses"])
        assert {"200", "400", "401", "413", "502", "503", "504"} <= documented, (path, documented)
        assert "$ref" in spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    html = httpx.get(server.url + "/docs").text
    assert "cdn" not in html.lower() and "https://" not in html
    assets = re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', html)
    assert len(assets) >= 2
    for a in assets:
        assert httpx.get(server.url + a).status_code == 200, a


def test_completion_prompts_parse_control_tokens_as_llama_server(client: openai.OpenAI, demo: llama_rs.Model) -> None:
    """A prompt formatted by hand for an instruct model: control tokens written in it are those
    tokens (as llama-server reads a prompt), and a BOS it starts with is the one BOS."""
    plain = client.completions.create(model="m", prompt="Q: hi", max_tokens=8, seed=3, temperature=0.8)
    with_bos = client.completions.create(model="m", prompt="<s>Q: hi", max_tokens=8, seed=3, temperature=0.8)
    assert with_bos.usage.prompt_tokens == plain.usage.prompt_tokens == len(demo.tokenize("Q: hi"))
    assert with_bos.choices[0].text == plain.choices[0].text
    marked = "Q: hi</s>A:"
    r = client.completions.create(model="m", prompt=marked, max_tokens=4, seed=3, temperature=0.8)
    ids = demo.tokenize(marked, special=True)
    assert demo.eos_token in ids and r.usage.prompt_tokens == len(ids) != len(demo.tokenize(marked))
    demo.reset()
    assert r.choices[0].text == demo.complete(ids, max_tokens=4, seed=3, temp=0.8).text
