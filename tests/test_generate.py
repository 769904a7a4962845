"""Generation: sampling reproducibility, stop strings, finish reasons, the Python API."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import llama_rs


@pytest.fixture(scope="module")
def demo() -> llama_rs.Model:
    return llama_rs.Model.demo()


PROMPT = "Never trust a computer"


def test_same_seed_same_text_different_seed_differs(demo) -> None:
    a = demo.complete(PROMPT, max_tokens=40, seed=7)
    b = demo.complete(PROMPT, max_tokens=40, seed=7)
    assert a == b
    others = {demo.complete(PROMPT, max_tokens=40, seed=s).text for s in range(8, 14)}
    assert len(others | {a.text}) > 3


def test_model_seed_is_the_default(demo) -> None:
    m = llama_rs.Model.demo(seed=123)
    assert m.complete(PROMPT, max_tokens=30).text == m.complete(PROMPT, max_tokens=30).text
    assert m.complete(PROMPT, max_tokens=30).text == demo.complete(PROMPT, max_tokens=30, seed=123).text


SCRIPT = """
import sys, llama_rs
m = llama_rs.Model.demo(n_threads=int(sys.argv[1]))
print(repr(m.complete("Q:", max_tokens=50, seed=99).text))
"""


def test_same_text_across_processes_and_thread_counts(demo) -> None:
    outs = {
        subprocess.run([sys.executable, "-c", SCRIPT, str(n)], capture_output=True, text=True, check=True).stdout
        for n in (1, 2, 3)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == repr(demo.complete("Q:", max_tokens=50, seed=99).text)


def test_top_k_one_is_greedy(demo) -> None:
    greedy = demo.complete(PROMPT, max_tokens=40, temp=0)
    for seed in (1, 2, 3):
        assert demo.complete(PROMPT, max_tokens=40, top_k=1, seed=seed).text == greedy.text


def test_generate_streams_the_complete_text(demo) -> None:
    pieces = list(demo.generate(PROMPT, max_tokens=40, seed=5))
    assert len(pieces) > 5
    assert "".join(pieces) == demo.complete(PROMPT, max_tokens=40, seed=5).text


def test_stop_strings_end_before_the_stop(demo) -> None:
    full = demo.complete(PROMPT, max_tokens=60, temp=0, repeat_penalty=1.0).text
    assert "--" in full
    cut = demo.complete(PROMPT, max_tokens=60, temp=0, repeat_penalty=1.0, stop=["--"])
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index("--")]
    # A stop string made of several tokens, first seen partly: the streamed pieces hold it back.
    word = full.split()[3]
    streamed = "".join(demo.generate(PROMPT, max_tokens=60, temp=0, repeat_penalty=1.0, stop=[word, "zzz"]))
    assert streamed == full[: full.index(word)]
    # A stop string that never appears changes nothing.
    same = demo.complete(PROMPT, max_tokens=60, temp=0, repeat_penalty=1.0, stop="qqqqq")
    assert same.text == full and same.finish_reason != "stop"


def test_finish_reasons(demo) -> None:
    r = demo.complete(PROMPT, max_tokens=5, temp=0)
    assert (r.finish_reason, r.tokens, r.prompt_tokens) == ("length", 5, 7)
    r = demo.complete(PROMPT, max_tokens=0)
    assert (r.text, r.tokens, r.finish_reason) == ("", 0, "length")
    small = llama_rs.Model.demo(n_ctx=12)
    r = small.complete(PROMPT, max_tokens=100, temp=0, repeat_penalty=1.0)
    # 7 prompt tokens + 5 evaluated generated tokens fill 12; the 6th is sampled from the last logits.
    assert r.finish_reason == "context" and r.tokens == 6
    # The trust prompt ends with EOS after 37 tokens (expected.json).
    r = demo.complete(PROMPT, max_tokens=100, temp=0, repeat_penalty=1.0)
    assert r.finish_reason == "eos" and r.tokens == 37


def test_prompt_longer_than_context(demo) -> None:
    small = llama_rs.Model.demo(n_ctx=8)
    with pytest.raises(ValueError, match="longer than the context of 8 tokens"):
        small.complete("one two three four five six seven eight nine ten")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temp": -0.5}, "temp"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"repeat_lastn": -2}, "repeat_lastn"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_sampling_parameters(demo, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        demo.complete(PROMPT, **kwargs)


def test_prompt_cache_reuse_gives_same_result(demo) -> None:
    m = llama_rs.Model.demo()
    a = m.complete("Q: What is the answer?", max_tokens=20, temp=0)
    short = m.complete("Q: What is", max_tokens=3, temp=0)  # shares a prefix
    b = m.complete("Q: What is the answer?", max_tokens=20, temp=0)
    assert a == b
    # Each reused what the one before left in the cache: never its last prompt token.
    assert a.cached_tokens == 0
    assert short.cached_tokens == short.prompt_tokens - 1
    # At least the shorter prompt's tokens (more where its generated tokens match the text).
    assert len(m.tokenize("Q: What is")) <= b.cached_tokens < b.prompt_tokens, b


def test_interleaved_generation_is_refused() -> None:
    m = llama_rs.Model.demo()
    g = m.generate(PROMPT, max_tokens=20)
    next(g)
    m.complete("Q:", max_tokens=2)
    with pytest.raises(ValueError, match="used for something else"):
        list(g)


def test_api_surface(demo) -> None:
    assert demo.n_ctx == 256 and demo.n_vocab == 1024
    assert demo.metadata["general.architecture"] == "llama"
    assert "fortunes-1M" in repr(demo) and "Q8_0" in repr(demo)
    assert demo.config["n_head_kv"] == 2
    logits = demo.eval(demo.tokenize("Q:"))
    assert logits.shape == (1024,) and logits.dtype == np.float32
    demo.reset()


def test_threads_run_in_parallel_without_the_gil() -> None:
    """Two models in two threads: the GIL is released while Rust computes, so their
    generations overlap in time (each runs several completions, about a second in all)."""
    a, b = llama_rs.Model.demo(n_threads=1), llama_rs.Model.demo(n_threads=1)
    spans = {}
    barrier = threading.Barrier(2)

    def work(name: str, m: llama_rs.Model) -> None:
        barrier.wait()
        start = time.monotonic()
        for seed in range(6):
            m.complete(PROMPT, max_tokens=200, temp=1.0, seed=seed, repeat_penalty=1.0)
        spans[name] = (start, time.monotonic())

    threads = [threading.Thread(target=work, args=(n, m)) for n, m in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert max(a0, b0) < min(a1, b1), "the two generations did not overlap"


INTERRUPT = """
import llama_rs, sys
m = llama_rs.Model.demo(n_ctx=256)
print("ready", flush=True)
try:
    while True:
        m.complete("Q:", max_tokens=250, temp=0.8)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_interrupts_complete() -> None:
    p = subprocess.Popen([sys.executable, "-c", INTERRUPT], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert "interrupted" in out


@pytest.mark.parametrize("bad", [-1, 2**40, 10**30, 1.5, "7", None])
def test_bad_token_ids_are_value_errors_naming_the_id(demo, bad) -> None:
    """Every entry point that takes ids checks them against the vocab: a ValueError naming
    the id, never an OverflowError from the conversion or a float silently truncated."""
    calls = [
        lambda: demo.generate([1, bad]),
        lambda: demo.complete_many([[1, bad]]),
        lambda: demo.eval([bad]),
        lambda: demo.detokenize([bad]),
        lambda: demo.score([1, bad]),
        lambda: demo.token_bytes(bad),
        lambda: demo.token_piece(bad),
        lambda: llama_rs.Tokenizer(demo.path).decode([bad]),
    ]
    for call in calls:
        with pytest.raises((ValueError, TypeError)) as e:
            call()
        assert "token id" in str(e.value) and "vocab" in str(e.value), str(e.value)
    # numpy integers are integers
    assert demo.detokenize(np.array([5, 6])) == demo.detokenize([5, 6])
