"""LLAMA_RS_ISA forces a lower kernel level; every level gives the same bits (the numerics
contract), checked on whole forward passes in fresh processes (the level is fixed per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import need_data

from llama_rs import _core

LEVELS = ["portable", "avx2", "avx512", "amx"]
CPU_LEVEL = _core.kernel_level()[2] if "LLAMA_RS_ISA" not in os.environ else None

PROBE = r"""
import hashlib, json, sys
import numpy as np
import llama_rs
from llama_rs import _core
out = {"level": _core.kernel_level(), "prefetch": _core.prefetch_hints()}
for path in sys.argv[1:]:
    m = llama_rs.Model.demo(n_ctx=128) if path == "demo" else llama_rs.Model(path, n_ctx=128)
    # More than 16 tokens, so prompts take the AMX tiles where the CPU has them.
    ids = m.tokenize("Never trust a computer you can't throw out a window. " * 3)
    assert len(ids) > 32, len(ids)
    logits = [m.eval(ids, all_logits=True)]
    # Then one token at a time, as generation runs (its own kernels over repacked weights).
    logits += [m.eval([t]) for t in ids[:4]]
    h = hashlib.sha256()
    for x in logits:
        h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    out[path] = h.hexdigest()
print(json.dumps(out))
"""


def run_probe(level: str | None, *models: str, prefetch: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_RS_ISA", "LLAMA_RS_PREFETCH")}
    if level is not None:
        env["LLAMA_RS_ISA"] = level
    if prefetch is not None:
        env["LLAMA_RS_PREFETCH"] = prefetch
    return subprocess.run([sys.executable, "-c", PROBE, *models], env=env, capture_output=True, text=True, timeout=300)


def short_bench(**env: str) -> subprocess.CompletedProcess:
    """A one-thread `llama-rs bench` of the demo model, a few tokens, with `env` set."""
    return subprocess.run(
        [sys.executable, "-m", "llama_rs_cli.app", "bench", "-p", "4", "-n", "2", "-r", "1", "-t", "1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def available_levels() -> list[str]:
    if CPU_LEVEL is None:
        pytest.skip("LLAMA_RS_ISA is set for this whole run")
    return LEVELS[: LEVELS.index(CPU_LEVEL) + 1]


def test_every_level_gives_the_same_logits() -> None:
    # Q4_0 and the K-quants (Q4_K_M: Q4_K with Q6_K; Q6_K) take the AMX tiles at that level.
    names = ["fortunes-1M-q4_0.gguf", "fortunes-1M-f32.gguf", "fortunes-4M-q4_k_m.gguf", "fortunes-4M-q6_k.gguf"]
    models = need_data(*names)
    files = ["demo", *(str(models / n) for n in names)]
    levels = available_levels()
    print(f"kernel levels checked here: {levels}; not available on this CPU: {LEVELS[len(levels) :]}")
    results = {}
    for level in levels:
        p = run_probe(level, *files)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert r.pop("level") == [level, True, CPU_LEVEL]
        results[level] = r
    auto = json.loads(run_probe(None, *files).stdout)
    assert auto.pop("level") == [CPU_LEVEL, False, CPU_LEVEL]
    for level, r in results.items():
        assert r == auto, f"{level} differs from the automatic choice ({CPU_LEVEL})"


@pytest.mark.parametrize(
    ("value", "message"),
    [("sse9", "is not a kernel level (portable, avx2, avx512, amx)"), ("AVX-512", "is not a kernel level")],
)
def test_bad_level_is_a_clear_error(value: str, message: str) -> None:
    p = run_probe(value, "demo")
    assert p.returncode != 0
    assert message in p.stderr and "LLAMA_RS_ISA" in p.stderr
    cli = short_bench(LLAMA_RS_ISA=value)
    assert cli.returncode == 1
    assert message in cli.stderr and "Traceback" not in cli.stderr


def test_level_above_the_cpu_is_refused() -> None:
    levels = available_levels()
    if len(levels) == len(LEVELS):
        pytest.skip(f"this CPU has every level ({CPU_LEVEL}); nothing is above it")
    p = run_probe(LEVELS[len(levels)], "demo")
    assert p.returncode != 0 and "this CPU lacks" in p.stderr


def test_bench_says_which_kernels_ran() -> None:
    levels = available_levels()
    cli = short_bench(LLAMA_RS_ISA=levels[0])
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines()[0].startswith(
        f"kernels: {levels[0]} (forced by LLAMA_RS_ISA; this CPU: {CPU_LEVEL}), "
    )


def test_prefetch_hints_change_no_bits() -> None:
    # Generation's hints are on or off by CPU (off on Zen 4); either way every logit keeps its
    # bits, prompts (which take the many-token kernels) and one-token steps alike.
    names = ["fortunes-1M-q4_0.gguf", "fortunes-4M-q4_k_m.gguf"]
    models = need_data(*names)
    files = ["demo", *(str(models / n) for n in names)]
    runs = {}
    for prefetch in ["0", "1", None]:
        p = run_probe(None, *files, prefetch=prefetch)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        on, forced = r.pop("prefetch")
        assert forced == (prefetch is not None)
        if prefetch is not None:
            assert on == (prefetch == "1")
        r.pop("level")
        runs[prefetch] = r
    assert runs["0"] == runs["1"] == runs[None]


def test_bad_prefetch_value_is_a_clear_error() -> None:
    p = run_probe(None, "demo", prefetch="yes")
    assert p.returncode != 0 and 'LLAMA_RS_PREFETCH="yes" must be 0 (no prefetch hints) or 1' in p.stderr
    cli = short_bench(LLAMA_RS_PREFETCH="yes")
    assert cli.returncode == 1
    assert "LLAMA_RS_PREFETCH" in cli.stderr and "must be 0" in cli.stderr and "Traceback" not in cli.stderr


def test_bench_says_whether_prefetch_hints_run() -> None:
    for value, state in [("0", "off"), ("1", "on")]:
        cli = short_bench(LLAMA_RS_PREFETCH=value)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.splitlines()[0].endswith(f", generation prefetch hints {state} (set by LLAMA_RS_PREFETCH)")
