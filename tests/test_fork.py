"""A model used in a forked child (Python's `multiprocessing` on Linux, a web server that
loads before it forks its workers): the child has none of the parent's threads, so its
passes must run on threads of its own and give the parent's tokens (rust/threads.rs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reference import Shape, random_weights, write_model

# Both the single-sequence path (complete) and the batch engine (complete_many), in the
# parent first, so both have started their threads before the fork.
FORKED = r"""
import json, sys
import multiprocessing as mp
import llama_rs
m = llama_rs.Model(sys.argv[1], n_ctx=64, n_threads=2)
m.wait_repacked()
def work(prompt):
    one = m.complete(prompt, max_tokens=8, temp=0).text
    many = [c.text for c in m.complete_many([prompt, prompt[:3]], max_tokens=8, temp=0)]
    return [one, many]
prompt = [1, 17, 29, 41, 53]
parent = work(prompt)
with mp.get_context("fork").Pool(2) as pool:
    children = pool.map(work, [prompt, prompt])
print(json.dumps({"parent": parent, "children": children, "again": work(prompt)}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_generates_with_threads_of_its_own(tmp_path: Path) -> None:
    s = Shape(dim=128, n_layer=2, n_head=4, n_head_kv=2, ffn=256, vocab=320)
    path = tmp_path / "m.gguf"
    write_model(path, s, random_weights(s, seed=3), "Q8_0")
    # A group of its own, so a hung run's forked children go with it.
    p = subprocess.Popen(
        [sys.executable, "-c", FORKED, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("a forked child's generation never ended (it waited for the parent's threads)")
    assert p.returncode == 0, err[-2000:]
    got = json.loads(out)
    assert got["parent"][0], "the model generated text"
    assert got["children"] == [got["parent"], got["parent"]], got
    assert got["again"] == got["parent"], "the parent's threads still work after the fork"
