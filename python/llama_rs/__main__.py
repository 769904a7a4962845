"""`python -m llama_rs [PROMPT]`: generate text from the demo model (or --model FILE)."""

from __future__ import annotations

import argparse
import sys

from . import Model, ModelError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llama_rs", description="Generate text with a GGUF LLaMA model (default: the demo model)."
    )
    p.add_argument("prompt", nargs="?", default="Never trust a computer", help="text to continue")
    p.add_argument("-m", "--model", help="a .gguf file (default: the fortunes-1M demo model in the wheel)")
    p.add_argument("-n", "--max-tokens", type=int, default=128)
    p.add_argument("--temp", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("-c", "--n-ctx", type=int, default=512)
    a = p.parse_args(argv)
    try:
        m = Model(a.model, n_ctx=a.n_ctx, seed=a.seed) if a.model else Model.demo(seed=a.seed)
        sys.stdout.write(a.prompt)
        for piece in m.generate(a.prompt, max_tokens=a.max_tokens, temp=a.temp):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
