"""`llama-rs`: the command-line entry point. Each command lives in its own module; this one
only registers them and turns errors into one-line messages with the right exit code."""

from __future__ import annotations

import os
import sys

import typer

import llama_rs

from .common import CliError, describe, is_debug, one_line, set_debug

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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    set_debug(debug)


# Commands: one module each, listed in --help in this order.
from . import bench, convert, info, perplexity, quantize, run, serve  # noqa: E402

app.command("run", help="Chat with a model at an interactive prompt, or generate once with -p.")(run.run)
app.command(
    "serve",
    help="Serve the model over HTTP (OpenAI-compatible API, web page, /health, /metrics) with worker processes. "
    "Memory: each of the -w workers holds the weights once and at most --kv-cells KV cells "
    "(default --parallel x --ctx-size).",
)(serve.serve)
app.command("convert", help="Convert a Meta (.pth), Hugging Face or llama2.c checkpoint to GGUF.")(convert.convert)
app.command(
    "quantize",
    help="Quantize a GGUF model to a file type (q4_k_m, q4_0, q8_0, ...: llama.cpp's names and per-tensor types), "
    "streaming one tensor at a time.",
    epilog=quantize.types_help(),
)(quantize.quantize)
app.command("info", help="Show a model file's format, hyperparameters and tensors (GGUF or legacy).")(info.info)
app.command("perplexity", help="Measure perplexity on a text file with llama.cpp's method.")(perplexity.perplexity)
app.command("bench", help="Measure prompt and generation speed (tokens/s), llama-bench style.")(bench.bench)


def _usage_error_class() -> type[Exception]:
    """click's UsageError, found through typer's public BadParameter: typer >= 0.24 vendors its
    own click (typer._click), older versions use click itself, and neither module is the API."""
    return next((c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"), typer.BadParameter)


def _click_exception_class() -> type[Exception]:
    """click's ClickException (a file error, ...: shown as a runtime failure)."""
    return next((c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"), _usage_error_class())


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 2 and runtime errors exit 1, each as one line on stderr;
    Ctrl+C exits 130. Anything else is a bug: one line too, or its traceback with --debug."""
    usage_error, click_exception = _usage_error_class(), _click_exception_class()
    try:
        # Without standalone mode, an Exit raised inside a command comes back as its code.
        code = app(args=argv, standalone_mode=False, prog_name="llama-rs")
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `llama-rs` (click >= 8.2): the help, status 0
            typer.echo(e.ctx.get_help() if e.ctx else "")
            sys.exit(0)
        cmd = e.ctx.command_path if getattr(e, "ctx", None) else "llama-rs"
        typer.echo(f"error: {one_line(e.format_message())} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(getattr(e, "exit_code", 0))
    except (typer.Abort, KeyboardInterrupt):  # typer turns Ctrl+C into Exit(130); click into Abort
        sys.exit(130)
    except BrokenPipeError:  # `llama-rs ... | head`: stop quietly, and keep Python from
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # complaining at exit
        sys.exit(1)
    except click_exception as e:
        typer.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(getattr(e, "exit_code", 1))
    except (CliError, OSError) as e:  # OSError includes llama_rs.ModelError
        if is_debug():
            raise
        typer.echo(f"error: {describe(e)}", err=True)
        sys.exit(1)
    except Exception as e:
        if is_debug():
            raise
        typer.echo(
            f"error: internal error: {type(e).__name__}: {describe(e)} (run with --debug for the traceback)", err=True
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
