"""Limits per caller and per server (`gateway.limits`, Plan Document section 9.17): request rates as token
buckets, and concurrent sessions per caller.

A caller is its principal (`Identity.principal`: `key:<name>`, `sub:<subject>`); an anonymous caller is
its address (`scope["client"]`, the client's through `gateway.trusted_proxies`), `addr:<address>`.

- **Rates** (`rate_per_principal`, `rate_per_server`: `rps`, `burst`): each request to a server's routes
  (`/<id>/...`, a WebSocket handshake) takes a token from the caller's bucket and from the server's; each
  request a WebSocket client sends on its connection does too. A bucket holds at most `burst` tokens and
  gains `rps` a second (monotonic clock). Without a token: 429, `Retry-After` in whole seconds (at least 1,
  when the bucket has one again), a JSON-RPC error naming the setting (-32009); on a WebSocket, the request
  gets that error on the socket, which stays open (a notification over the limit is dropped; responses to
  the server are never counted). A refusal by one bucket takes no token from the other. Buckets live in a
  bounded map (`MAX_BUCKETS`), least recently used first out; a bucket that refilled completely tells
  nothing and is dropped first, so a flood of distinct callers cannot grow memory without bound (a caller
  whose bucket was pushed out starts full again).
- **Sessions** (`sessions_per_principal`): a request that may open a session (an `initialize` outside any
  session, a legacy SSE stream, a WebSocket) takes a slot, or gets 429 naming the setting when the caller
  holds that many. The slot goes back when no session came of the request; otherwise the session keeps
  it (`SessionTable.charge`) until it ends: DELETE, idle expiry, its server's removal, the server's 404, or
  the stream or WebSocket that is the session ending. A passthrough `http` session, a sealed record the
  gateway keeps nothing for, is counted until DELETE, the server's 404, or `gateway.session_idle_timeout`
  with no request naming it. Counts are per gateway process.

The settings in force are read at each request (the snapshot it started with), so a reload applies from
the next request; buckets keep their tokens across one (capped at the new `burst`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Message, Receive, Scope, Send, header
from mcpfleet.gateway.policy.auth import IDENTITY
from mcpfleet.gateway.protocol import SESSION_HEADER, error_response
from mcpfleet.gateway.session import SessionTable
from mcpfleet.registry.model import Limits, RateLimit

LIMITED = -32009  # a gateway limit refused the request (rate, sessions): 429
MAX_BUCKETS = 65_536  # buckets kept per kind (callers, servers): about 100 bytes each
PRINCIPAL_SETTING = "gateway.limits.rate_per_principal"
SERVER_SETTING = "gateway.limits.rate_per_server"
SESSIONS_SETTING = "gateway.limits.sessions_per_principal"


def caller(scope: Scope) -> str:
    """Whom a request's limits count against: its principal, or `addr:<address>` for an anonymous one."""
    identity = scope.get(IDENTITY)
    if identity is not None and identity.kind != "anonymous":
        return str(identity.principal)
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "anonymous"


def may_open_session(scope: Scope, rest: str, body: bytes) -> bool:
    """Whether a request to a server's `rest` path may open a session: an `initialize` POSTed to the MCP
    path outside any session, or a legacy SSE stream (WebSockets are counted by the router itself)."""
    if rest == "/mcp":
        return scope["method"] == "POST" and header(scope, SESSION_HEADER) is None and names_initialize(body)
    return rest == "/sse" and scope["method"] == "GET"


def names_initialize(body: bytes) -> bool:
    """Whether a body holds an `initialize` request: one byte scan, and a parse only when the body has an
    escape (`"initi\\u0061lize"` is the same method name)."""
    if b'"initialize"' in body:
        return True
    if b"\\" not in body:
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False  # not JSON: the route answers it, and opens nothing
    messages = data if isinstance(data, list) else [data]
    return any(isinstance(m, dict) and m.get("method") == "initialize" for m in messages)


def limited(message: str, retry_after: float | None = None) -> GatewayError:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return GatewayError(429, LIMITED, message, headers=headers)


