"""How the CLI shows things: Rich tables for people, `--json` for machines. No I/O policy beyond printing."""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mcpfleet.masking import mask

# Text that comes from servers (tool output, descriptions, stderr) is never read as Rich markup or emoji
# codes: tables get `Text` cells, and content is written with `plain`, byte for byte.
stdout = Console(soft_wrap=True, emoji=False, highlight=False)
stderr = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)


def plain(text: str, *, stream: Any = None, end: str = "\n") -> None:
    target = stream or sys.stdout
    target.write(text + end)
    target.flush()


def jsonable(value: Any) -> Any:
    """Plain JSON data for SDK models (wire field names), and lists and dicts of them."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def as_json(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False)


def print_json(value: Any) -> None:
    sys.stdout.write(as_json(value) + "\n")


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    grid = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))
    stdout.print(grid)


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def schema_params(schema: dict[str, Any] | None) -> str:
    """`name*: type` for each input property; `*` marks required ones."""
    if not schema:
        return ""
    required = set(schema.get("required", []))
    parts = []
    for name, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        if isinstance(kind, list):
            kind = "|".join(kind)
        parts.append(f"{name}{'*' if name in required else ''}: {kind}")
    return ", ".join(parts)


def content_text(blocks: list[Any]) -> str:
    """Readable text for a list of MCP content blocks."""
    out = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            out.append(block.text)
        elif kind in ("image", "audio"):
            out.append(f"[{kind} {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif kind == "resource":
            resource = block.resource
            out.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif kind == "resource_link":
            out.append(f"[resource link {block.uri}]")
        else:
            out.append(as_json(block))
    return "\n".join(out)


def error(message: str) -> None:
    """`error: message` on stderr, with the registry's `${VAR}` values masked (`masking.install`: a URL with
    a host from the environment, a crashed server's stderr that echoes its token)."""
    stderr.print(f"[bold red]error:[/bold red] {escape(mask(message))}")
