"""The `mcpfleet` command line (Typer). `main()` is the console script's entry point."""

import sys

import typer

from mcpfleet.cli import (
    deploy,  # noqa: F401  (imported for its commands: deploy, scale, status, logs and remove on `app`)
    output,
)
from mcpfleet.cli.app import app


def main() -> None:
    """Run the CLI. A usage error the parser finds (an unknown option, a value out of range, an extra
    argument) is one `error:` line and exit 2, like every error the commands report themselves."""
    try:
        code = app(prog_name="mcpfleet", standalone_mode=False)
    except typer.TyperException as exc:
        context = getattr(exc, "ctx", None)
        if context is not None and type(exc).__name__ == "NoArgsIsHelpError":
            output.plain(context.get_help(), stream=sys.stderr)  # `mcpfleet` alone: the help, exit 2
        else:
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            output.error(exc.format_message() + hint)
        code = exc.exit_code
    except typer.Abort:
        output.error("aborted")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
