"""`llama-rs bench`: one row per thread count, mean and deviation, human and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from reference import Shape, random_weights, write_model

import llama_rs


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama_rs_cli.app", "bench", *args], capture_output=True, text=True, timeout=120
    )


def table_lines(stdout: str) -> list[str]:
    """The table of a human-readable run, after the lines saying which kernels ran."""
    kernels, *lines = stdout.strip().splitlines()
    assert kernels.startswith("kernels: ")  # which instruction set ran (test_kernel_levels.py)
    # On AVX-512 CPUs the demo's Q8_0 matrices are repacked (test_repack.py), and bench says so.
    repacked = llama_rs.Model.demo(n_ctx=16).repacked
    if repacked:
        assert lines.pop(0).startswith(f"weights: {repacked} matrices repacked for these kernels")
    return lines


def test_bench_json_rows() -> None:
    r = cli("-p", "16", "-n", "4", "-t", "1,2", "-r", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["threads"] for row in rows] == [1, 2]
    for row in rows:
        assert row["model"] == "fortunes-1M.gguf" and row["n_prompt"] == 16 and row["n_gen"] == 4
        assert row["pp_tokens_per_second"] > 0 and row["tg_tokens_per_second"] > 0
        assert row["pp_stdev"] >= 0 and row["tg_stdev"] >= 0


def test_bench_table_and_errors() -> None:
    r = cli("-p", "8", "-n", "2", "-t", "1", "-r", "1")
    assert r.returncode == 0, r.stderr
    lines = table_lines(r.stdout)
    assert lines[0].split()[:4] == ["model", "type", "threads", "test"]
    assert "pp8" in lines[1] and "tg2" in lines[2] and "±" in lines[1]
    bad = cli("-t", "0")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    missing = cli("-m", "/no/such.gguf")
    assert missing.returncode == 1 and "no such model file" in missing.stderr


def test_bench_parallel_rows_per_batch_size() -> None:
    r = cli("--parallel", "1,3", "-n", "6", "-t", "1", "-r", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["threads"], row["parallel"]) for row in rows] == [(1, 1), (1, 3)]
    assert all(row["tg_tokens_per_second"] > 0 and "pp_tokens_per_second" not in row for row in rows)
    table = cli("--parallel", "2", "-n", "3", "-t", "1", "-r", "1")
    assert table.returncode == 0 and "parallel" in table_lines(table.stdout)[0] and "tg3" in table.stdout
    for bad in (["--parallel", "0"], ["--parallel", "2,x"], ["--parallel", "2", "-n", "1"]):
        r = cli(*bad)
        assert r.returncode in (1, 2) and r.stderr.startswith("error:") and "parallel" in r.stderr, (bad, r.stderr)


@pytest.mark.parametrize("ftype", ["q4_1", "q8_0", "f16", "f32"])
def test_bench_takes_every_quantize_type(tmp_path, ftype: str) -> None:
    """A file `llama-rs quantize` wrote in each type this build computes is benchmarked, and the
    row names the file's main type."""
    shape = Shape(dim=64, n_layer=2, n_head=4, n_head_kv=2, ffn=96, vocab=320)
    write_model(tmp_path / "m.gguf", shape, random_weights(shape, seed=2), "F32")
    out = tmp_path / f"m-{ftype}.gguf"
    llama_rs.quantize_file(tmp_path / "m.gguf", out, ftype)
    r = cli("-m", str(out), "-p", "8", "-n", "2", "-t", "1", "-r", "1", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["model"] == out.name and row["type"] == ftype.upper()
    assert row["pp_tokens_per_second"] > 0 and row["tg_tokens_per_second"] > 0
