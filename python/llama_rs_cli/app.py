"""`llama-rs`: the command-line entry point. Each command lives in its own module; this one
only registers them and turns errors into one-line messages with the right exit code."""

from __future__ import annotations

import sys

import typer

import llama_rs

from .common import CliError, set_debug, is_debug

app = typer.Typer(
    name="llama-rs",
    help="Run LLaMA-family models on your CPU: chat, serve, convert and quantize GGUF models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llama-rs {llama_rs.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    set_debug(debug)


# Commands: one module each, listed in --help in this order.
from . import bench, convert, info, perplexity, quantize, run, serve  # noqa: E402

app.command("run", help="Chat with a model at an interactive prompt, or generate once with -p.")(run.run)
app.command("serve", help="Serve the model over HTTP (OpenAI-compatible API, web page) with worker processes.")(serve.serve)
app.command("convert", help="Convert a Meta (.pth), Hugging Face or llama2.c checkpoint to GGUF.")(convert.convert)
app.command("quantize", help="Quantize a GGUF model (q4_0, q4_1, q8_0, f16, f32), streaming one tensor at a time.")(quantize.quantize)
app.command("info", help="Show a model file's format, hyperparameters and tensors (GGUF or legacy).")(info.info)
app.command("perplexity", help="Measure perplexity on a text file with llama.cpp's method.")(perplexity.perplexity)
app.command("bench", help="Measure prompt and generation speed (tokens/s), llama-bench style.")(bench.bench)
app.command("worker", hidden=True)(serve.worker)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 2 and runtime errors exit 1, each as one line on stderr."""
    try:  # typer >= 0.24 vendors its own copy of click
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click

    try:
        # Without standalone mode, an Exit raised inside a command comes back as its code.
        code = app(args=argv, standalone_mode=False, prog_name="llama-rs")
    except click.NoArgsIsHelpError as e:  # bare `llama-rs`: the help, status 0
        typer.echo(e.ctx.get_help() if e.ctx else "", err=False)
        sys.exit(0)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "llama-rs"
        typer.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except click.Abort:
        typer.echo("", err=True)
        sys.exit(130)
    except CliError as e:
        if is_debug():
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
