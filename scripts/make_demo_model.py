"""Regenerate the demo model shipped in the wheel (python/llama_rs/data/fortunes-1M.gguf).

fortunes-1M is a 1M-parameter LLaMA trained on Debian's fortune cookies; its Meta-layout
checkpoint lives in ../shared/models/fortunes-1M. This converts it with `llama-rs convert`
(F16 matrices, F32 norms, the SentencePiece vocab embedded); the file is committed, so a fresh
clone has it.

    python scripts/make_demo_model.py [SRC_DIR] [OUT]

Needs the `convert` extra (torch, safetensors, sentencepiece, protobuf, gguf).
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_rs.convert import convert

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT.parent / "shared" / "models" / "fortunes-1M"
OUT = ROOT / "python" / "llama_rs" / "data" / "fortunes-1M.gguf"


def main(src: Path = SRC, out: Path = OUT) -> None:
    print(convert(src, out, outtype="f16", force=True))


if __name__ == "__main__":
    main(*[Path(a) for a in sys.argv[1:]])
