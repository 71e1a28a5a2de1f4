"""Recognise which registry form a parsed document is written in, and list its server entries. Pure.

- native:     {"servers": {"<id>": {...}}, "gateway": {...}}   (also VS Code's .vscode/mcp.json, with `inputs`)
- mcpServers: {"mcpServers": {"<id>": {...}}, "gateway": {...}} (Claude Desktop, Claude Code's .mcp.json,
              Cursor, Windsurf, Cline)
- flat:       {"<id>": {...}, "gateway": {...}}                 (the original requirements' form)

`gateway` is reserved at the top level of every form. docs/registry.md has the table of client files.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from mcpfleet.registry.model import SERVER_ID

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

# Keys whose presence tells an entry's type when it has no `type`.
HTTP_KEYS = ("endpoint", "endpoints", "url", "serverUrl")
COMMAND_KEYS = ("command", "cmd")
KIND_KEYS = frozenset({"type", *HTTP_KEYS, *COMMAND_KEYS})

# Keys that Claude Desktop, Cursor, Cline or Windsurf write into `mcpServers` entries for their own use
# (tool approval lists, client-side timeouts). They mean nothing to a gateway: accepted there, ignored,
# and reported as warnings. Any other unknown key is an error, as in every form.
CLIENT_ONLY_KEYS = frozenset({"autoApprove", "alwaysAllow", "disabledTools", "timeout"})

# Top-level keys besides the servers mapping and `gateway`, by form: VS Code's prompts, ignored (a gateway
# cannot prompt; an entry that uses `${input:...}` fails on its own).
IGNORED_TOP_LEVEL: dict[str, str] = {
    "inputs": "ignored: VS Code prompts for these values, mcpfleet reads ${NAME} from its environment instead",
}
_CONTAINERS = ("servers", "mcpServers", "gateway")


@dataclass(frozen=True)
class RawEntry:
    """One server entry as written, with the dotted path to it in the document."""

    server_id: str
    path: str
    body: Any


@dataclass(frozen=True)
class Document:
    """The parts of a document. `problems` are errors and `notes` things ignored, both (path, message)."""

    form: Form
    gateway: Any
    entries: tuple[RawEntry, ...]
    problems: tuple[tuple[str, str], ...]
    notes: tuple[tuple[str, str], ...] = ()


def read_document(doc: Any) -> Document:
    """Split a parsed document into its gateway section and its entries."""
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
    return _flat(doc)


def _nested(doc: dict[str, Any], key: Literal["servers", "mcpServers"]) -> Document:
    problems: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    allowed = [key, "gateway"]
    ignored = IGNORED_TOP_LEVEL if key == "servers" else {}
    client_keys: list[str] = []
    for other in doc:
        if other in allowed:
            continue
        if other in ignored:
            notes.append((other, ignored[other]))
            continue
        if key == "mcpServers" and not did_you_mean(other, ["gateway"], cutoff=0.75):
            # A file with `mcpServers` is a client's (Claude Desktop's `globalShortcut`, ...): its other
            # top-level keys are that client's business, read by nobody here. A misspelt `gateway` is ours.
            client_keys.append(str(other))
            continue
        hint = did_you_mean(other, [*allowed, *ignored])
        problems.append((other, "unknown top-level field" + (hint or f" (allowed: {', '.join(allowed)})")))
    if client_keys:
        notes.append(("(top level)", f"ignored, the client's own settings: {', '.join(client_keys)}"))
    servers = doc[key]
    if servers is None:
        servers = {}
    if not isinstance(servers, dict):
        problems.append((key, f"must be a mapping of server id to entry, not {_kind(servers)}"))
        servers = {}
    if key == "servers":
        entries = tuple(RawEntry(sid, f"{key}.{sid}", body) for sid, body in servers.items())
        return Document("native", doc.get("gateway"), entries, tuple(problems), tuple(notes))
    return Document(
        "mcpServers", doc.get("gateway"), _client_ids(servers, problems, notes), tuple(problems), tuple(notes)
    )


def _client_ids(
    servers: dict[Any, Any], problems: list[tuple[str, str]], notes: list[tuple[str, str]]
) -> tuple[RawEntry, ...]:
    """The entries of a client's `mcpServers`, their ids lowercased (`Context7` is served at `/context7/mcp`,
    with a note); two ids that differ only in case are an error naming both (Plan Document, section 6.1)."""
    lowered: dict[str, str] = {}
    for sid in servers:
        if isinstance(sid, str):
            lowered.setdefault(sid.lower(), sid)
    entries: list[RawEntry] = []
    for sid, body in servers.items():
        if not isinstance(sid, str) or sid == sid.lower() or not SERVER_ID.fullmatch(sid.lower()):
            entries.append(RawEntry(sid, f"mcpServers.{sid}", body))  # as written: its own error, if any
            continue
        read_as = sid.lower()
        first = lowered[read_as]
        if first != sid or read_as in servers:
            other = read_as if read_as in servers else first
            problems.append(
                (
                    f"mcpServers.{sid}",
                    f"server ids {other!r} and {sid!r} differ only in case, and ids are lowercase (URL paths):"
                    " rename one",
                )
            )
            continue
        notes.append((f"mcpServers.{sid}", f"served as {read_as!r}: server ids are lowercase (URL paths)"))
        entries.append(RawEntry(read_as, f"mcpServers.{sid}", body))
    return tuple(entries)


def _flat(doc: dict[str, Any]) -> Document:
    """Every top-level key but `gateway` is an id, unless it is a misspelt `servers`, `mcpServers` or `gateway`.

    A key close to one of those, whose value is a mapping with no key that makes an entry (`type`, `command`,
    `endpoint`...), is that typo: `server: {time: {...}}` is reported as such, not as a server called `server`.
    """
    problems: list[tuple[str, str]] = []
    entries: list[RawEntry] = []
    for key, value in doc.items():
        if key == "gateway":
            continue
        hint = did_you_mean(key, _CONTAINERS, cutoff=0.75) if isinstance(key, str) else ""
        if hint and isinstance(value, dict) and not KIND_KEYS & value.keys():
            problems.append((key, "unknown top-level field" + hint))
            continue
        entries.append(RawEntry(key, key, value))
    return Document("flat", doc.get("gateway"), tuple(entries), tuple(problems))


def closest(key: object, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to `key`, ignoring case (`comand` -> `command`); None when none is close."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(str(key).lower(), by_lower, n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None


def did_you_mean(key: object, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """` (did you mean 'x'?)` for the closest candidate, "" when none is close."""
    close = closest(key, candidates, cutoff)
    return f" (did you mean '{close}'?)" if close else ""


def suggest_id(server_id: str) -> str:
    """A URL-safe id close to one that is not (`GitHub Server` -> `github-server`)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", server_id.lower()).strip("-._")
    return slug[:63] or "server"


def infer_type(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """Our entry type and implied transport for an entry; (None, message) when it cannot be told."""
    declared = body.get("type")
    if declared is not None:
        if not isinstance(declared, str) or declared not in TYPE_ALIASES:
            hint = did_you_mean(declared, TYPE_ALIASES) if isinstance(declared, str) else ""
            return None, f"unknown type {declared!r}" + (hint or f" (allowed: {', '.join(TYPE_ALIASES)})")
        return TYPE_ALIASES[declared][0], None
    if any(key in body for key in HTTP_KEYS):
        return "http", None
    if any(key in body for key in COMMAND_KEYS):
        return "stdio", None
    return None, "cannot tell how to reach this server: give 'endpoint' (http), 'command' (stdio), or a 'type'"


def implied_transport(body: dict[str, Any]) -> str | None:
    declared = body.get("type")
    return TYPE_ALIASES[declared][1] if isinstance(declared, str) and declared in TYPE_ALIASES else None


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
