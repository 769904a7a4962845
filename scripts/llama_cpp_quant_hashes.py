"""Write tests/data/llama_cpp_quants.json: for each file type, the type llama.cpp's
`llama-quantize` gives each tensor of fortunes-4M-f32.gguf and the SHA-256 of its bytes.

The reference for our encoders (tests/test_quant_llama_cpp.py); run once when llama.cpp's
commit changes. llama.cpp is not committed; build it as DEVELOPERS.md says, then:

    python scripts/llama_cpp_quant_hashes.py --llama-cpp ~/llama.cpp   # or LLAMA_CPP_DIR

Made with llama.cpp c392e50, no importance matrix, 2 threads (the bytes do not depend on it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "models" / "fortunes-4M-f32.gguf"
OUT = ROOT / "tests" / "data" / "llama_cpp_quants.json"
# The file types `llama-rs quantize` offers, by llama.cpp's names.
FTYPES = [
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "iq4_nl",
    "iq4_xs",
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
]


def tensor_hashes(path: Path) -> dict[str, list[str]]:
    r = gguf.GGUFReader(path)
    return {t.name: [t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()] for t in r.tensors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--llama-cpp",
        type=Path,
        default=os.environ.get("LLAMA_CPP_DIR"),
        help="llama.cpp checkout with build/bin/llama-quantize",
    )
    args = ap.parse_args()
    if args.llama_cpp is None:
        ap.error("give --llama-cpp or set LLAMA_CPP_DIR")
    exe = Path(args.llama_cpp) / "build" / "bin" / "llama-quantize"
    result: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ft in FTYPES:
            dst = Path(tmp) / f"{ft}.gguf"
            subprocess.run([str(exe), str(SOURCE), str(dst), ft, "2"], check=True, capture_output=True)
            result[ft] = tensor_hashes(dst)
            print(ft, len(result[ft]), "tensors", file=sys.stderr)
    OUT.write_text(json.dumps({"source": SOURCE.name, "llama_cpp": "c392e50", "ftypes": result}, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
