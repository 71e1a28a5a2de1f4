"""MCP-over-HTTP protocol rules the gateway needs, as pure functions: no sockets, no asyncio.

JSON-RPC message classification, protocol-version eras, the headers a proxy must treat specially,
Server-Sent Events framing and the message size limit on event streams, and the request-id remapping that
lets several clients share one stdio process (ids and progress tokens restored exactly, JSON type included).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

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
    the `Connection` header names. `names` must hold `connection`. Repeated headers stay repeated. An `_` in
    a name counts as `-` (CGI-style servers read `X_Forwarded_For` as `X-Forwarded-For`)."""
    kept: Headers = []
    connection: list[bytes] = []
    for name, value in headers:
        key = name.replace(b"_", b"-") if b"_" in name else name
        if key in names or key.startswith(prefixes):
            if name == b"connection":
                connection.append(value)
            continue
        kept.append((name, value))
    if connection:
        named = {token.strip().lower().replace(b"_", b"-") for token in b",".join(connection).split(b",")}
        kept = [(name, value) for name, value in kept if name.replace(b"_", b"-") not in named]
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


def loads(text: bytes | str) -> Any:
    """JSON (RFC 8259) from a peer: ValueError for what is not JSON, including what Python's parser takes and
    JSON does not (`NaN`, `Infinity`) and nesting too deep for it (which it raises as RecursionError)."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


# A `\uD800`-`\uDFFF` escape: where a string can hold a lone surrogate, which is not Unicode text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_message(line: bytes) -> Message | None:
    """A message from a trusted peer (a stdio process); None for a line that is not a JSON-RPC object."""
    try:
        data = loads(line)
    except ValueError:
        return None
    return Message(data, line) if isinstance(data, dict) else None


def parse_body(body: bytes) -> tuple[list[Message], bool]:
    """The messages of a POST body (or a WebSocket frame) and whether it was a batch.

    Raises GatewayError 400: -32700 when the body is not JSON (RFC 8259: no `NaN`, no nesting deeper than the
    parser's recursion limit) or a string in it is not Unicode text (a lone surrogate escape, which I-JSON,
    RFC 7493, forbids and the SDK's HTTP server also refuses); -32600 when it is not a JSON-RPC 2.0 message or
    a non-empty batch of them (`envelope_error`). A message the gateway passed on to a stdio server in any of
    these shapes would get no answer from it (the SDK's stdio server drops what it cannot read), so the
    client's request would wait for ever.
    """
    try:
        data = loads(body)
    except ValueError as exc:
        raise GatewayError.parse_error(f"the body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            dumps(data)
        except UnicodeEncodeError:
            raise GatewayError.parse_error(
                "the body is not valid JSON text: a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)"
            ) from None
    batch = isinstance(data, list)
    items = data if batch else [data]
    if not items:
        raise GatewayError.invalid_request("the body must be a JSON-RPC 2.0 message or a non-empty batch of them")
    for item in items:
        if (why := envelope_error(item)) is not None:
            raise GatewayError.invalid_request(f"the body must be a JSON-RPC 2.0 message or a batch of them: {why}")
    # Each message must fit on one line for stdio; reuse the original bytes when they already do.
    if not batch and b"\n" not in body and b"\r" not in body:
        return [Message(items[0], body.strip())], False
    return [Message(item, dumps(item)) for item in items], batch


def refuse_batch(version: Any) -> None:
    """A batch in a session negotiated at 2025-06-18 or later gets -32600: that revision removed JSON-RPC
    batching (`version`: the session's protocol version, None when unknown)."""
    if isinstance(version, str) and version >= "2025-06-18":
        raise GatewayError.invalid_request(
            f"JSON-RPC batches are not part of MCP since 2025-06-18 (this session negotiated {version}): send"
            " each message in a POST of its own"
        )


def envelope_error(item: Any) -> str | None:
    """What makes `item` not a JSON-RPC 2.0 message as MCP uses them, or None: `jsonrpc` is "2.0"; a request
    has a string `method`, an `id` that is a string or an integer (MCP's RequestId; both official SDKs refuse
    other numbers, booleans and null) and `params`, if any, an object; a notification is the same without
    `id`; a response has an `id` (or null, for an error about an unreadable request) and `result` or `error`."""
    if not isinstance(item, dict):
        return f"a message is a JSON object, not {type(item).__name__}"
    if item.get("jsonrpc") != "2.0":
        return '"jsonrpc" must be "2.0"'
    if "method" in item:
        if not isinstance(item["method"], str):
            return '"method" must be a string'
        if "params" in item and not isinstance(item["params"], dict):
            return '"params" must be an object'
        if "id" in item and not _request_id(item["id"]):
            return 'a request\'s "id" must be a string or an integer'
        return None
    if "id" not in item or ("result" in item) == ("error" in item):
        return 'a message has a "method" (a request or notification) or an "id" and "result" or "error" (a response)'
    if item["id"] is not None and not _request_id(item["id"]):
        return 'a response\'s "id" must be a string, an integer or null'
    return None


def _request_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    """A JSON-RPC error answer. Always encodable: a request id that is not Unicode text (a lone surrogate a
    client sent) is written escaped, as JSON allows, rather than failing the answer."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    answer = {"jsonrpc": "2.0", "id": request_id, "error": error}
    try:
        return dumps(answer)
    except UnicodeEncodeError:
        return json.dumps(answer, separators=(",", ":")).encode()


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


# --- the message size limit on event streams -------------------------------------------------------------

TOO_LARGE = -32019  # a message over gateway.max_message_bytes (the relay's stdio lines use it too)
SSE_FRAMING = 1024  # bytes an event may add to the message it carries: field names, an id, line ends
SCAN_BYTES = 4096  # of an event too large to pass, its first and last bytes are kept: they say what it answered
# An event ends at a blank line: two line ends in a row, each CRLF, LF or CR (a CR then an LF is one).
EVENT_END = re.compile(rb"\r\n\r\n|\r\n\n|\r\n\r|\n\r\n|\n\n|\n\r|\r\r\n|\r\r")
_ENDS_EVENT = (b"\n\n", b"\r\r", b"\n\r", b"\n\r\n", b"\r\r\n")  # data that ends at a boundary ends so
_LINE_END = re.compile(rb"\r\n|\r|\n")


def too_large(server_id: str, size: int | None, limit: int) -> str:
    """What a client is told of a message over the limit (`size` None: its end was not awaited)."""
    written = f"a message of {size} bytes, over" if size is not None else "a message over"
    return f"server {server_id!r} wrote {written} the limit of {limit} bytes (setting: gateway.max_message_bytes)"


class Oversized(NamedTuple):
    """An event that grew past the limit: dropped, except its first and last bytes."""

    size: int
    head: bytes
    tail: bytes


class EventMeter:
    """Cuts a `text/event-stream` byte stream into runs of whole events, so that a proxy lets events out as
    they complete and can stop one that grows past `limit` bytes before any byte of it went out.

    `feed(chunk)` returns what may go out now, in order: byte runs of whole events, and an `Oversized` where
    an event was too large (its bytes are dropped). The unfinished event at the end is held, never more than
    `limit` bytes of it; a client's parser cannot act on part of an event, so holding one costs it nothing.
    Each byte is searched once and copied at most once; a chunk that ends at a boundary and fits the limit
    (the usual case) passes as it is."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: list[bytes] = []  # the start of an unfinished event
        self._size = 0  # its bytes so far (or those of the event being dropped)
        self._edge = b""  # its last bytes: a boundary may straddle chunks (4 bytes at most)
        self._dropping = False
        self._head = b""
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        if self._held or self._dropping:
            chunk = self._finish(chunk, out)
        if not chunk:
            return out
        if len(chunk) <= self.limit:  # no event in it can be too large: only its last boundary matters
            if chunk.endswith(_ENDS_EVENT):
                out.append(chunk)
                return out
            start = 0
            for match in EVENT_END.finditer(chunk):
                start = match.end()
            if start:
                out.append(chunk[:start])
        else:
            start = sent = 0  # where the current event begins; where the events not yet out begin
            for match in EVENT_END.finditer(chunk):
                end = match.end()
                if end - start > self.limit:
                    if start > sent:
                        out.append(chunk[sent:start])
                    head, tail = chunk[start : min(end, start + SCAN_BYTES)], chunk[max(start, end - SCAN_BYTES) : end]
                    out.append(Oversized(end - start, head, tail))
                    sent = end
                start = end
            if start > sent:
                out.append(chunk[sent:start])
        rest = chunk[start:]
        if rest:
            self._size, self._edge = len(rest), rest[-3:]
            if self._size > self.limit:
                self._dropping, self._head, self._tail = True, rest[:SCAN_BYTES], rest[-SCAN_BYTES:]
            else:
                self._held = [rest]
        return out

    def flush(self) -> bytes:
        """At the end of the stream: the unfinished event's bytes as they are (those of one too large: none)."""
        held = b"".join(self._held)
        self._held, self._size, self._edge, self._dropping, self._head, self._tail = [], 0, b"", False, b"", b""
        return held

    def _finish(self, chunk: bytes, out: list[bytes | Oversized]) -> bytes:
        """Go on with the unfinished event: hold or drop `chunk` until the event ends; then put the event
        out (or an `Oversized`) and return what follows it in `chunk`."""
        edge = self._edge
        match = EVENT_END.search(edge + chunk)
        used = len(chunk) if match is None else max(0, match.end() - len(edge))
        part = chunk[:used]
        self._size += used
        self._edge = (edge + part)[-3:]
        if self._dropping:
            self._head += part[: SCAN_BYTES - len(self._head)]
            self._tail = (self._tail + part[-SCAN_BYTES:])[-SCAN_BYTES:]
        elif self._size > self.limit:
            held = b"".join([*self._held, part])
            self._dropping, self._head, self._tail, self._held = True, held[:SCAN_BYTES], held[-SCAN_BYTES:], []
        else:
            self._held.append(part)
        if match is None:
            return b""
        if self._dropping:
            out.append(Oversized(self._size, self._head, self._tail))
        else:
            out.append(b"".join(self._held))
        self.flush()
        return chunk[used:]


def events(run: bytes) -> list[tuple[str, bytes]]:
    """The (type, data) of each whole event in `run`; events without data (comments, ids alone) left out."""
    found = []
    for text in EVENT_END.split(run):
        kind, data = "message", []
        for line in _LINE_END.split(text):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                kind = value.decode("utf-8", "replace")
        if data:
            found.append((kind, b"\n".join(data)))
    return found


def map_event_data(run: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """`run` (whole events, as `EventMeter` lets them out) with `change` applied to the data of each event.
    An event whose data `change` returns as it is (the same object) keeps its bytes; a changed one keeps its
    other fields (`event`, `id`, `retry`) and carries the new data on `data:` lines. Bytes after the last
    boundary (an unfinished event) pass as they are."""
    out: list[bytes] = []
    start = 0
    for match in EVENT_END.finditer(run):
        out.append(_changed_event(run[start : match.start()], change) + match.group())
        start = match.end()
    if not out:
        return run
    out.append(run[start:])
    return b"".join(out)


def _changed_event(event: bytes, change: Callable[[bytes], bytes]) -> bytes:
    lines = _LINE_END.split(event)
    data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    if not data:
        return event
    joined = b"\n".join(data)
    new = change(joined)
    if new is joined:
        return event
    newline = b"\r\n" if b"\r\n" in event else b"\n"
    kept = [line for line in lines if not line.startswith(b"data:")]
    return newline.join([*kept, *(b"data: " + line for line in new.split(b"\n"))])


_SCALAR = rb'-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|"(?:[^"\\]|\\.)*"|true|false|null'
_MEMBER = re.compile(rb'\s*"((?:[^"\\]|\\.)*)"\s*:\s*(?:(' + _SCALAR + rb")\s*([,}])|([\[{]))")
_SEPARATOR = re.compile(rb"\s*([,}])")
_NESTING = re.compile(rb'["\[\]{}]')
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_TRAILING_ID = re.compile(rb'"id"\s*:\s*(' + _SCALAR + rb')\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?}\s*$')

Kind = Literal["answer", "other", "unknown"]


def answered(event: Oversized) -> tuple[Kind, Any]:
    """What an event too large to read carried, from its first and last bytes (see `message_kind`)."""
    head = b"\n".join(_data_lines(event.head))
    tail = b"\n".join(_data_lines(event.tail, cut=event.size > len(event.tail)))
    return message_kind(head, tail)


def message_kind(head: bytes, tail: bytes) -> tuple[Kind, Any]:
    """What a JSON-RPC message too large to read is, from its first and last bytes: ("answer", id) for a
    response, ("other", None) for a request or notification, ("unknown", None) when they do not say.

    Serializers write `id` near one end: the Python SDK as the second member (before `method` in a request),
    the TypeScript SDK as the last. A request to the client has an id too, so `method` is looked for first."""
    members = _leading_members(head)
    if "method" in members:
        return "other", None
    if "id" in members:
        return "answer", members["id"]
    if (match := _TRAILING_ID.search(tail)) is not None:
        return "answer", json.loads(match[1])
    return "unknown", None


def answered_request(event: Oversized, request: bytes) -> tuple[bool, Any]:
    """Whether an event too large to pass answered a request, and its id: what the event says, else, when it
    does not say, the request of the POST whose answer stream carried it (`request`: that POST's body)."""
    kind, request_id = answered(event)
    if kind == "unknown":
        return single_request(request)
    return kind == "answer", request_id


def single_request(body: bytes) -> tuple[bool, Any]:
    """Whether a POST body is one JSON-RPC request, and its id."""
    try:
        data = loads(body) if body else None
    except ValueError:
        return False, None
    if isinstance(data, dict) and "method" in data and "id" in data:
        return True, data["id"]
    return False, None


def too_large_event(request_id: Any, server_id: str, size: int, limit: int) -> bytes:
    """The event that takes the place of an answer too large to pass."""
    return sse_event(error_response(request_id, TOO_LARGE, too_large(server_id, size, limit)))


def _data_lines(raw: bytes, *, cut: bool = False) -> list[bytes]:
    """The data of an event's lines; `cut`: the first line is the end of a longer one, taken as data."""
    lines = _LINE_END.split(raw)
    data = [lines.pop(0)] if cut and lines else []
    for line in lines:
        field, colon, value = line.partition(b":")
        if field == b"data" and colon:
            data.append(value[1:] if value.startswith(b" ") else value)
    return data


def _leading_members(text: bytes) -> dict[str, Any]:
    """The top-level members of the JSON object `text` begins with, read in order until `text` runs out:
    scalars with their values, objects and arrays as None."""
    members: dict[str, Any] = {}
    position = len(text) - len(text.lstrip())
    if not text.startswith(b"{", position):
        return members
    position += 1
    while (member := _MEMBER.match(text, position)) is not None:
        name = json.loads(b'"' + member[1] + b'"')
        if member[2] is not None:
            members[name] = json.loads(member[2])
            if member[3] == b"}":
                return members
            position = member.end()
            continue
        members[name] = None
        position = _past_value(text, member.start(4))
        if position < 0:
            return members
        after = _SEPARATOR.match(text, position)
        if after is None or after[1] == b"}":
            return members
        position = after.end()
    return members


def _past_value(text: bytes, position: int) -> int:
    """Where the object or array at `position` ends, or -1 if `text` ends first."""
    depth = 0
    while (mark := _NESTING.search(text, position)) is not None:
        if mark[0] == b'"':
            string = _STRING.match(text, mark.start())
            if string is None:
                return -1
            position = string.end()
            continue
        depth += 1 if mark[0] in b"[{" else -1
        position = mark.end()
        if depth == 0:
            return position
    return -1


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

    def original(self, upstream_key: str) -> Any:
        """The id the client sent, for a request in flight by its process-side id key (None if not known)."""
        entry = self._ids.get(int(upstream_key))
        return None if entry is None else entry[1]

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
