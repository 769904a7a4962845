"""The `llama-rs` command line (Typer app); see `llama_rs_cli.app`."""
