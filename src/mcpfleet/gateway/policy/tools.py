"""Tool access on every route (`gateway.access` rules that name `tools`), and the audit line of each call.

A `ToolGuard` belongs to one client exchange: a POST and its answer (the passthrough, session and shared
mode, 2026-07-28 requests), a WebSocket connection, a legacy SSE session. Every route shows it the same
three things:

- each client request before it goes to the server: `check` returns the answer to give the client in place
  of a `tools/call` of a tool the request's `Grant` does not allow (JSON-RPC -32602, the MCP spec's answer to
  a tool the server does not offer, with a message naming the setting; the call never reaches the server);
  `expect` remembers `tools/list` (when the grant restricts tools) and `tools/call` (when auditing) under the
  key their answer will be known by (the client's id, or on a shared process the process-side id);
- each answer on its way to the client: `answer(raw, key)` where the route knows the key (the relay),
  `answer_data` / `answer_body` / `answer_events` where it must read it (the passthrough: one message, a
  JSON body or batch, a run of whole SSE events). A `tools/list` result loses the tools not allowed, every
  other member (`nextCursor` included) kept; a `tools/call` answer writes the audit line (audit.py);
- the end of the exchange: `close(outcome)` audits the calls still unanswered (`cancelled`, `failed`);
  `forget()` drops them when another upstream takes the request.

`notifications/tools/list_changed` passes as it is: the client lists again, and that answer is filtered.
A guard holds no I/O but the audit record; `for_exchange` gives None when the grant allows every tool and
auditing is off, so such a route does nothing more than before. Decisions: a denied tool answers -32602
rather than a gateway code (-32010..-32019), because to the client it is a tool the server does not offer
(`tools/list` hides it); `data` says why. A denied `tools/call` sent as a notification is dropped too. A
body is looked into only when it could name a tools method: the bytes `tools/`, a backslash (a JSON string
can spell `tools/call` only literally or with escapes) or a NUL (UTF-16 and UTF-32 JSON). What it cannot
read as a server may, it refuses (`screen_body`: fail closed). When the grant restricts tools, a result
shaped like a `tools/list` one is filtered even when no awaited request matches it (`answer_data`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mcpfleet.errors import GatewayError
from mcpfleet.gateway import audit, logs
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.policy.access import EVERYTHING, GRANT, Grant
from mcpfleet.gateway.policy.auth import ANONYMOUS, IDENTITY
from mcpfleet.gateway.protocol import Message, dumps, envelope_error, error_response, loads, map_event_data
from mcpfleet.registry.model import Logging

DENIED = -32602  # JSON-RPC "Invalid params": what an MCP server answers for a tool it does not offer
LIST = "tools/list"
CALL = "tools/call"


@dataclass(frozen=True)
class Expected:
    """A `tools/list` or `tools/call` request on its way to the server, waiting for its answer."""

    method: str
    tool: str
    request_id: Any
    arguments: Any
    started: float
    # The request that carried it (`logs.REQUEST` where it was screened): on a message-stream connection
    # (legacy SSE's `POST /messages/`) that is not the request the guard was made for.
    context: logs.RequestContext | None = None


class ToolGuard:
    """The tool filter and the audit line of one client exchange (see the module's text)."""

    def __init__(self, grant: Grant, principal: str, server_id: str, session: str | None, settings: Logging) -> None:
        self.grant = grant
        self.restricts = grant.tools is not None
        self.audits = settings.audit
        self.with_arguments = settings.audit_arguments
        self.principal = principal
        self.server_id = server_id
        self.session = session
        self.pending: dict[str, Expected] = {}
        self.refusals: list[dict[str, Any]] = []  # answers the gateway gave in a batch it passed on (passthrough)
        self.client_left = False  # set by the route when the client went away before the answer was out
        self.context = logs.REQUEST.get()  # the connection's: for calls screened outside any request

    @classmethod
    def of(cls, scope: Any, server_id: str, settings: Logging, session: str | None = None) -> ToolGuard | None:
        """The guard for a request or connection with ASGI `scope` (its `Grant` and `Identity`, left there by
        the router); None when there is nothing to do: every tool allowed and auditing off."""
        grant: Grant = scope.get(GRANT, EVERYTHING) if scope is not None else EVERYTHING
        if grant.tools is None and not settings.audit:
            return None
        identity = scope.get(IDENTITY, ANONYMOUS) if scope is not None else ANONYMOUS
        return cls(grant, identity.principal, server_id, session, settings)

    @classmethod
    def for_exchange(cls, exchange: Exchange, session: str | None = None) -> ToolGuard | None:
        """`of` for an HTTP request; `session`: the gateway session id, by default the one the request names."""
        return cls.of(
            exchange.scope, exchange.server.id, exchange.snapshot.gateway.logging, session or exchange.session_id
        )

    # --- requests --------------------------------------------------------------------------------------

    def check(self, message: dict[str, Any]) -> bytes | None:
        """The answer to give in place of `message` when it is a `tools/call` of a tool not allowed (audited as
        `denied`); b"" when such a call came as a notification (no `id`: nothing to answer, and it is dropped
        all the same, since a server may run a call it cannot answer); None to send it on."""
        if not self.restricts or message.get("method") != CALL:
            return None
        name = _tool_name(message)
        if name is None or self.grant.allows(name):
            return None  # without a name no tool is reached: the server says what is wrong
        arguments = _arguments(message)
        self._audit(Expected(CALL, name, message.get("id"), arguments, time.monotonic(), logs.REQUEST.get()), "denied")
        if "id" not in message:
            return b""
        text = (
            f"tool {name!r} is not allowed for {self.principal} on server {self.server_id!r} (setting: gateway.access)"
        )
        return error_response(message["id"], DENIED, text, {"reason": "denied", "setting": "gateway.access"})

    def expect(self, message: dict[str, Any], key: str | None = None) -> None:
        """Remember a request whose answer this guard must see, under `key` (default: its own id)."""
        method = message.get("method")
        if "id" not in message or not ((method == CALL and self.audits) or (method == LIST and self.restricts)):
            return
        tool = (_tool_name(message) or "?") if method == CALL else ""
        arguments = _arguments(message) if method == CALL and self.with_arguments else None
        started = time.monotonic()
        self.pending[key if key is not None else _key(message["id"])] = Expected(
            method, tool, message["id"], arguments, started, logs.REQUEST.get()
        )

    def screen(self, message: Message, key: str | None = None) -> bytes | None:
        """`check`, then `expect` under `key` (default: its own id), for a message the route has parsed."""
        method = message.method
        if method != CALL and method != LIST:
            return None
        refusal = self.check(message.data)
        if refusal is None:
            self.expect(message.data, key if key is not None else message.id_key)
        return refusal

    def screen_body(self, body: bytes) -> tuple[bytes, bytes | None]:
        """A passthrough request body (any path, any method): (what to send on, the gateway's own answer when
        nothing is left to send: b"" for "202, nothing to answer"). A denied call alone: (b"", its answer); a
        denied call sent as a notification: (b"", b""). A batch keeps its other messages; the answers to its
        denied calls are added to the server's answer (`answer_body`, `take_refusals`), or are the whole answer.

        Fails closed: a body that could name a tools method is read as the relay reads one
        (`protocol.parse_body`'s rules), since a server whose parser takes what this one does not would
        otherwise run a call nobody checked (a JavaScript server reads 1e400, a 5,000-digit number, bytes that
        are not UTF-8 and any nesting depth). Raises GatewayError 400: -32700 when it is not JSON, -32600 when
        a message naming `tools/list` or `tools/call` is not a JSON-RPC 2.0 request or notification (an `id`
        that is a string or an integer: a server that reads 3.0 as 3 answers `"id":3`, an answer this guard
        would not know). JSON naming no tools method (a body for another path) is sent on as it is."""
        if not may_name_tools(body):
            return body, None
        try:
            data = loads(body)
        except ValueError as exc:  # RecursionError too (protocol.loads)
            raise GatewayError.parse_error(
                f"the body is not valid JSON ({exc}); the gateway reads it to check tool access (gateway.access)"
            ) from None
        items = data if isinstance(data, list) else [data]
        for item in items:
            if isinstance(item, dict) and item.get("method") in (CALL, LIST) and (why := envelope_error(item)):
                raise GatewayError.invalid_request(f"the body must be a JSON-RPC 2.0 message or a batch of them: {why}")
        kept: list[Any] = []
        refused: list[bytes] = []
        dropped = False
        for item in items:
            if isinstance(item, dict) and (refusal := self.check(item)) is not None:
                if refusal:
                    refused.append(refusal)
                dropped = True
                continue
            if isinstance(item, dict):
                self.expect(item)
            kept.append(item)
        if not dropped:
            return body, None
        if not isinstance(data, list):
            return b"", refused[0] if refused else b""
        if not kept:
            return b"", b"[" + b",".join(refused) + b"]" if refused else b""
        self.refusals = [json.loads(r) for r in refused]
        return dumps(kept), None

    # --- answers ---------------------------------------------------------------------------------------

    def answer(self, raw: bytes, key: str) -> bytes:
        """One answer the route knows the key of (`expect`'s): filtered or audited; other answers as they are."""
        expected = self.pending.pop(key, None)
        if expected is None:
            return raw
        try:
            data = loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if expected.method == CALL:
                self._audit(expected, "failed")
            return raw
        changed = self._answered(expected, data)
        return raw if changed is None else dumps(changed)

    def answer_data(self, raw: bytes) -> bytes:
        """One message (or batch) read from the wire: the answers it holds to what this guard expects,
        filtered or audited, and, when the grant restricts tools, any other result shaped like a `tools/list`
        one (`_filtered`: a `tools` array), whatever request it answers. Returns `raw` itself when nothing
        changed.

        The second rule is what makes the filter hold where this guard did not see the request, or cannot
        match its answer: a stream resumed with `Last-Event-ID` (the request was another exchange's), a
        legacy SSE stream forwarded on another path (answers to POSTs elsewhere), an id the server wrote
        back otherwise (a large integer a JavaScript server rounds). Removing tools the caller may not use
        from any `result.tools` array errs towards hiding, never towards showing."""
        if not self.pending and not (self.restricts and may_hold_tools(raw)):
            return raw
        try:
            data = loads(raw)
        except ValueError:
            return raw  # the server's own writing: the client's parser fails on it too
        items = data if isinstance(data, list) else [data]
        changed = False
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "method" in item or ("result" not in item and "error" not in item):
                continue
            expected = self.pending.pop(_key(item.get("id")), None)
            if expected is not None:
                new = self._answered(expected, item)
            else:
                new = self._filtered(item) if self.restricts and _lists_tools(item) else None
            if new is not None:
                items[index] = new
                changed = True
        if not changed:
            return raw
        return dumps(items if isinstance(data, list) else items[0])

    def answer_body(self, raw: bytes) -> bytes:
        """A whole JSON answer of the passthrough: `answer_data`, with the answers the gateway gave to the
        denied calls of a batch added."""
        seen = self.answer_data(raw)
        if not self.refusals:
            return seen
        refusals, self.refusals = self.refusals, []
        try:
            data = loads(seen) if seen else []
        except ValueError:
            return seen
        return dumps([*(data if isinstance(data, list) else [data]), *refusals])

    def answer_events(self, run: bytes) -> bytes:
        """A run of whole Server-Sent Events (as `protocol.EventMeter` lets them out): each event's data
        through `answer_data`; a run is passed as it is once nothing is awaited and it cannot hold a `tools`
        member (or the grant restricts none)."""
        if not self.pending and not (self.restricts and may_hold_tools(run)):
            return run
        return map_event_data(run, self.answer_data)

    def take_refusals(self) -> list[bytes]:
        """The answers the gateway gave to denied calls of a batch, once (for an event stream's start)."""
        refusals, self.refusals = self.refusals, []
        return [dumps(r) for r in refusals]

    def close(self, outcome: audit.Outcome) -> None:
        """The exchange ended: calls still unanswered are audited with `outcome`. Lists stay awaited: a
        resumed stream may still carry their answers, which must be filtered all the same."""
        for key, expected in list(self.pending.items()):
            if expected.method == CALL:
                del self.pending[key]
                self._audit(expected, outcome)

    @contextlib.contextmanager
    def closing(self) -> Iterator[ToolGuard]:
        """Around a route's exchange: at its end, calls still unanswered are `cancelled` (the client went
        away, `client_left`, or the request was cancelled), `timeout` or `failed` (the gateway's own error,
        or the answer ended without theirs)."""
        try:
            yield self
        except GatewayError as exc:
            self.close("timeout" if exc.code == audit.TIMEOUT else "failed")
            raise
        except Exception:
            self.close("failed")
            raise
        except BaseException:  # cancelled
            self.close("cancelled")
            raise
        self.close("cancelled" if self.client_left else "failed")

    def forget(self) -> None:
        """Nothing reached the server and another upstream takes the request: no line for it here."""
        self.pending.clear()

    def _answered(self, expected: Expected, data: dict[str, Any]) -> dict[str, Any] | None:
        if expected.method == LIST:
            return self._filtered(data)
        self._audit(expected, audit.outcome_of(data))
        return None

    def _filtered(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """A `tools/list` answer without the tools the grant does not allow; None when it loses none."""
        result = data.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return None
        kept = [
            t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str) and self.grant.allows(t["name"])
        ]
        if len(kept) == len(tools):
            return None
        return {**data, "result": {**result, "tools": kept}}

    def _audit(self, expected: Expected, outcome: audit.Outcome) -> None:
        if not self.audits:
            return
        audit.emit(
            principal=self.principal,
            server=self.server_id,
            tool=expected.tool,
            outcome=outcome,
            duration_ms=0.0 if outcome == "denied" else (time.monotonic() - expected.started) * 1000,
            session=self.session,
            request_id=expected.request_id,
            arguments=expected.arguments,
            with_arguments=self.with_arguments,
            context=expected.context or self.context,
        )


def _key(request_id: Any) -> str:
    """The key of an id read from the wire, where this guard reads both the request and the answer (the
    passthrough). Numbers are keyed by the value a JavaScript server (IEEE doubles) writes back: 3.0 and
    1e0 are 3 and 1, and an integer beyond 2**53 is the double nearest it (2**64 + 1 comes back as
    18446744073709552000). `repr` keeps "1" and true apart from 1."""
    if isinstance(request_id, float) and request_id.is_integer():
        request_id = int(request_id)
    elif isinstance(request_id, int) and not isinstance(request_id, bool) and abs(request_id) > 2**53:
        with contextlib.suppress(OverflowError):
            request_id = int(float(request_id))
    return repr(request_id)


def _lists_tools(answer: dict[str, Any]) -> bool:
    """Whether a result this guard cannot match to a request is shaped like a `tools/list` one: `result.tools`
    an array whose every element is an object with a string `name` (what the MCP schema's `Tool` requires
    besides `inputSchema`). Anything else in it is left alone."""
    result = answer.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    return isinstance(tools, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)


def _tool_name(message: dict[str, Any]) -> str | None:
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) else None


def _arguments(message: dict[str, Any]) -> Any:
    params = message.get("params")
    return params.get("arguments") if isinstance(params, dict) else None


def closing(guard: ToolGuard | None) -> contextlib.AbstractContextManager[Any]:
    """`guard.closing()`, or nothing when the route has no guard."""
    return guard.closing() if guard is not None else contextlib.nullcontext()


def may_name_tools(body: bytes) -> bool:
    """Whether a request body could name a tools method: a JSON string spells `tools/call` either literally
    or with escapes, so bodies with neither `tools/` nor a backslash need no parse (three byte scans). A NUL
    byte counts too: JSON in UTF-16 or UTF-32 (which Python's `json.loads` of bytes, and so the Python SDK's
    server, detects and reads) spells `tools/` with NULs between its letters."""
    return b"tools/" in body or b"\\" in body or b"\x00" in body


def may_hold_tools(answer: bytes) -> bool:
    """Whether an answer (or a run of events) could hold a `tools` member: literally or with escapes."""
    return b'"tools"' in answer or b"\\" in answer
