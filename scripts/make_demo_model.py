"""Regenerate the demo model shipped in the wheel (python/llama_rs/data/fortunes-1M.gguf).

fortunes-1M is a 1M-parameter LLaMA trained on Debian's fortune cookies; its Meta-layout
checkpoint lives in ../shared/models/fortunes-1M. This converts it with our own tools, as a
user would: `llama-rs convert` (F16, the SentencePiece vocab embedded), then
`llama-rs quantize ... q8_0` (1.0 MB instead of 1.9 MB; greedy text unchanged). The file is
committed, so a fresh clone has it.

    python scripts/make_demo_model.py [SRC_DIR] [OUT]

Needs the `convert` extra (torch, safetensors, sentencepiece, protobuf, gguf).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from llama_rs import quantize_file
from llama_rs.convert import convert

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT.parent / "shared" / "models" / "fortunes-1M"
OUT = ROOT / "python" / "llama_rs" / "data" / "fortunes-1M.gguf"


def main(src: Path = SRC, out: Path = OUT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "fortunes-1M-f16.gguf"
        print(convert(src, f16, outtype="f16", force=True))
        print(quantize_file(f16, out, "q8_0", force=True))


if __name__ == "__main__":
    main(*[Path(a) for a in sys.argv[1:]])
