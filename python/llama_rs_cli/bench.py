"""`llama-rs bench`: prompt processing (pp) and text generation (tg) speed, llama-bench style."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Optional

import typer

import llama_rs

from .common import errors_as_messages, fail, given, missing_model_hint, warn_if_beyond_training


def base_row(m: llama_rs.Model, threads: int, reps: int, level: str, **test) -> dict:
    """A result row's identity: file, type, threads, what was measured, kernels."""
    return {"model": str(m.path.name), "type": m._engine.file_type, "threads": threads, **test,
            "repetitions": reps, "kernels": level}  # fmt: skip


def rate_fields(name: str, rates: list[float]) -> dict:
    """`{name}_tokens_per_second` (mean) and `{name}_stdev` of the repetitions."""
    sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return {f"{name}_tokens_per_second": round(statistics.mean(rates), 2), f"{name}_stdev": round(sd, 2)}


#: Prompt tokens of each sequence in `bench --parallel`.
BATCH_PROMPT = 16


def parse_counts(spec: str, hint: str, what: str, top: int = 1 << 16) -> list[int]:
    try:
        out = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{spec!r} is not a comma-separated list of numbers", param_hint=hint) from None
    if not out or any(not 1 <= t <= top for t in out):
        raise typer.BadParameter(f"{what} must be from 1 to {top}", param_hint=hint)
    return out


def random_prompt(m: llama_rs.Model, rng: random.Random, n: int) -> list[int]:
    """BOS, then `n - 1` random ids past the first special ones (none when `n` is 0)."""
    return [m.bos_token or 1] + [rng.randrange(3, m.n_vocab) for _ in range(n - 1)] if n else []


def run_batch(m: llama_rs.Model, n: int, prompt_len: int, n_gen: int, seed: int) -> tuple[int, float]:
    """Tokens generated after the first and the seconds they took, for `n` sequences of
    random `prompt_len`-token prompts decoded together (greedy) by one batch engine."""
    b = m.batch_engine(n, n_ctx=prompt_len + n_gen + 1)
    rng = random.Random(seed)
    for _ in range(n):
        b.add(random_prompt(m, rng, prompt_len), {"max_tokens": n_gen, "temp": 0})
    seen: dict[int, int] = {}  # tokens each sequence had at its last event
    while len(seen) < n:  # prefill (not timed): until every sequence has its first token
        for e in b.step():
            seen[e.id] = e.tokens
    made, t0 = 0, time.perf_counter()
    while b.active:
        for e in b.step():
            made += e.tokens - seen[e.id]
            seen[e.id] = e.tokens
    return made, time.perf_counter() - t0


