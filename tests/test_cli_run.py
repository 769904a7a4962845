"""`llama-rs run`: the interactive prompt in a pseudo-terminal, one-shot mode, and the CLI's
error conventions (usage errors exit 2, runtime failures exit 1, one line each)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

import llama_rs

from reference import Shape, random_weights, write_model

LLAMA_RS = [sys.executable, "-m", "llama_rs_cli.app"]


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LLAMA_RS, *args], input=input, capture_output=True, text=True, timeout=120)


def spawn(*args: str) -> pexpect.spawn:
    env = dict(os.environ, COLUMNS="200")
    return pexpect.spawn(LLAMA_RS[0], [*LLAMA_RS[1:], *args], encoding="utf-8", timeout=30, env=env)


def answer(p: pexpect.spawn, prompt: str) -> str:
    """Send a one-line prompt (and the empty line that ends it); return the streamed text."""
    p.sendline(prompt)
    p.expect_exact("... ")
    p.sendline("")
    p.expect(r"\x1b\[2m\[(\d+) prompt tokens at [\d.]+ tok/s, (\d+) generated at [\d.]+ tok/s, (\w+)\]")
    text = p.before.replace("\r\n", "\n")
    assert text.startswith("\n"), repr(text)  # the echo of the empty line
    return text[1:].removesuffix("\n")


def test_interactive_session_with_the_demo_model() -> None:
    p = spawn("run", "-s", "5", "-n", "30")
    p.expect_exact(">>> ")
    banner = p.before
    for field in (
        "model    fortunes-1M",
        "demo model",
        "parameters",
        "weights  Q8_0",
        "context  512 tokens",
        "loaded in",
    ):
        assert field in banner, banner
    demo = llama_rs.Model.demo(n_ctx=512)
    want = demo.complete("Never trust a computer", max_tokens=30, seed=5)
    assert answer(p, "Never trust a computer") == want.text
    assert p.match.group(2) == str(want.tokens) and p.match.group(3) == want.finish_reason

    # A parameter line changes parameters and is echoed, not answered.
    p.expect_exact(">>> ")
    p.sendline("temp=0 n=12")
    p.expect_exact(">>> ")
    assert "temp=0.0 tokens=12" in p.before
    p.sendline("/params")
    p.expect_exact(">>> ")
    assert "tokens=12 temp=0.0 top_k=40" in p.before
    greedy = demo.complete("Q:", max_tokens=12, temp=0)
    assert answer(p, "Q:") == greedy.text

    p.expect_exact(">>> ")
    p.sendline("/reset")
    p.expect_exact(">>> ")
    assert "context cleared" in p.before
    p.sendline("bogus=1")
    p.expect_exact(">>> ")
    assert "unknown parameter 'bogus'" in p.before
    p.sendline("/help")
    p.expect_exact(">>> ")
    assert "/quit" in p.before and "key=value" in p.before

    p.sendeof()  # Ctrl+D at an empty prompt: exit 0, no traceback
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0
    assert "Traceback" not in p.before


def test_bad_parameter_lines_are_rejected_and_change_nothing() -> None:
    """The prompt checks `key=value` lines as the engine checks the options: a value it would
    refuse is one message, the old parameters stay, and the next prompt is answered."""
    p = spawn("run", "-s", "3", "-n", "20")
    p.expect_exact(">>> ")
    bad = [
        "n=-3",
        "temp=-1",
        "top_p=5",
        "top_p=0",
        f"seed={2**70}",
        "repeat_penalty=0",
        "top_k=10 temp=-1",
    ]  # the last: top_k=10 is fine, but the line is one change
    for line in bad:
        p.sendline(line)
        p.expect_exact(">>> ")
        out = p.before.replace("\r\n", "\n").strip().splitlines()
        assert len(out) == 2 and out[0] == line, out  # the echo, then one message
        assert out[1].startswith(f"error: {line.split()[-1]}: ") and out[1].endswith("; parameters unchanged"), out
    p.sendline("n=1.5")
    p.expect_exact(">>> ")
    assert "error: tokens wants an integer, got '1.5'" in p.before
    p.sendline("/params")
    p.expect_exact(">>> ")
    assert "tokens=20 temp=0.8 top_k=40 top_p=0.9 repeat_penalty=1.3 repeat_lastn=64 seed=3" in p.before
    want = llama_rs.Model.demo(n_ctx=512).complete("Never trust a computer", max_tokens=20, seed=3)
    assert answer(p, "Never trust a computer") == want.text
    p.expect_exact(">>> ")
    p.sendline("top_p=1 n=5")  # the edge of the range is fine
    p.expect_exact(">>> ")
    assert "top_p=1.0 tokens=5" in p.before
    p.sendline("/quit")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0 and "Traceback" not in p.before


def test_multiline_prompt(tmp_path: Path) -> None:
    p = spawn("run", "-n", "8", "--temp", "0")
    p.expect_exact(">>> ")
    p.sendline("Q: line one")
    p.expect_exact("... ")
    p.sendline("line two")
    p.expect_exact("... ")
    p.sendline("")
    p.expect(r"\x1b\[2m\[(\d+) prompt tokens")
    demo = llama_rs.Model.demo(n_ctx=512)
    assert int(p.match.group(1)) == len(demo.tokenize("Q: line one\nline two"))
    p.expect_exact(">>> ")
    p.sendintr()  # Ctrl+C at an empty prompt also exits 0
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0


def test_ctrl_c_between_prompts_ends_the_session(monkeypatch, capsys) -> None:
    """Ctrl+C after a reply but before the next `>>> ` (here: while its stats print) ends the
    session quietly, as Ctrl+C at an empty prompt does, instead of escaping as an interrupt."""
    from llama_rs_cli import run as run_cli

    lines = iter(["Q: hello", ""])
    monkeypatch.setattr("builtins.input", lambda _prompt: next(lines))

    def interrupted(_gen) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_cli, "stat_line", interrupted)
    demo = llama_rs.Model.demo(n_ctx=512)
    try:
        run_cli.interactive(demo, run_cli.Params(tokens=4, temp=0.0))
    except KeyboardInterrupt:  # a failure, not an interrupt of the test run
        pytest.fail("Ctrl+C between prompts escaped the interactive session")
    assert next(lines, None) is None  # the prompt was read and answered before the interrupt
    assert "Traceback" not in capsys.readouterr().err


def test_chat_mode_keeps_the_conversation() -> None:
    demo = llama_rs.Model.demo(n_ctx=512)
    p = spawn("run", "--chat", "-s", "3", "-n", "20")
    p.expect_exact(">>> ")
    history: list[dict] = []
    for message in ("Hello!", "Tell me a fortune."):
        history.append({"role": "user", "content": message})
        want = demo.chat(history, max_tokens=20, seed=3)
        assert answer(p, message) == want.text
        history.append({"role": "assistant", "content": want.text})
        p.expect_exact(">>> ")
    p.sendline("/reset")
    p.expect_exact("(and the conversation)")
    p.expect_exact(">>> ")
    assert answer(p, "Hello!") == demo.chat([{"role": "user", "content": "Hello!"}], max_tokens=20, seed=3).text
    p.sendline("/quit")
    p.expect(pexpect.EOF)
    # One-shot: -p is one user message.
    r = cli("run", "--chat", "-p", "Hello!", "-n", "20", "-s", "3")
    assert (
        r.returncode == 0
        and r.stdout == demo.chat([{"role": "user", "content": "Hello!"}], max_tokens=20, seed=3).text + "\n"
    )


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """Random weights with EOS's output row zero: its logit is 0, so greedy decoding
    (--temp 0) never picks it and a generation runs until interrupted."""
    s = Shape(dim=256, n_layer=6, n_head=4, n_head_kv=2, ffn=512, vocab=300)
    path = tmp_path_factory.mktemp("slow") / "slow.gguf"
    w = random_weights(s, seed=9)
    w["output.weight"][2] = 0.0
    write_model(path, s, w, "Q8_0")
    return path


def test_ctrl_c_stops_generation_and_returns_to_the_prompt(slow_model: Path) -> None:
    p = spawn("run", "-m", str(slow_model), "-c", "4096", "-n", "4000", "--repeat-penalty", "1", "--temp", "0")
    p.expect_exact(">>> ")
    p.sendline("t5 t6")
    p.expect_exact("... ")
    p.sendline("")
    time.sleep(0.5)
    p.sendintr()
    p.expect_exact("[interrupted]")
    p.expect(r"(\d+) generated at")
    assert 0 < int(p.match.group(1)) < 4000
    p.expect_exact(">>> ")  # back at the prompt, still usable
    p.sendline("/params")
    p.expect_exact(">>> ")
    assert "tokens=4000" in p.before
    p.sendline("/quit")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0


def test_one_shot_with_prompt_and_stdin() -> None:
    demo = llama_rs.Model.demo(n_ctx=512)
    want = demo.complete("Never trust a computer", max_tokens=25, seed=11)
    r = cli("run", "-p", "Never trust a computer", "-n", "25", "-s", "11")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want.text + "\n"
    r = cli("run", "-n", "25", "-s", "11", input="Never trust a computer\n")
    assert r.returncode == 0 and r.stdout == want.text + "\n"


def test_one_shot_json() -> None:
    r = cli("run", "-p", "Q:", "-n", "10", "--temp", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = llama_rs.Model.demo(n_ctx=512).complete("Q:", max_tokens=10, temp=0)
    assert out["prompt"] == "Q:" and out["text"] == want.text
    assert out["tokens"] == want.tokens and out["finish_reason"] == want.finish_reason
    t = out["timings"]
    assert t["prompt_tokens"] == 3 and t["prompt_seconds"] >= 0 and t["generated_seconds"] >= 0


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["run", "--temp", "abc"], 2, r"error: Invalid value for '--temp'"),
        (["run", "--bogus"], 2, r"error: No such option: --bogus"),
        (["run", "-n", "-5", "-p", "x"], 2, r"error: .*--tokens"),
        (["nosuchcommand"], 2, r"error: No such command"),
        (
            ["run", "-m", "/no/such/model.gguf", "-p", "x"],
            1,
            r"error: /no/such/model.gguf: no such model file.*llama-rs convert",
        ),
        (["run", "--json"], 1, r"error: no prompt: stdin was empty"),
    ],
)
def test_errors_are_one_line(args: list[str], code: int, pattern: str) -> None:
    r = cli(*args, input="")
    assert r.returncode == code, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(pattern, r.stderr), r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_model_file_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    r = cli("run", "-m", str(bad), "-p", "x")
    assert r.returncode == 1
    assert r.stderr.strip() == f'error: {bad}: not a GGUF file (magic "not.", expected "GGUF")'


def test_help_of_every_command() -> None:
    r = cli("--help")
    assert r.returncode == 0 and "run" in r.stdout
    commands = re.findall(r"│ (\w+)\s{2,}", r.stdout.split("Commands")[1])
    assert "run" in commands
    for c in commands:
        h = cli(c, "--help")
        assert h.returncode == 0, (c, h.stderr)
        assert "Usage: llama-rs " + c in h.stdout
    h = cli("run", "--help")
    for opt in (
        "--model",
        "--ctx-size",
        "--seed",
        "--threads",
        "--tokens",
        "--top-k",
        "--top-p",
        "--temp",
        "--repeat-penalty",
        "--repeat-last-n",
        "--prompt",
        "--json",
    ):
        assert opt in h.stdout, opt
    assert cli("--version").stdout.strip() == f"llama-rs {llama_rs.__version__}"


def test_console_script_is_installed() -> None:
    exe = shutil.which("llama-rs", path=str(Path(sys.executable).parent))
    assert exe, "the wheel installs the llama-rs console script"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0