class Buckets:
    """Token buckets by key, `rate` given at each take (a reload's new rate applies at once), bounded in
    number (least recently used out, full ones first). `clock`: seconds, monotonic (injectable for tests)."""

    def __init__(self, max_buckets: int = MAX_BUCKETS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, time of that count]; oldest use first

    def wait(self, key: str, rate: RateLimit, now: float) -> float:
        """Seconds until `key` has a token at `rate` (0: it has one now). Takes nothing."""
        bucket = self._buckets.get(key)
        tokens = rate.capacity if bucket is None else self._refilled(bucket, rate, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / rate.rps

    def take(self, key: str, rate: RateLimit, now: float) -> None:
        """Take a token `wait` said is there."""
        bucket = self._buckets.pop(key, None)
        tokens = rate.capacity if bucket is None else self._refilled(bucket, rate, now)
        self._buckets[key] = [tokens - 1, now]  # to the end: the most recently used
        if bucket is None and len(self._buckets) > self.max_buckets:
            self._shed(rate, now)

    @staticmethod
    def _refilled(bucket: list[float], rate: RateLimit, now: float) -> float:
        return min(float(rate.capacity), bucket[0] + max(0.0, now - bucket[1]) * rate.rps)

    def _shed(self, rate: RateLimit, now: float) -> None:
        """Drop the oldest buckets that refilled completely (they tell nothing), then, still over the bound,
        the oldest of all. At most 16 buckets looked at per new key once the bound is reached."""
        for key in list(itertools.islice(self._buckets, max(16, len(self._buckets) - self.max_buckets))):
            if self._refilled(self._buckets[key], rate, now) >= rate.capacity:
                del self._buckets[key]
        while len(self._buckets) > self.max_buckets:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


class Quotas:
    """The gateway's limits: rate buckets per caller and per server, and session slots per caller."""

    def __init__(self, sessions: SessionTable, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = sessions
        self.clock = clock
        self.callers = Buckets(clock=clock)
        self.servers = Buckets(clock=clock)
        self.holding: dict[str, int] = {}  # caller -> sessions held (no entry: none)

    # --- rates ---------------------------------------------------------------------------------------------

    def refusal(self, scope: Scope, server_id: str, limits: Limits) -> GatewayError | None:
        """Take a token from the caller's bucket and the server's, or say why not (nothing taken then)."""
        per_caller, per_server = limits.rate_per_principal, limits.rate_per_server
        if per_caller is None and per_server is None:
            return None
        now = self.clock()
        who = caller(scope)
        if per_caller is not None and (wait := self.callers.wait(who, per_caller, now)):
            return limited(
                f"{who} is over {per_caller.rps:g} {_requests(per_caller.rps)} a second (burst {per_caller.capacity})"
                f" (setting: {PRINCIPAL_SETTING}); retry later",
                wait,
            )
        if per_server is not None and (wait := self.servers.wait(server_id, per_server, now)):
            return limited(
                f"server {server_id!r} is over {per_server.rps:g} {_requests(per_server.rps)} a second"
                f" (burst {per_server.capacity})"
                f" (setting: {SERVER_SETTING}); retry later",
                wait,
            )
        if per_caller is not None:
            self.callers.take(who, per_caller, now)
        if per_server is not None:
            self.servers.take(server_id, per_server, now)
        return None

    def admit(self, scope: Scope, server_id: str, limits: Limits) -> None:
        """`refusal`, raised (429)."""
        if (refused := self.refusal(scope, server_id, limits)) is not None:
            raise refused

    def metered(self, receive: Receive, send: Send, scope: Scope, server_id: str, limits: Limits) -> Receive:
        """A WebSocket's `receive` whose client messages are counted (a batch as one): a request over a rate
        is answered on the socket with its JSON-RPC error and not passed on (a batch: one error, id null); a
        notification over it is dropped; responses to the server's requests are never counted."""
        if limits.rate_per_principal is None and limits.rate_per_server is None:
            return receive

        async def counted() -> Message:
            while True:
                message = await receive()
                text = message.get("text") if message["type"] == "websocket.receive" else None
                try:
                    data = json.loads(text) if isinstance(text, str) else None
                except (ValueError, RecursionError):
                    data = None
                if isinstance(data, dict) and not isinstance(data.get("method"), str):
                    return message  # a response to the server's own request: never held back
                if not isinstance(data, dict | list):
                    return message  # not JSON-RPC: the pump answers it
                refused = self.refusal(scope, server_id, limits)  # a batch counts once
                if refused is None:
                    return message
                if isinstance(data, list) or "id" in data:  # a notification over the limit is dropped
                    request_id = data.get("id") if isinstance(data, dict) else None
                    answer = error_response(request_id, refused.code, refused.message, _retry(refused))
                    await send({"type": "websocket.send", "text": answer.decode()})

        return counted

    # --- sessions --------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def session_slot(self, scope: Scope, server_id: str, limits: Limits, send: Send) -> Iterator[Send]:
        """Around a request that may open a session: take a slot for its caller (429 when the caller holds
        `sessions_per_principal`), and yield the `send` to answer with. A session id the answer carries
        keeps the slot until that session ends; otherwise the slot goes back when the request ends (a legacy
        SSE stream or a WebSocket is the session: it ends with the request)."""
        cap = limits.sessions_per_principal
        if cap is None:
            yield send
            return
        who = caller(scope)
        held = self.holding.get(who, 0)
        if held >= cap:
            raise limited(
                f"{who} holds {held} sessions, the most allowed (setting: {SESSIONS_SETTING}); end one (DELETE)"
                " or wait for one to expire"
            )
        self.holding[who] = held + 1
        issued: list[str] = []

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                issued.extend(v.decode("latin-1") for k, v in message.get("headers", ()) if k == SESSION_HEADER)
            await send(message)

        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self.holding.get(who, 1) - 1
                if left > 0:
                    self.holding[who] = left
                else:
                    self.holding.pop(who, None)

        try:
            yield watching
        finally:
            if not (issued and self.table.charge(issued[0], server_id, release)):
                release()

    def held(self, scope: Scope) -> int:
        """Sessions the request's caller holds."""
        return self.holding.get(caller(scope), 0)


def _retry(error: GatewayError) -> dict[str, Any] | None:
    after = error.headers.get("Retry-After")
    return {"retryAfter": int(after)} if after is not None else None


def _requests(rate: float) -> str:
    return "request" if rate == 1 else "requests"
