"""Q4_0, Q8_0, Q4_K, Q5_K and Q6_K weights repacked at load (AVX-512 CPUs, rust/quant/x16.rs): the same bits as the
file's layout, on every path (prompts on AMX tiles, several tokens, one token, embedding
lookups, tied output), and the copied file pages let go so resident memory stays near the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama_rs import _core
from reference import Shape, random_weights, write_model

LEVELS = ["portable", "avx2", "avx512", "amx"]
CPU_LEVEL = _core.kernel_level()[2]
REPACKS = "LLAMA_RS_ISA" not in os.environ and LEVELS.index(CPU_LEVEL) >= LEVELS.index("avx512")

PROBE = r"""
import hashlib, json, sys
import numpy as np
import llama_rs
m = llama_rs.Model(sys.argv[1], n_ctx=192, n_threads=2)
ids = [1] + [(7 * i) % 990 + 5 for i in range(39)]
def run():
    m.reset()
    rows = [m.eval(ids, all_logits=True)]            # 2 tile groups + 8 tokens
    for k in (3, 2, 1, 4):                           # several tokens, then one at a time
        rows.append(m.eval(ids[:k], all_logits=True))
    for t in ids[:5]:
        rows.append(m.eval([t], all_logits=True))
    return hashlib.sha256(b"".join(np.ascontiguousarray(r, dtype=np.float32).tobytes() for r in rows)).hexdigest()
