"""`requestState` pinning: a 2026-07-28 retry goes back to the replica (or process) that asked for input.

At 2026-07-28 a server that needs input from the client (elicitation, sampling, roots) answers
`tools/call`, `prompts/get` or `resources/read` with an `input_required` result carrying `requestState`;
the client retries the request with that state. The SDK seals the state with a key of its own process
unless the server is configured with a shared one, so the retry must reach the process that issued it,
yet it is a new stateless POST with nothing in HTTP that says where.

The gateway therefore prefixes the state it passes to the client with a sealed record of where it came
from (`mcpfleet1.<sealed record>.<original state>`) and strips the prefix from the retry before it
forwards it there. The sealed record is authenticated with the session keys (sealing.py), so gateway
replicas that share them route each other's retries; the original state stays the server's to verify.
Only `input_required` results are rewritten (parsed and re-encoded); every other byte passes untouched.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from mcpfleet.gateway.protocol import dumps, loads
from mcpfleet.gateway.sealing import Sealer

PREFIX = "mcpfleet1."
KEY = b'"requestState"'
METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})  # the results that may ask for input
PURPOSE = b"mcpfleet request state v1"  # sealed apart from session ids: one cannot pass for the other
MAX_PENDING = 4 << 20  # an event longer than this (no boundary yet) passes through unrewritten
# An event ends at a blank line: two line ends in a row, each CRLF, LF or CR (a CR then an LF is one).
_EVENT_END = re.compile(rb"\r\n\r\n|\r\n\n|\r\n\r|\n\r\n|\n\n|\n\r|\r\r\n|\r\r")
_LINE_END = re.compile(rb"\r\n|\r|\n")

Record = dict[str, Any]


def wrap(sealer: Sealer, message: bytes, record: Record) -> bytes:
    """`message` (one JSON-RPC response) with its `requestState` prefixed by a sealed `record`, or unchanged."""
    if KEY not in message:
        return message
    try:
        data = loads(message)
    except ValueError:
        return message
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, dict) or result.get("resultType") != "input_required":
        return message
    state = result.get("requestState")
    if not isinstance(state, str):
        return message
    result["requestState"] = f"{PREFIX}{sealer.seal(record, purpose=PURPOSE)}.{state}"
    try:
        return dumps(data)
    except (ValueError, RecursionError):  # e.g. a lone surrogate: leave the message as the server wrote it
        return message


def unwrap(sealer: Sealer, body: bytes) -> tuple[Record | None, bytes]:
    """For a retry: the sealed record its `requestState` carries (None if none or not authentic) and the body
    to forward, with the server's own state restored."""
    if KEY not in body:
        return None, body
    try:
        data = loads(body)
    except ValueError:
        return None, body
    params = data.get("params") if isinstance(data, dict) else None
    state = params.get("requestState") if isinstance(params, dict) else None
    if not isinstance(state, str) or not state.startswith(PREFIX):
        return None, body
    assert isinstance(params, dict)
    token, _, original = state[len(PREFIX) :].partition(".")
    params["requestState"] = original
    try:
        return sealer.open(token, purpose=PURPOSE), dumps(data)
    except (ValueError, RecursionError):
        return None, body


async def rewrite_events(chunks: AsyncIterator[bytes], rewrite: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    """An SSE byte stream with `rewrite` applied to the data of each event that may carry `requestState`.

    Whole events go out as soon as they are complete; events without the key pass byte for byte, and so
    does an event that grows past MAX_PENDING before it ends. Each byte is searched once."""
    pending = bytearray()
    async for chunk in chunks:
        searched = max(0, len(pending) - 3)  # a boundary may straddle the old end (at most 4 bytes long)
        pending += chunk
        end = 0
        for match in _EVENT_END.finditer(pending, searched):
            if match.end() == len(pending) and pending.endswith(b"\r"):
                break  # an LF may follow in the next chunk and belong to this boundary
            end = match.end()
        if end:
            complete = bytes(pending[:end])
            del pending[:end]
            yield _rewrite_events(complete, rewrite) if KEY in complete else complete
        elif len(pending) > MAX_PENDING:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def _rewrite_events(text: bytes, rewrite: Callable[[bytes], bytes]) -> bytes:
    out = []
    start = 0
    for match in _EVENT_END.finditer(text):
        event = text[start : match.start()]
        out.append((_rewrite_event(event, rewrite) if KEY in event else event) + match.group())
        start = match.end()
    return b"".join(out) + text[start:]


def _rewrite_event(event: bytes, rewrite: Callable[[bytes], bytes]) -> bytes:
    lines = _LINE_END.split(event)
    data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    new = rewrite(b"\n".join(data))
    if new == b"\n".join(data):
        return event
    newline = b"\r\n" if b"\r\n" in event else b"\n"
    kept = [line for line in lines if not line.startswith(b"data:")]
    return newline.join([*kept, b"data: " + new])
