"""Continuous batching from Python: `Model.generate_many` / `complete_many` give each prompt
exactly what `complete` gives it alone, whatever runs beside it."""

from __future__ import annotations

import pytest

import llama_rs
from llama_rs import KvFull, ParamError

PROMPTS = [
    "Never trust a computer",
    "The meaning of life is",
    "Q: Why did the chicken cross the road?\nA:",
    "A",
    "Never trust a computer you can't throw out a window, and never",
]


@pytest.fixture(scope="module")
def model() -> llama_rs.Model:
    return llama_rs.Model.demo(n_ctx=128, n_threads=2)


@pytest.mark.parametrize("n_parallel", [None, 2, 1])
def test_each_prompt_gets_what_it_gets_alone(model: llama_rs.Model, n_parallel: int | None) -> None:
    params = dict(max_tokens=24, temp=0.9, seed=7, stop=["\n\n"], logprobs=3)
    alone = []
    for p in PROMPTS:
        model.reset()
        alone.append(model.complete(p, **params))
    many = model.complete_many(PROMPTS, n_parallel=n_parallel, **params)
    assert [(c.text, c.tokens, c.prompt_tokens, c.finish_reason, c.logprobs) for c in many] == [
        (c.text, c.tokens, c.prompt_tokens, c.finish_reason, c.logprobs) for c in alone
    ]
    assert any(c.tokens > 0 for c in many)


def test_generate_many_tags_pieces_by_prompt(model: llama_rs.Model) -> None:
    texts = [""] * len(PROMPTS)
    seen = set()
    for i, piece in model.generate_many(PROMPTS, max_tokens=12, temp=0, seed=1):
        texts[i] += piece
        seen.add(i)
    assert seen == set(range(len(PROMPTS)))
    greedy = model.complete_many(PROMPTS, max_tokens=12, temp=0, seed=1)
    assert texts == [c.text for c in greedy]


def test_bad_requests_are_clear_errors(model: llama_rs.Model) -> None:
    with pytest.raises(ParamError) as e:
        list(model.generate_many(PROMPTS, top_p=2.0))
    assert e.value.param == "top_p"
    with pytest.raises(ValueError, match="longer than the context"):
        model.complete_many(["word " * 400])
    with pytest.raises(ValueError, match="n_parallel"):
        model.complete_many(PROMPTS, n_parallel=0)
    with pytest.raises(TypeError, match="logprob"):
        model.complete_many(PROMPTS, logprob=2)
    with pytest.raises(ParamError) as e:
        model.complete_many(PROMPTS, logprobs=-1)
    assert e.value.param == "logprobs"
    assert model.complete_many([]) == []


def test_a_full_kv_pool_refuses_until_a_sequence_finishes(model: llama_rs.Model) -> None:
    b = model.batch_engine(3, n_ctx=128, kv_cells=64)
    assert (b.kv_cells, b.kv_allocated, b.kv_bytes, b.n_ctx) == (64, 0, 0, 64)
    params = dict(max_tokens=30, temp=0.9, seed=3)
    first = b.add("Never trust a computer", params)
    with pytest.raises(KvFull, match="KV cache is full"):
        b.add("The meaning of life is", params)  # a slot is free, the cells are not
    assert b.active == 1
    with pytest.raises(ValueError, match="whole pool"):
        b.add(list(range(1, 70)), params)  # can never fit
    texts: dict[int, str] = {first: ""}
    second = None
    while b.active or second is None:
        for e in b.step():
            assert e.error is None
            texts[e.id] += e.piece or ""
        if second is None and not b.active:
            second = b.add("The meaning of life is", params)
            texts[second] = ""
        assert 0 < b.kv_allocated <= 64 and b.kv_bytes > 0
    model.reset()
    assert texts[first] == model.complete("Never trust a computer", **params).text
    model.reset()
    assert texts[second] == model.complete("The meaning of life is", **params).text


def _threads() -> int:
    return int(open("/proc/self/status").read().split("Threads:")[1].split()[0])


def _settled_threads() -> int:
    """The thread count once two reads 50 ms apart agree (at most 2 s)."""
    import time

    n = _threads()
    for _ in range(40):
        time.sleep(0.05)
        if (m := _threads()) == n:
            return n
        n = m
    return n


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_batch_engine_starts_only_its_own_threads(model: llama_rs.Model) -> None:
    # Its slots share the engine's threads: 16 slots on 2 threads add 2, not 18. (Threads of
    # engines dropped by earlier tests may still be exiting: count once the number settles.)
    before = _settled_threads()
    engine = model.batch_engine(16, n_ctx=32, n_threads=2)
    assert _settled_threads() - before <= 2
    del engine
