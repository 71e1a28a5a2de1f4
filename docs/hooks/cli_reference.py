"""MkDocs hook: replace the marker line in the CLI page with a reference generated from the Typer app.

The reference is built from the command tree `typer.main.get_command(app)` returns, with the ordinary
click attributes (`params`, `opts`, `metavar`, `is_flag`, `help`, `default`, `required`), so it cannot drift
from the code: a flag is listed as taking nothing, a value option with the metavar `--help` shows.
Typer 0.29 vendors its own copy of click, so contexts are `typer.Context` rather than `click.Context`.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import typer
import typer.main

if TYPE_CHECKING:
    from typer._click.core import Command, Parameter

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from mcpfleet.cli import app

    root = typer.main.get_command(app)
    return markdown.replace(MARKER, "\n".join(_command(root, typer.Context(root, info_name="mcpfleet"))))


def _command(command: Command, ctx: typer.Context) -> list[str]:
    """The section of one command, followed by the sections of its subcommands (depth first)."""
    lines = [f"## {ctx.command_path}", ""]
    if command.help:
        lines += [_text(inspect.cleandoc(command.help)), ""]
    usage = command.get_usage(ctx).removeprefix("Usage:").strip()
    lines += ["```text", usage, "```", ""]
    params = [param for param in command.params if not getattr(param, "hidden", False)]
    if params:
        lines += ["| argument or option | takes | description | default |", "|---|---|---|---|"]
        lines += [_row(param) for param in params]
        lines.append("")
    children = _subcommands(command, ctx)
    if children:
        lines += ["Commands:", ""]
        lines += [f"- [`{name}`](#{_anchor(f'{ctx.command_path} {name}')}): {_summary(sub)}" for name, sub in children]
        lines.append("")
    for name, sub in children:
        lines += _command(sub, typer.Context(sub, info_name=name, parent=ctx))
    return lines


def _subcommands(command: Command, ctx: typer.Context) -> list[tuple[str, Command]]:
    """The visible subcommands of a group, in the order the CLI lists them; none for a plain command."""
    list_commands = getattr(command, "list_commands", None)
    get = getattr(command, "get_command", None)
    if list_commands is None or get is None:
        return []
    found = [(name, get(ctx, name)) for name in list_commands(ctx)]
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def _row(param: Parameter) -> str:
    if param.param_type_name == "argument":
        name = f"`{param.name}`"
        takes = "argument"
    else:
        name = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
        # A flag takes nothing; a value option shows the metavar its help shows (`--port PORT`).
        takes = "flag" if getattr(param, "is_flag", False) else f"`{param.metavar}`" if param.metavar else "value"
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        takes += f", {low} to {high}"
    if param.multiple:
        takes += ", repeatable"
    description = _cell(getattr(param, "help", None) or "")
    return f"| {name} | {takes} | {description} | {_default(param)} |"


def _default(param: Parameter) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


def _summary(command: Command) -> str:
    text = inspect.cleandoc(command.short_help or command.help or "")
    return _cell(text.split("\n\n")[0].replace("\n", " "))


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\n", " ")


def _text(text: str) -> str:
    """Help text as Markdown: a `<server-id>` outside backticks is text, not an HTML tag to drop."""
    parts = text.split("`")
    return "`".join(part if index % 2 else part.replace("<", "&lt;") for index, part in enumerate(parts))


def _anchor(title: str) -> str:
    """The id the `toc` extension gives a heading made of lowercase words (its default slugify)."""
    return "-".join(title.lower().split())
