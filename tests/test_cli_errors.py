"""The CLI's error conventions, command by command: one line on stderr, exit 2 for usage errors,
1 for runtime failures, 130 for Ctrl+C; `--debug` shows the real error's traceback; a context
longer than the model was trained on is a one-line warning."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest

import llama_rs

LLAMA_RS = [sys.executable, "-m", "llama_rs_cli.app"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLAMA_RS, *map(str, args)], input="", capture_output=True, text=True, timeout=120)


def demo_path() -> Path:
    with resources.as_file(resources.files("llama_rs") / "data" / "fortunes-1M.gguf") as p:
        return Path(p)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "notamodel.txt").write_text("hello, I am not a model\n")
    (d / "truncated.gguf").write_bytes(demo_path().read_bytes()[:5000])
    (d / "folder").mkdir()
    (d / "text.txt").write_text("Never trust a computer you cannot throw out of a window.\n" * 60)
    return {p.name: p for p in d.iterdir()}


def assert_one_line(r: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]


USAGE = [
    (["run", "-c", "0"], r"'-c' / '--ctx-size'"),
    (["run", "-t", "0"], r"'-t' / '--threads'"),
    (["run", "--temp", "-1"], r"'--temp'.*temp"),
    (["run", "--top-p", "5"], r"'--top-p'.*top_p"),
    (["run", "--top-p", "0"], r"'--top-p'.*top_p"),  # typer's old min=0.0 let this through to the engine
    (["run", "-n", "-3"], r"'-n' / '--tokens'.*max_tokens"),
    (["run", "--repeat-penalty", "0"], r"'--repeat-penalty'.*repeat_penalty"),
    (["run", "-s", str(2**70)], r"'-s' / '--seed'"),
    (["bench", "-t", "0"], r"'-t'"),
    (["bench", "-t", "one,two"], r"'-t'"),
    (["bench", "-r", "0"], r"'-r' / '--repetitions'"),
    (["perplexity", "-m", "x.gguf", "-f", "x.txt", "-c", "0"], r"'--ctx-size' / '-c'"),
    (["perplexity", "-m", "x.gguf", "-f", "x.txt", "-t", "0"], r"'--threads' / '-t'"),
    (["perplexity", "-m", "x.gguf", "-f", "x.txt", "--kv-type", "q8"], r"'--kv-type'"),
    (["convert", ".", "7"], r"FTYPE"),
    (["serve", "-l", "localhost:http"], r"'-l' / '--listen'"),
    (["serve", "-l", "127.0.0.1:70000"], r"'-l' / '--listen'"),
    (["info"], r"(?i)missing argument 'file'"),
]


@pytest.mark.parametrize("args,pattern", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_exit_2_with_one_line(args: list[str], pattern: str) -> None:
    r = cli(*args, *(["-p", "x"] if args[0] == "run" else []))
    assert_one_line(r, 2, pattern)
    assert r.stderr.rstrip().endswith(f"(see `llama-rs {args[0]} --help`)"), r.stderr


RUNTIME = [
    (["run", "-m", "{notamodel.txt}", "-p", "x"], r"notamodel.txt: "),
    (["run", "-m", "{truncated.gguf}", "-p", "x"], r"truncated.gguf: .*(truncated|end of the file)"),
    (["run", "-m", "{folder}", "-p", "x"], r"folder: .*directory"),
    (["info", "{truncated.gguf}"], r"truncated.gguf: "),
    (["info", "{folder}"], r"folder: .*directory"),
    (["info", "/no/such/file.gguf"], r"/no/such/file.gguf: "),
    (["bench", "-m", "{truncated.gguf}", "-p", "4", "-n", "1", "-r", "1", "-t", "1"], r"truncated.gguf: "),
    (["bench", "-m", "{folder}", "-t", "1"], r"folder: .*directory"),
    (["perplexity", "-m", "{truncated.gguf}", "-f", "{text.txt}"], r"truncated.gguf: "),
    (["perplexity", "-m", "{folder}", "-f", "{text.txt}"], r"folder: .*directory"),
    (["perplexity", "-m", "{demo}", "-f", "/no/such/text.txt"], r"^error: /no/such/text.txt: No such file"),
    (["perplexity", "-m", "{demo}", "-f", "{folder}"], r"folder: Is a directory"),
    (["quantize", "{truncated.gguf}", "{folder}/out.gguf", "q4_0"], r"truncated.gguf: "),
    (["quantize", "/no/such/in.gguf", "{folder}/out.gguf", "q4_0"], r"/no/such/in.gguf"),
    (["convert", "/no/such/checkpoint"], r"/no/such/checkpoint"),
    (["convert", "{folder}"], r"folder"),
]


@pytest.mark.parametrize("args,pattern", RUNTIME, ids=[" ".join(a) for a, _ in RUNTIME])
def test_runtime_errors_exit_1_with_one_line(args: list[str], pattern: str, files: dict[str, Path]) -> None:
    paths = {**{k: str(v) for k, v in files.items()}, "demo": str(demo_path())}
    r = cli(*(re.sub(r"\{([^}]+)\}", lambda m: paths[m.group(1)], a) for a in args))
    assert_one_line(r, 1, pattern)


def test_debug_shows_the_real_traceback(files: dict[str, Path]) -> None:
    r = cli("--debug", "run", "-m", files["notamodel.txt"], "-p", "x")
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):"), r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("llama_rs.errors.ModelError: "), r.stderr
    assert "AttributeError" not in r.stderr
    # Usage errors stay one line under --debug: they are not bugs.
    assert_one_line(cli("--debug", "run", "--temp", "-1", "-p", "x"), 2, "'--temp'")


def main_with(patch: str, *args: str) -> subprocess.CompletedProcess:
    """`llama-rs ARGS` with `patch` applied to llama_rs first: errors nothing else can provoke."""
    code = (
        "import sys, llama_rs\n" + textwrap.dedent(patch) + "\nfrom llama_rs_cli.app import main\nmain(sys.argv[1:])\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_unexpected_exception_is_one_line_internal_error() -> None:
    patch = """
        def file_info(path):
            raise RuntimeError("boom\\nsecond line")
        llama_rs.file_info = file_info
    """
    r = main_with(patch, "info", "x.gguf")
    assert r.returncode == 1
    assert r.stderr == "error: internal error: RuntimeError: boom second line (run with --debug for the traceback)\n"
    r = main_with(patch, "--debug", "info", "x.gguf")
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "second line"  # RuntimeError's message, last line
    assert "RuntimeError: boom" in r.stderr and "AttributeError" not in r.stderr


def test_ctrl_c_exits_130_quietly() -> None:
    r = main_with(
        """
        def file_info(path):
            raise KeyboardInterrupt
        llama_rs.file_info = file_info
    """,
        "info",
        "x.gguf",
    )
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "" and r.stdout == ""


def test_os_error_outside_a_command_body_is_one_line() -> None:
    # An OSError that no command turned into a message (e.g. from the server) is still a
    # runtime failure, named by its file.
    r = main_with(
        """
        def file_info(path):
            raise PermissionError(13, "Permission denied", "/root/secret.gguf")
        import llama_rs_cli.common
        llama_rs_cli.common.errors_as_messages = __import__("contextlib").nullcontext
        llama_rs.file_info = file_info
    """,
        "info",
        "x.gguf",
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr == "error: /root/secret.gguf: Permission denied\n"


# -- a context longer than the model's training ----------------------------------------
def test_demo_model_trained_context() -> None:
    # The warnings below rely on it: the demo model was trained on 256 tokens.
    assert llama_rs.Model.demo().config["train_ctx"] == 256


def test_run_warns_when_ctx_exceeds_training() -> None:
    r = cli("run", "-p", "Q:", "-n", "3", "--temp", "0", "-c", "4096")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        "warning: context size 4096 exceeds the 256 tokens the model was trained on; output beyond 256 tokens may degrade"
    ]
    assert r.stdout.strip()  # and it still answers
    # Within the training context, or run's own default (512): silent.
    assert cli("run", "-p", "Q:", "-n", "3", "-c", "256").stderr == ""
    assert cli("run", "-p", "Q:", "-n", "3").stderr == ""


def test_perplexity_and_bench_warn_when_ctx_exceeds_training(files: dict[str, Path]) -> None:
    r = cli("perplexity", "-m", demo_path(), "-f", files["text.txt"], "-c", "300", "--chunks", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: context size 300 exceeds the 256 tokens"), r.stderr
    assert "perplexity" in r.stdout
    r = cli("bench", "-p", "300", "-n", "1", "-r", "1", "-t", "1,2")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: context size 302 exceeds the 256 tokens"), r.stderr
    assert cli("bench", "-p", "16", "-n", "2", "-r", "1", "-t", "1").stderr == ""
