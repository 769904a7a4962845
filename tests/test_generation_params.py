"""Generation parameters: validation (ParamError), logit bias, presence/frequency penalties,
log-probabilities, prompt scoring and token bytes, checked against numpy references built
from the model's own logits (`Model.eval`)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import pickle

import numpy as np
import pytest

import llama_rs
from llama_rs import GenerationConfig, ParamError, check_generation

PROMPT = "Never trust a computer"


@pytest.fixture(scope="module")
def demo() -> llama_rs.Model:
    return llama_rs.Model.demo()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def top_n(lp: np.ndarray, n: int) -> list[int]:
    """Ids of the n largest log-probabilities, ties by lower id."""
    return [int(i) for i in np.lexsort((np.arange(len(lp)), -lp))[:n]]


def reference_greedy(model, prompt_ids, n, repeat_penalty=1.3, repeat_lastn=64, presence=0.0, frequency=0.0, bias=None):
    """The greedy chain by the documented formula: logit_bias, repeat penalty over the last
    `repeat_lastn` context tokens, then `lg[j] -= c[j] * frequency + (c[j] > 0) * presence`
    with c the counts of generated tokens; argmax (lowest id on ties). In float32 like the
    engine."""
    f32 = np.float32
    model.reset()
    logits = model.eval(prompt_ids)
    history, generated = list(prompt_ids), []
    for _ in range(n):
        lg = logits.astype(f32).copy()
        for t, b in (bias or {}).items():
            lg[t] += f32(b)
        if repeat_penalty != 1.0 and repeat_lastn > 0:
            for t in set(history[-repeat_lastn:]):
                lg[t] = lg[t] / f32(repeat_penalty) if lg[t] > 0 else lg[t] * f32(repeat_penalty)
        if presence or frequency:
            ids, counts = np.unique(np.array(generated, dtype=np.int64), return_counts=True)
            lg[ids] -= counts.astype(f32) * f32(frequency) + f32(presence)
        tok = int(np.argmax(lg))
        if tok == model.eos_token:
            break
        generated.append(tok)
        history.append(tok)
        logits = model.eval([tok])
    return generated


def generated_ids(model, prompt, n, **kw):
    gen = model.generate(prompt, max_tokens=n, temp=0, logprobs=0, **kw)
    list(gen)
    return [t[0] for t in gen.take_logprobs()]


# -- log-probabilities -------------------------------------------------------------------


def test_logprobs_are_log_softmax_of_the_raw_logits() -> None:
    m = llama_rs.Model.demo()
    # Default repeat penalty: the chosen token is not always the raw argmax, and its
    # logprob must still be the raw one.
    c = m.complete(PROMPT, max_tokens=30, temp=0, logprobs=5)
    assert c.logprobs is not None and len(c.logprobs) == c.tokens > 10
    assert any(tok != top[0][0] for tok, _, top in c.logprobs)  # the penalty chose otherwise
    m.reset()
    logits = m.eval(m.tokenize(PROMPT))
    for tok, lp, top in c.logprobs:
        ref = log_softmax(logits)
        assert lp == pytest.approx(ref[tok], abs=1e-5)
        assert [t for t, _ in top] == top_n(ref, 5)
        assert [v for _, v in top] == pytest.approx([ref[t] for t in top_n(ref, 5)], abs=1e-5)
        assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
        logits = m.eval([tok])


def test_logprobs_with_sampling_and_zero_alternatives() -> None:
    m = llama_rs.Model.demo()
    text = m.complete(PROMPT, max_tokens=25, seed=11).text
    gen = m.generate(PROMPT, max_tokens=25, seed=11, logprobs=0)
    assert "".join(gen) == text  # recording changes nothing
    entries = gen.take_logprobs()
    assert len(entries) == gen.tokens and all(top == [] for _, _, top in entries)
    m.reset()
    logits = m.eval(m.tokenize(PROMPT))
    for tok, lp, _ in entries:
        assert lp == pytest.approx(log_softmax(logits)[tok], abs=1e-5)
        logits = m.eval([tok])
    assert m.detokenize([t for t, _, _ in entries]) == text


def test_take_logprobs_drains_and_eos_records_nothing(demo) -> None:
    # This prompt ends with EOS after 37 greedy tokens without repeat penalty (test_generate).
    gen = demo.generate(PROMPT, max_tokens=100, temp=0, repeat_penalty=1.0, logprobs=2)
    taken = []
    for _ in gen:
        taken += gen.take_logprobs()
    taken += gen.take_logprobs()
    assert gen.finish_reason == "eos" and len(taken) == gen.tokens == 37
    assert gen.take_logprobs() == []
    assert demo.eos_token not in [t for t, _, _ in taken]
    off = demo.generate(PROMPT, max_tokens=10, temp=0)
    list(off)
    assert off.take_logprobs() == []
    assert demo.complete(PROMPT, max_tokens=3).logprobs is None


# -- scoring -----------------------------------------------------------------------------


def test_score_agrees_with_eval_all_logits(demo) -> None:
    ids = demo.tokenize("A fool and his money are soon parted.")
    scored = demo.score(ids, top_n=4)
    assert len(scored) == len(ids) - 1
    assert demo.n_past == len(ids)  # the cache holds ids afterwards
    demo.reset()
    rows = demo.eval(ids, all_logits=True)
    for i, (lp, top) in enumerate(scored):
        ref = log_softmax(rows[i])
        assert lp == pytest.approx(ref[ids[i + 1]], abs=1e-5)
        assert [t for t, _ in top] == top_n(ref, 4)
        assert [v for _, v in top] == pytest.approx(ref[top_n(ref, 4)], abs=1e-5)
    assert demo.score(ids[:1]) == []
    assert all(top == [] for _, top in demo.score(ids))


def test_score_rejects_bad_input(demo) -> None:
    for ids in ([], [0, -1], [0, demo.n_vocab], [0, 10**30]):
        with pytest.raises(ValueError):
            demo.score(ids)
    with pytest.raises(ValueError, match="context"):
        llama_rs.Model.demo(n_ctx=4).score(list(range(1, 6)))
    for n in (-1, demo.n_vocab + 1, 2**80):
        with pytest.raises(ValueError, match="top_n"):
            demo.score([1, 2], top_n=n)


# -- token bytes -------------------------------------------------------------------------


def test_token_bytes(demo) -> None:
    text = "Hello, wörld!\nBye"
    ids = demo.tokenize(text, bos=False)
    joined = b"".join(demo.token_bytes(i) for i in ids).decode()
    assert joined.removeprefix(" ") == demo.detokenize(ids) == text
    assert demo.token_bytes(demo.bos_token) == b"" and demo.token_bytes(demo.eos_token) == b""
    for bad in (-1, demo.n_vocab, 2**70):
        with pytest.raises(ValueError, match=f"outside the vocab of {demo.n_vocab}"):
            demo.token_bytes(bad)


# -- penalties and bias, against the numpy reference -------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(frequency_penalty=2.0),
        dict(presence_penalty=2.0),
        dict(presence_penalty=0.7, frequency_penalty=0.4),
        dict(presence_penalty=-1.0, frequency_penalty=0.5, repeat_penalty=1.0),
        dict(frequency_penalty=1.5, repeat_penalty=1.0),
    ],
)
def test_presence_and_frequency_follow_the_formula(demo, kw) -> None:
    prompt = demo.tokenize("Q: Why")  # greedy text that repeats itself, so penalties matter
    got = generated_ids(demo, prompt, 60, **kw)
    ref = reference_greedy(
        demo,
        prompt,
        60,
        presence=kw.get("presence_penalty", 0.0),
        frequency=kw.get("frequency_penalty", 0.0),
        repeat_penalty=kw.get("repeat_penalty", 1.3),
    )
    assert got == ref
    plain = generated_ids(demo, prompt, 60, repeat_penalty=kw.get("repeat_penalty", 1.3))
    assert got != plain  # the penalty did something


def test_prompt_tokens_do_not_count_for_presence_and_frequency(demo) -> None:
    # A context whose greedy next token is already in it: were the context counted, the
    # penalties would push that token down.
    prompt = demo.tokenize(PROMPT)
    chain = reference_greedy(demo, prompt, 40, repeat_penalty=1.0)
    k = next(k for k in range(len(chain)) if chain[k] in prompt + chain[:k])
    ids = prompt + chain[:k]
    demo.reset()
    logits = demo.eval(ids).copy()
    counts = np.bincount(ids, minlength=demo.n_vocab).astype(np.float32)
    assert int(np.argmax(logits - (counts * 2 + (counts > 0) * 2))) != chain[k]
    assert generated_ids(demo, ids, 1, repeat_penalty=1.0, frequency_penalty=2.0, presence_penalty=2.0) == [chain[k]]


def test_logit_bias(demo) -> None:
    prompt = demo.tokenize(PROMPT)
    demo.reset()
    rare = int(np.argmin(demo.eval(prompt)))
    assert generated_ids(demo, prompt, 5, logit_bias={rare: 100}) == [rare] * 5
    greedy = generated_ids(demo, prompt, 20)
    bias = {greedy[0]: -100.0, greedy[3]: 3.5}
    got = generated_ids(demo, prompt, 20, logit_bias=bias)
    assert got == reference_greedy(demo, prompt, 20, bias=bias)
    assert got[0] != greedy[0]
    # numpy ints are fine as ids and biases, and so are decimal strings (OpenAI's JSON keys).
    assert generated_ids(demo, prompt, 3, logit_bias={np.int64(rare): np.float32(100)}) == [rare] * 3
    assert generated_ids(demo, prompt, 3, logit_bias={str(rare): 100}) == [rare] * 3


# -- validation --------------------------------------------------------------------------

BAD = [
    ("seed", 2**64),
    ("seed", -(2**63) - 1),
    ("seed", 10**30),
    ("seed", 1.5),
    ("temp", math.inf),
    ("temp", math.nan),
    ("temp", -0.5),
    ("temp", 10**400),
    ("top_p", 5),
    ("top_p", 0.0),
    ("top_p", math.nan),
    ("top_k", -1),
    ("top_k", 2**31),
    ("repeat_lastn", -2),
    ("repeat_lastn", 10**50),
    ("max_tokens", 2**70),
    ("max_tokens", -1),
    ("max_tokens", 5.0),
    ("repeat_penalty", 0.0),
    ("repeat_penalty", math.inf),
    ("presence_penalty", 2.5),
    ("presence_penalty", math.nan),
    ("frequency_penalty", -3),
    ("logprobs", 21),
    ("logprobs", -1),
    ("logprobs", 2**64),
    ("logit_bias", {1024: 1.0}),
    ("logit_bias", {-1: 1.0}),
    ("logit_bias", {3: 1e9}),
    ("logit_bias", {3: math.nan}),
    ("logit_bias", {2**80: 1.0}),
    ("logit_bias", [1, 2]),
    ("logit_bias", {"x": 1.0}),
    ("logit_bias", {"1024": 1.0}),
    ("logit_bias", {3: "1"}),
    ("stop", [""]),
    ("stop", ["x"] * 17),
    ("stop", ["y" * 257]),
    ("stop", 5),
]


@pytest.mark.parametrize("param,value", BAD, ids=[f"{p}={v!r}"[:40] for p, v in BAD])
def test_bad_values_raise_param_error(demo, param, value) -> None:
    with pytest.raises(ParamError) as e:
        check_generation(n_vocab=demo.n_vocab, **{param: value})
    assert e.value.param == param and param in str(e.value)
    with pytest.raises(ParamError) as e2:
        demo.generate(PROMPT, **{param: value})
    assert e2.value.param == param and str(e2.value) == str(e.value)
    with pytest.raises(ParamError):
        demo.complete(PROMPT, **{param: value})
    # Nothing was left half done.
    assert demo.complete(PROMPT, max_tokens=12, temp=0) == demo.complete(PROMPT, max_tokens=12, temp=0)


def test_param_error_messages_and_type() -> None:
    with pytest.raises(ParamError, match=r"^top_p must be in \(0, 1\], got 5\.0$"):
        check_generation(top_p=5.0)
    with pytest.raises(ParamError, match=r"-2\^63 to 2\^64-1"):
        check_generation(seed=2**64)
    e = ParamError("temp", "temp is bad")
    assert isinstance(e, ValueError) and e.param == "temp" and str(e) == "temp is bad"
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), e2.param, str(e2)) == (ParamError, "temp", "temp is bad")
    with pytest.raises(ParamError) as info:
        llama_rs.Model.demo(seed=2**64)
    assert info.value.param == "seed"


def test_good_edge_values_pass() -> None:
    check_generation()
    check_generation(seed=2**64 - 1)
    check_generation(seed=-(2**63))
    check_generation(seed=None, logprobs=0)
    check_generation(logprobs=20, top_p=1.0, temp=0.0, top_k=0, max_tokens=2**31 - 1)
    check_generation(presence_penalty=-2, frequency_penalty=2, stop="x", repeat_lastn=0)
    check_generation(logit_bias={0: -100, 1023: 100}, n_vocab=1024)
    check_generation(logit_bias={5000: 1.0})  # ids are only checked against a known vocab
    with pytest.raises(ParamError):
        check_generation(logit_bias={5000: 1.0}, n_vocab=1024)
    with pytest.raises(TypeError, match="tempp"):
        check_generation(tempp=1.0)


def test_full_u64_seeds_are_used(demo) -> None:
    a = demo.complete(PROMPT, max_tokens=20, seed=2**64 - 1)
    assert a == demo.complete(PROMPT, max_tokens=20, seed=2**64 - 1)
    texts = {demo.complete(PROMPT, max_tokens=20, seed=s).text for s in (2**63, 2**63 + 1, 2**64 - 2)}
    assert len(texts | {a.text}) > 2
    # The model's default seed takes the same range.
    assert llama_rs.Model.demo(seed=2**64 - 1).complete(PROMPT, max_tokens=20) == a


# -- the defaults, declared once ---------------------------------------------------------


def test_generation_config_is_the_single_source_of_defaults() -> None:
    cfg = GenerationConfig()
    names = [f.name for f in dataclasses.fields(GenerationConfig)]
    for method in (llama_rs.Model.generate, llama_rs.Model.complete):
        params = inspect.signature(method).parameters
        assert {n: params[n].default for n in names} == dataclasses.asdict(cfg)
    assert (cfg.max_tokens, cfg.top_k, cfg.top_p, cfg.temp, cfg.repeat_penalty, cfg.repeat_lastn) == (
        128,
        40,
        0.9,
        0.8,
        1.3,
        64,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temp = 1.0  # type: ignore[misc]
    # Every field has a docstring (a string right after it in the class body).
    tree = ast.parse(inspect.getsource(GenerationConfig))
    body = tree.body[0].body
    documented = {
        a.target.id
        for a, b in zip(body, body[1:])
        if isinstance(a, ast.AnnAssign)
        and isinstance(b, ast.Expr)
        and isinstance(b.value, ast.Constant)
        and isinstance(b.value.value, str)
    }
    assert documented == set(names)