early = run()                                        # while the background repack runs
n = m.wait_repacked()
print(json.dumps({"repacked": n, "logits": run(), "early": early}))
"""


def probe(path: Path, **env: str) -> dict:
    """The logits hash once every matrix is in its final layout, checked against the hash of
    the same run started at load, under the background repack (some matrices repacked)."""
    e = {k: v for k, v in os.environ.items() if k not in ("LLAMA_RS_REPACK", "LLAMA_RS_ISA")} | env
    p = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["early"] == got["logits"], f"runs under the background repack differ ({env})"
    return got


@pytest.mark.parametrize("wtype", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("tied", [False, True])
def test_repacked_weights_give_the_bits_of_the_file_layout(tmp_path: Path, tied: bool, wtype: str) -> None:
    if not REPACKS:
        pytest.skip(f"weights are repacked on AVX-512 CPUs only (this run: {CPU_LEVEL}, LLAMA_RS_ISA unset)")
    # Rows in whole chunks of 16, but for a 1000-token vocabulary (token_embd and output keep the
    # file's layout); tied to a 1008-token one, token_embd is repacked and is the output.
    s = Shape(dim=128, n_layer=2, n_head=8, n_head_kv=2, ffn=352, vocab=1008 if tied else 1000)
    path = tmp_path / f"{wtype}.gguf"
    write_model(path, s, random_weights(s, seed=11), wtype, tie_output=tied)
    rows = probe(path, LLAMA_RS_REPACK="0")
    assert rows["repacked"] == 0
    levels = [lv for lv in ("avx512", "amx") if LEVELS.index(lv) <= LEVELS.index(CPU_LEVEL)]
    print(f"repacked kernels checked at: {levels}")
    for level in levels:
        got = probe(path, LLAMA_RS_ISA=level)
        assert got["repacked"] == 7 * s.n_layer + tied, got
        assert got["logits"] == rows["logits"], f"repacked weights at {level} differ from the file's layout"


@pytest.mark.parametrize("ftype", ["q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "iq4_xs"])
@pytest.mark.parametrize("tied", [False, True])
def test_repacked_k_quants_give_the_bits_of_the_file_layout(tmp_path: Path, tied: bool, ftype: str) -> None:
    """The K-quants and IQ4_XS (rust/quant/x16_q2k.rs, x16_q3k.rs, x16_k32.rs, x16_q6k.rs,
    x16_iq4xs.rs), repacked at the avx512 level; at amx the tile kernels of Q4_K, Q5_K and Q6_K
    read the file's layout, so those stay in it there, while Q2_K, Q3_K and IQ4_XS (no tile
    kernel) are repacked at amx too."""
    if not REPACKS:
        pytest.skip(f"weights are repacked on AVX-512 CPUs only (this run: {CPU_LEVEL}, LLAMA_RS_ISA unset)")
    import llama_rs

    # Rows of whole super-blocks (256) in whole chunks of 16; ffn 768 = 3 super-blocks per
    # ffn_down row (a partial group of 8). Quantized pure: every matrix of the one type.
    s = Shape(dim=256, n_layer=2, n_head=8, n_head_kv=2, ffn=768, vocab=1008 if tied else 1000)
    f16 = tmp_path / "f16.gguf"
    write_model(f16, s, random_weights(s, seed=13), "F16", tie_output=tied)
    path = tmp_path / f"{ftype}.gguf"
    llama_rs.quantize_file(f16, path, ftype, pure=True)
    rows = probe(path, LLAMA_RS_REPACK="0")
    assert rows["repacked"] == 0
    got = probe(path, LLAMA_RS_ISA="avx512")
    assert got["repacked"] == 7 * s.n_layer + tied, got
    assert got["logits"] == rows["logits"], f"repacked {ftype} weights differ from the file's layout"
    if CPU_LEVEL == "amx":
        want = got["repacked"] if ftype in ("q2_k", "q3_k_m", "iq4_xs") else 0
        assert probe(path, LLAMA_RS_ISA="amx")["repacked"] == want


def test_the_q4_k_m_mix_repacks_its_q6_k_matrices_too(tmp_path: Path) -> None:
    """llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for output.weight and some attn_v / ffn_down;
    both kinds repacked, the same bits as the file's layout."""
    if not REPACKS:
        pytest.skip(f"weights are repacked on AVX-512 CPUs only (this run: {CPU_LEVEL}, LLAMA_RS_ISA unset)")
    import llama_rs

    s = Shape(dim=256, n_layer=2, n_head=8, n_head_kv=2, ffn=768, vocab=1008)
    f16 = tmp_path / "f16.gguf"
    write_model(f16, s, random_weights(s, seed=14), "F16")
    path = tmp_path / "q4_k_m.gguf"
    llama_rs.quantize_file(f16, path, "q4_k_m")
    types = {ty for _, ty, shape, _, _ in llama_rs.file_info(path)["tensors"] if len(shape) == 2}
    assert {"Q4_K", "Q6_K"} <= types, types
    rows = probe(path, LLAMA_RS_REPACK="0")
    got = probe(path, LLAMA_RS_ISA="avx512")
    # Every matrix but token_embd (Q4_K, looked up row by row: repacked as well) is repacked.
    assert got["repacked"] == 7 * s.n_layer + 2, got
    assert got["logits"] == rows["logits"], "the repacked Q4_K_M mix differs from the file's layout"


def test_other_types_and_lower_levels_keep_the_file_layout(tmp_path: Path) -> None:
    s = Shape(dim=128, n_layer=1, n_head=8, n_head_kv=2, ffn=352, vocab=1008)
    f16 = tmp_path / "f16.gguf"
    write_model(f16, s, random_weights(s, seed=12), "F16")
    assert probe(f16)["repacked"] == 0
    q4 = tmp_path / "q4_0.gguf"
    write_model(q4, s, random_weights(s, seed=12), "Q4_0")
    assert probe(q4, LLAMA_RS_ISA="avx2")["repacked"] == 0
    assert probe(q4, LLAMA_RS_ISA="portable")["repacked"] == 0


MEMORY = r"""
import json, sys
def status():
    f = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return {k: int(f[k].split()[0]) * 1024 for k in ("VmHWM", "RssAnon", "RssFile")}
import numpy  # Model.eval imports it: its libraries' pages are not the engine's memory
import llama_rs
before = status()
m = llama_rs.Model(sys.argv[1], n_ctx=16, n_threads=2)
m.eval([1, 2, 3])                     # under the background repack: file pages come and go
n = m.wait_repacked()
after = status()
print(json.dumps({"repacked": n, **{k: after[k] - before[k] for k in after}}))
"""


