"""Recognise which registry form a parsed document is written in, and list its server entries. Pure.

- native:     {"servers": {"<id>": {...}}, "gateway": {...}}   (also VS Code's mcp.json)
- mcpServers: {"mcpServers": {"<id>": {...}}, "gateway": {...}} (Claude Desktop, Cursor, Windsurf)
- flat:       {"<id>": {...}, "gateway": {...}}                 (the original requirements' form)

`gateway` is reserved at the top level of every form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Form = Literal["native", "mcpServers", "flat"]

# Spellings of `type` that other tools write, mapped to ours (with the transport they imply).
TYPE_ALIASES: dict[str, tuple[str, str | None]] = {
    "stdio": ("stdio", None),
    "http": ("http", None),
    "streamable-http": ("http", "streamable-http"),
    "streamableHttp": ("http", "streamable-http"),
    "sse": ("http", "sse"),
    "docker": ("docker", None),
    "kubernetes": ("kubernetes", None),
    "k8s": ("kubernetes", None),
}


# Keys that Claude Desktop, Cursor, Cline or Windsurf write into `mcpServers` entries for their own use
# (tool approval lists, client-side timeouts). They mean nothing to a gateway: accepted there, ignored,
# and reported as warnings. Any other unknown key is an error, as in every form.
CLIENT_ONLY_KEYS = frozenset({"autoApprove", "alwaysAllow", "disabledTools", "timeout"})


@dataclass(frozen=True)
class RawEntry:
    """One server entry as written, with the dotted path to it in the document."""

    server_id: str
    path: str
    body: Any


@dataclass(frozen=True)
class Document:
    form: Form
    gateway: Any
    entries: tuple[RawEntry, ...]
    problems: tuple[tuple[str, str], ...]


def read_document(doc: Any) -> Document:
    """Split a parsed document into its gateway section and its entries; problems are (path, message)."""
    if doc is None:
        return Document("native", None, (), (("", "the registry is empty: add a 'servers' mapping"),))
    if not isinstance(doc, dict):
        return Document("native", None, (), (("", f"the top level must be a mapping, not {_kind(doc)}"),))
    if "mcpServers" in doc:
        if "servers" in doc:
            return Document("mcpServers", None, (), (("", "give either 'servers' or 'mcpServers', not both"),))
        return _nested(doc, "mcpServers")
    if "servers" in doc and (doc["servers"] is None or isinstance(doc["servers"], dict)):
        return _nested(doc, "servers")
    entries = tuple(RawEntry(key, key, value) for key, value in doc.items() if key != "gateway")
    return Document("flat", doc.get("gateway"), entries, ())


def _nested(doc: dict[str, Any], key: Literal["servers", "mcpServers"]) -> Document:
    problems: list[tuple[str, str]] = []
    for other in doc:
        if other not in (key, "gateway"):
            problems.append((other, f"unknown top-level field (allowed: {key}, gateway)"))
    servers = doc[key]
    if servers is None:
        servers = {}
    if not isinstance(servers, dict):
        problems.append((key, f"must be a mapping of server id to entry, not {_kind(servers)}"))
        servers = {}
    entries = tuple(RawEntry(sid, f"{key}.{sid}", body) for sid, body in servers.items())
    form: Form = "native" if key == "servers" else "mcpServers"
    return Document(form, doc.get("gateway"), entries, tuple(problems))


def suggest_id(server_id: str) -> str:
    """A URL-safe id close to one that is not (`GitHub Server` -> `github-server`)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", server_id.lower()).strip("-._")
    return slug[:63] or "server"


def infer_type(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """Our entry type and implied transport for an entry; (None, message) when it cannot be told."""
    declared = body.get("type")
    if declared is not None:
        if not isinstance(declared, str) or declared not in TYPE_ALIASES:
            allowed = ", ".join(TYPE_ALIASES)
            return None, f"unknown type {declared!r} (allowed: {allowed})"
        return TYPE_ALIASES[declared][0], None
    if any(key in body for key in ("endpoint", "endpoints", "url")):
        return "http", None
    if any(key in body for key in ("command", "cmd")):
        return "stdio", None
    return None, "cannot tell how to reach this server: give 'endpoint' (http), 'command' (stdio), or a 'type'"


def implied_transport(body: dict[str, Any]) -> str | None:
    declared = body.get("type")
    return TYPE_ALIASES[declared][1] if isinstance(declared, str) and declared in TYPE_ALIASES else None


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
