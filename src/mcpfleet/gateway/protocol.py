"""MCP-over-HTTP protocol rules the gateway needs, as pure functions: no sockets, no asyncio.

JSON-RPC message classification, protocol-version eras, the headers a proxy must treat specially,
Server-Sent Events framing, and the request-id remapping that lets several clients share one stdio
process (ids and progress tokens restored exactly, JSON type included).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mcpfleet.errors import GatewayError

HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"  # the listen request's id, on each event it carries

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = b"mcp-protocol-version"
LAST_EVENT_ID = b"last-event-id"

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection: never forwarded, nor any header that
# `Connection` names, nor any `Proxy-*`. `Expect` too: the gateway has read the whole body already.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"expect",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
HOP_BY_HOP_PREFIXES = (b"proxy-",)
# What a client says about its own address, host and scheme is not passed on: the gateway sets
# X-Forwarded-For/-Host/-Proto from the connection itself (it trusts no proxy in front of it).
CLIENT_CLAIMS = frozenset({b"forwarded", b"x-real-ip"})
CLIENT_CLAIM_PREFIXES = (b"x-forwarded-",)
# Towards the server: what the gateway sets itself (Host: the replica's; Content-Length: of the body it
# sends; Mcp-Session-Id: the upstream's) and Origin (checked at the gateway; nobody to protect behind it).
NOT_FORWARDED_UP = HOP_BY_HOP | CLIENT_CLAIMS | {b"host", b"content-length", b"origin", SESSION_HEADER}
NOT_FORWARDED_UP_PREFIXES = HOP_BY_HOP_PREFIXES + CLIENT_CLAIM_PREFIXES
NOT_FORWARDED_DOWN = HOP_BY_HOP | {SESSION_HEADER, b"content-length", b"server", b"date"}


def without(headers: Sequence[tuple[bytes, bytes]], names: frozenset[bytes], prefixes: tuple[bytes, ...]) -> Headers:
    """`headers` (lowercase names) less those in `names`, those starting with one of `prefixes`, and those
    the `Connection` header names. `names` must hold `connection`. Repeated headers stay repeated."""
    kept: Headers = []
    connection: list[bytes] = []
    for name, value in headers:
        if name in names or name.startswith(prefixes):
            if name == b"connection":
                connection.append(value)
            continue
        kept.append((name, value))
    if connection:
        named = {token.strip().lower() for token in b",".join(connection).split(b",")}
        kept = [(name, value) for name, value in kept if name not in named]
    return kept


def forwarded_for(client: Any, host: str | None, scheme: str) -> Headers:
    """The X-Forwarded-* headers the gateway sets for a client connection: its address, the `Host` it asked
    for, and `http` or `https` (a WebSocket's `ws`/`wss` counts as the HTTP request it began as)."""
    headers: Headers = []
    if client:
        headers.append((b"x-forwarded-for", str(client[0]).encode()))
    if host:
        headers.append((b"x-forwarded-host", host.encode("latin-1")))
    headers.append((b"x-forwarded-proto", b"https" if scheme in ("https", "wss") else b"http"))
    return headers


def is_modern(version: str | None) -> bool:
    """A 2026-07-28-style request: it names a version that is not one of the handshake era.

    This is the SDK server's own rule (header only): no header means the handshake era.
    """
    return version is not None and version not in HANDSHAKE_VERSIONS


# --- JSON-RPC ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One parsed JSON-RPC message and the exact bytes it came in."""

    data: dict[str, Any]
    raw: bytes

    @property
    def method(self) -> str | None:
        method = self.data.get("method")
        return method if isinstance(method, str) else None

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.data

    @property
    def is_notification(self) -> bool:
        return self.method is not None and "id" not in self.data

    @property
    def is_response(self) -> bool:
        return self.method is None and "id" in self.data and ("result" in self.data or "error" in self.data)

    @property
    def id_key(self) -> str:
        """The id as a dictionary key that keeps 1 and "1" apart."""
        return id_key(self.data.get("id"))

    def progress_token(self) -> Any:
        params = self.data.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        return meta.get("progressToken") if isinstance(meta, dict) else None


def id_key(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def parse_message(line: bytes) -> Message | None:
    """A message from a trusted peer (a stdio process); None for a line that is not a JSON-RPC object."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return Message(data, line) if isinstance(data, dict) else None


def parse_body(body: bytes) -> tuple[list[Message], bool]:
    """The messages of a POST body and whether it was a batch. Raises GatewayError 400 when malformed."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise GatewayError.parse_error(f"the body is not valid JSON: {exc}") from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    if not items or not all(isinstance(item, dict) and item.get("jsonrpc") == "2.0" for item in items):
        raise GatewayError.invalid_request("the body must be a JSON-RPC 2.0 message or a non-empty batch of them")
    # Each message must fit on one line for stdio; reuse the original bytes when they already do.
    if not batch and b"\n" not in body and b"\r" not in body:
        return [Message(items[0], body.strip())], False
    return [Message(item, dumps(item)) for item in items], batch


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return dumps({"jsonrpc": "2.0", "id": request_id, "error": error})


def is_initialize(messages: list[Message]) -> bool:
    return len(messages) == 1 and messages[0].method == "initialize" and messages[0].is_request


# --- Server-Sent Events -----------------------------------------------------------------------------------


def sse_event(data: bytes, event_id: str | None = None, event: str = "message") -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    lines = data.split(b"\n")
    return head.encode() + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def accepts(accept: str, media_type: str) -> bool:
    for part in accept.split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind in (media_type, "*/*", media_type.split("/")[0] + "/*"):
            return True
    return False


# --- id remapping for shared processes --------------------------------------------------------------------


@dataclass
class IdMap:
    """Gives each request sent to a shared process a fresh id, and restores the original on the way back.

    The original id is kept as the parsed JSON value, so a string id stays a string and an integer an
    integer. Progress tokens are remapped the same way, so two clients using the same token do not see
    each other's progress, and the events of a `subscriptions/listen` stream, which name the listen
    request's id, go to the client that opened it.
    """

    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ids: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    _tokens: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def outgoing(self, message: Message, owner: Any) -> tuple[int, bytes]:
        """Rewrite a client request for the process; returns the process-side id and the bytes to send."""
        data = dict(message.data)
        upstream_id = next(self._counter)
        self._ids[upstream_id] = (owner, data.get("id"))
        data["id"] = upstream_id
        token = message.progress_token()
        if token is not None:
            params = dict(data["params"])
            meta = dict(params["_meta"])
            mapped = f"p{upstream_id}"
            self._tokens[mapped] = (owner, token)
            meta["progressToken"] = mapped
            params["_meta"] = meta
            data["params"] = params
        return upstream_id, dumps(data)

    def cancel(self, upstream_id: int, reason: str) -> bytes:
        return dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": upstream_id, "reason": reason},
            }
        )

    def incoming(self, message: Message) -> tuple[Any, bytes] | None:
        """Route a process message back: (owner, bytes with the client's ids), or None if nobody owns it."""
        if message.is_response:
            upstream_id = message.data.get("id")
            if not isinstance(upstream_id, int) or upstream_id not in self._ids:
                return None
            owner, original = self._ids.pop(upstream_id)
            self._tokens.pop(f"p{upstream_id}", None)
            return owner, dumps({**message.data, "id": original})
        if message.method == "notifications/progress":
            params = message.data.get("params") or {}
            mapped = params.get("progressToken")
            if not isinstance(mapped, str) or mapped not in self._tokens:
                return None
            owner, token = self._tokens[mapped]
            return owner, dumps({**message.data, "params": {**params, "progressToken": token}})
        if message.is_notification:
            # Events on a `subscriptions/listen` stream name the listen request: back to its client, with its id.
            params = message.data.get("params") or {}
            meta = params.get("_meta") if isinstance(params, dict) else None
            listen = meta.get(META_SUBSCRIPTION) if isinstance(meta, dict) else None
            if isinstance(meta, dict) and isinstance(listen, int) and listen in self._ids:
                owner, original = self._ids[listen]
                meta = {**meta, META_SUBSCRIPTION: original}
                return owner, dumps({**message.data, "params": {**params, "_meta": meta}})
        return None

    def forget(self, owner: Any) -> list[int]:
        """Drop everything `owner` had in flight; returns the process-side ids, for cancellation."""
        gone = [upstream_id for upstream_id, (who, _) in self._ids.items() if who is owner]
        for upstream_id in gone:
            del self._ids[upstream_id]
            self._tokens.pop(f"p{upstream_id}", None)
        return gone

    def drain(self) -> list[tuple[Any, Any]]:
        """Everything in flight as (owner, the client's original id), forgotten: the process is gone."""
        pending = list(self._ids.values())
        self._ids.clear()
        self._tokens.clear()
        return pending

    def __len__(self) -> int:
        return len(self._ids)
