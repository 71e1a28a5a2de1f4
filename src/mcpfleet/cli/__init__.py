"""The `mcpfleet` command line (Typer). `main()` is the console script's entry point."""

from mcpfleet.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