def run_once(m: llama_rs.Model, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """Seconds for the prompt as one batch, and for n_gen single-token evaluations."""
    m.reset()
    t0 = time.perf_counter()
    logits = m.eval(prompt) if prompt else None
    t_pp = time.perf_counter() - t0
    if logits is None:
        logits = m.eval([m.bos_token or 1])
    t0 = time.perf_counter()
    for _ in range(n_gen):
        logits = m.eval([int(logits.argmax())])
    return t_pp, time.perf_counter() - t0


def bench(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(
        None, "-m", "--model", help="GGUF model file. Default: the demo model.", show_default=False
    ),
    n_prompt: int = typer.Option(512, "-p", "--n-prompt", min=0, help="Prompt tokens, evaluated as one batch (pp)."),
    n_gen: int = typer.Option(128, "-n", "--n-gen", min=0, help="Tokens generated one at a time (tg)."),
    threads: str = typer.Option("1,2", "-t", "--threads", help="Comma-separated thread counts, one row each."),
    reps: int = typer.Option(3, "-r", "--repetitions", min=1, help="Repetitions per row (mean ± standard deviation)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    parallel: Optional[str] = typer.Option(
        None,
        "--parallel",
        help="Comma-separated batch sizes, e.g. 1,2,4,8,16: instead of pp/tg, the batch engine (what `serve "
        "--parallel` runs) decoding that many sequences at once; aggregate tokens/s over all of them "
        f"(prompts of {BATCH_PROMPT} random tokens, not timed).",
        show_default=False,
    ),
) -> None:
    """Measure prompt processing and generation speed in tokens per second.

    The first line says which kernels run: the best instruction set this CPU has (portable,
    avx2, avx512, amx), or the lower one forced by LLAMA_RS_ISA=portable|avx2|avx512 for
    comparison; and whether generation's kernels over repacked weights send prefetch hints (on,
    except on CPUs whose own prefetchers do better alone; LLAMA_RS_PREFETCH=0|1 decides instead).
    """
    counts = parse_counts(threads, "'-t'", "thread counts")
    batches = parse_counts(parallel, "'--parallel'", "--parallel sizes", 256) if parallel else []
    if batches and n_gen < 2:
        fail("--parallel needs -n/--n-gen of at least 2 (the first token of each sequence is not timed)")
    if model is not None and not model.exists():
        fail(missing_model_hint(model))
    rows = []
    with errors_as_messages():
        level, forced, cpu_level = llama_rs._core.kernel_level()
        hints, hints_forced = llama_rs._core.prefetch_hints()
        if not as_json:
            why = "forced by LLAMA_RS_ISA" if forced else "the best this CPU has"
            how = "set by LLAMA_RS_PREFETCH" if hints_forced else "this CPU's default; LLAMA_RS_PREFETCH=0|1 sets them"
            typer.echo(
                f"kernels: {level} ({why}; this CPU: {cpu_level}), "
                f"generation prefetch hints {'on' if hints else 'off'} ({how})"
            )
        n_ctx = (BATCH_PROMPT if batches else n_prompt) + n_gen + 1
        for t in counts:
            m = (
                llama_rs.Model.demo(n_ctx=n_ctx, n_threads=t)
                if model is None
                else llama_rs.Model(model, n_ctx=n_ctx, n_threads=t)
            )
            if not rows and given(ctx, "n_prompt", "n_gen"):  # once, not per thread count
                warn_if_beyond_training(m, n_ctx)
            repacked = m.wait_repacked()  # before any timing: the repack runs on a thread from load
            if not rows and not as_json and repacked:
                typer.echo(
                    f"weights: {repacked} matrices repacked for these kernels (LLAMA_RS_REPACK=0: as in the file)"
                )
            prompt = random_prompt(m, random.Random(0), n_prompt)
            run_once(m, prompt[: min(8, len(prompt))], 1)  # warm up: page in the weights, start the threads
            if batches:
                rows += batch_rows(m, t, batches, n_gen, reps, level, as_json, first=not rows)
                continue
            pp, tg = [], []
            for _ in range(reps):
                t_pp, t_tg = run_once(m, prompt, n_gen)
                if n_prompt:
                    pp.append(n_prompt / t_pp)
                if n_gen:
                    tg.append(n_gen / t_tg)
            row = base_row(m, t, reps, level, n_prompt=n_prompt, n_gen=n_gen)
            for name, vals in (("pp", pp), ("tg", tg)):
                if vals:
                    row.update(rate_fields(name, vals))
            rows.append(row)
            if not as_json:
                if len(rows) == 1:
                    typer.echo(f"{'model':<28} {'type':<6} {'threads':>7} {'test':>8} {'tokens/s':>18}")
                for name, n in (("pp", n_prompt), ("tg", n_gen)):
                    if f"{name}_tokens_per_second" in row:
                        typer.echo(
                            f"{row['model'][:28]:<28} {row['type']:<6} {t:>7} {name + str(n):>8} "
                            f"{row[name + '_tokens_per_second']:>10.2f} ± {row[name + '_stdev']:<6.2f}"
                        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))


def batch_rows(
    m: llama_rs.Model, t: int, batches: list[int], n_gen: int, reps: int, level: str, as_json: bool, first: bool
) -> list[dict]:
    rows = []
    for n in batches:
        rates = []
        for r in range(reps):
            made, secs = run_batch(m, n, BATCH_PROMPT, n_gen, seed=r)
            rates.append(made / secs)
        row = {**base_row(m, t, reps, level, parallel=n, n_gen=n_gen), **rate_fields("tg", rates)}
        rows.append(row)
        if not as_json:
            if first and len(rows) == 1:
                typer.echo(f"{'model':<28} {'type':<6} {'threads':>7} {'parallel':>8} {'test':>6} {'tokens/s':>18}")
            typer.echo(
                f"{row['model'][:28]:<28} {row['type']:<6} {t:>7} {n:>8} {'tg' + str(n_gen):>6} "
                f"{row['tg_tokens_per_second']:>10.2f} ± {row['tg_stdev']:<6.2f}"
            )
    return rows
