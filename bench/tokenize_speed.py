"""Llama 3 tokenization speed: our byte-level BPE (`llama_rs.Tokenizer`, on the vocab our
convert writes from Meta's `tokenizer.model`) against tiktoken with the same file (Meta's
reference, through `llama_models`), on the same ~1 MB of text, runs alternating.

    python bench/tokenize_speed.py [--text FILE] [--repeat 20] [--runs 7]

The text is `../shared/models/fortunes-heldout.txt` repeated `--repeat` times (x20: 1.02 MB).
Two ways: the whole text in one call, and line by line (27,761 short calls: the per-call
cost). Both give tokens/s (ids out per second) and ours / tiktoken; the ids are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import llama_rs
from llama_rs.convert.bpe_vocab import read_tiktoken
from llama_rs.convert.writer import write_vocab_gguf

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda k: fields.get(k, "?").strip()  # noqa: E731
    return f"{get('Model name')} (family {get('CPU family')} model {get('Model')}), {get('CPU(s)')} CPUs"


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=ROOT.parent / "shared" / "models" / "fortunes-heldout.txt")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()

    import llama_models
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    meta_file = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    vocab = ROOT / "bench" / "out" / "llama3-vocab.gguf"
    if not vocab.exists():
        vocab.parent.mkdir(parents=True, exist_ok=True)
        write_vocab_gguf(read_tiktoken(meta_file), vocab)
    ours = llama_rs.Tokenizer(vocab)
    tk = MetaTokenizer(meta_file).model  # a tiktoken.Encoding

    text = a.text.read_text(encoding="utf-8") * a.repeat
    lines = text.splitlines(keepends=True)
    print(f"CPU: {cpu_model()}")
    print(f"text: {a.text.name} x{a.repeat} = {len(text.encode()):,} bytes, {len(lines):,} lines")

    def ours_whole():
        return ours.encode(text)

    def tk_whole():
        return tk.encode(text, allowed_special=set(), disallowed_special=())

    def ours_lines():
        return [ours.encode(x) for x in lines]

    def tk_lines():
        return [tk.encode(x, allowed_special=set(), disallowed_special=()) for x in lines]

    for name, f_ours, f_tk in [("whole text", ours_whole, tk_whole), ("per line", ours_lines, tk_lines)]:
        t_ours, t_tk = [], []
        for _ in range(a.runs):  # alternating, so that a busy moment hits both
            t, ids_ours = timed(f_ours)
            t_ours.append(t)
            t, ids_tk = timed(f_tk)
            t_tk.append(t)
        assert ids_ours == ids_tk, f"{name}: the ids differ"
        n = len(ids_ours) if name == "whole text" else sum(map(len, ids_ours))
        best_o, best_t = min(t_ours), min(t_tk)
        med_o, med_t = statistics.median(t_ours), statistics.median(t_tk)
        print(
            f"{name:>10}: {n:,} tokens | llama_rs {n / best_o / 1e6:.2f} M tok/s (median {n / med_o / 1e6:.2f}) | "
            f"tiktoken {n / best_t / 1e6:.2f} M tok/s (median {n / med_t / 1e6:.2f}) | "
            f"ratio {best_t / best_o:.2f} (median {med_t / med_o:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