BIG = Shape(dim=1024, n_layer=4, n_head=8, n_head_kv=8, ffn=2816, vocab=4096)


@pytest.fixture(scope="module")
def big_q4_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 33 MB Q4_0 model, every matrix repacked on AVX-512 CPUs."""
    if not REPACKS:
        pytest.skip(f"weights are repacked on AVX-512 CPUs only (this run: {CPU_LEVEL}, LLAMA_RS_ISA unset)")
    path = tmp_path_factory.mktemp("repack") / "big.gguf"
    write_model(path, BIG, random_weights(BIG, seed=13), "Q4_0")
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_repack_keeps_resident_memory_near_the_file(big_q4_0: Path) -> None:
    s, path = BIG, big_q4_0
    size = path.stat().st_size
    p = subprocess.run([sys.executable, "-c", MEMORY, str(path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["repacked"] == 7 * s.n_layer + 2
    # The copy is private memory of about the file's size; the file pages it was made from are
    # unmapped again, and at no time were both resident (the file + 10%, KV aside).
    assert m["RssAnon"] > 0.9 * size, m
    assert m["RssFile"] < 0.1 * size, m
    assert m["VmHWM"] < 1.1 * size + (8 << 20), (m, size)


TIGHT = r"""
import hashlib, json, resource, sys
import numpy as np
import llama_rs
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
if sys.argv[2] != "-":
    # Address space for the file's map and 16 MiB more: not for a private copy of the weights.
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[2]) + (16 << 20), resource.RLIM_INFINITY))
m = llama_rs.Model(sys.argv[1], n_ctx=16, n_threads=2)
logits = np.ascontiguousarray(m.eval([1, 2, 3], all_logits=True), dtype=np.float32)
print(json.dumps({"repacked": m.repacked, "logits": hashlib.sha256(logits.tobytes()).hexdigest()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_no_memory_for_the_copy_keeps_the_file_layout(big_q4_0: Path) -> None:
    # One malloc arena, so that the limit is about the weights, not glibc's per-thread reserves.
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_RS_REPACK", "LLAMA_RS_ISA")}
    env["MALLOC_ARENA_MAX"] = "1"

    def run(limit: str) -> dict:
        p = subprocess.run(
            [sys.executable, "-c", TIGHT, str(big_q4_0), limit], env=env, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    free = run("-")
    tight = run(str(big_q4_0.stat().st_size))
    assert free["repacked"] == 7 * BIG.n_layer + 2
    assert tight["repacked"] == 0, "the copy was made within an address space without room for it"
    assert tight["logits"] == free["logits"]


FORK = r"""
import json, os, sys
import llama_rs
m = llama_rs.Model(sys.argv[1], n_ctx=16, n_threads=1)
pid = os.fork()  # most likely while the repack thread runs: the child has no such thread
if pid == 0:
    os._exit(0 if m.wait_repacked() >= 0 else 1)
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "repacked": m.wait_repacked()}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_wait_for_a_repack_thread_it_lacks(big_q4_0: Path) -> None:
    p = subprocess.run([sys.executable, "-c", FORK, str(big_q4_0)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got == {"child": 0, "repacked": 7 * BIG.n_layer + 2}, got


REWRITE = r"""
import shutil, sys
import llama_rs
src, dst = sys.argv[1], sys.argv[2]
for _ in range(5):
    shutil.copyfile(src, dst)
    m = llama_rs.Model(dst, n_ctx=16, n_threads=1)
    del m                                  # most likely while the repack thread runs
    open(dst, "wb").write(b"GGUF")         # truncated: reads of the old map would fault (SIGBUS)
print("ok")
"""


def test_a_dropped_model_stops_reading_its_file(big_q4_0: Path, tmp_path: Path) -> None:
    """The repack thread reads the file's map: once the model is dropped, a rewritten file
    must not crash the process."""
    p = subprocess.run(
        [sys.executable, "-c", REWRITE, str(big_q4_0), str(tmp_path / "m.gguf")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", (p.returncode, p.stderr[-2000:])
