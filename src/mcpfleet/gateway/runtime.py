"""What the gateway runs for one registry entry: its upstreams, and the choice between them per request.

| client transport                 | http entry (Streamable)  | http entry (legacy SSE) | stdio entry  |
|----------------------------------|--------------------------|-------------------------|--------------|
| Streamable HTTP  `/<id>/mcp`     | passthrough (bytes)      | relay over SDK client   | relay        |
| legacy SSE `/<id>/sse` + `/messages/` | relay over SDK client | relay over SDK client  | relay        |
| WebSocket `/<id>/ws`             | relay over SDK client    | relay over SDK client   | relay        |

An http entry with a `command` is served over HTTP while an endpoint answers, and through its command when
none does. A runtime belongs to one entry of one snapshot: a reload that changes or removes the entry
retires it (no new sessions; in-flight requests finish; then its sessions end and its processes stop).

Bridged HTTP connections (the relay over `TransportBackend` or `SseBackend`) carry the entry's `headers` and
the X-Forwarded-* of the client connection that opened them; a connection shared by several clients
(2026-07-28 requests to a legacy SSE server) carries none. The server's answers hold to
`max_message_bytes` (`gateway.max_message_bytes`) on every route. A bridged connection that ends is a
transport event, not a crash: it never counts towards crash loops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import (
    Receive,
    Scope,
    Send,
    header,
    respond,
    send_chunk,
    start_event_stream,
    stream_body,
)
from mcpfleet.gateway.balancer import Balancer
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.protocol import error_response, forwarded_for, is_initialize, parse_body, sse_event
from mcpfleet.gateway.session import HttpSession, SessionTable, close_all
from mcpfleet.gateway.upstream.backend import Backend, ProcessBackend, SseBackend, TransportBackend
from mcpfleet.gateway.upstream.http import DEFAULT_MAX_MESSAGE_BYTES, HttpUpstream, Unreachable
from mcpfleet.gateway.upstream.relay import RelayUpstream, SharedSession, StdioSession
from mcpfleet.registry.model import HttpServer, Server, StdioServer
from mcpfleet.registry.render import mask_url

log = logging.getLogger("mcpfleet.gateway")

MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGES_PATH = "/messages/"
WS_PATH = "/ws"
BRIDGE_LIMIT = 10_000  # bridged HTTP connections hold no process; this only bounds memory
# The X-Forwarded-* of the client whose session is opening a bridged connection. The relay makes backends
# through a factory that takes no arguments, so the client's headers reach it this way, set only around
# the opening of a session of one client (never of a connection several clients share).
_OPENING_FOR: ContextVar[tuple[tuple[bytes, bytes], ...]] = ContextVar("opening_for", default=())


@contextlib.contextmanager
def _opening_for(scope: Scope | None) -> Iterator[None]:
    if scope is None:
        yield
        return
    client, host, scheme = scope.get("client"), header(scope, b"host"), scope.get("scheme", "http")
    token = _OPENING_FOR.set(tuple(forwarded_for(client, host, scheme)))
    try:
        yield
    finally:
        _OPENING_FOR.reset(token)


class ServerRuntime:
    def __init__(
        self,
        server: Server,
        sessions: SessionTable,
        task_group: anyio.abc.TaskGroup,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.server = server
        self.sessions = sessions
        self.max_message_bytes = max_message_bytes
        self.http: HttpUpstream | None = None
        self.bridge: RelayUpstream | None = None
        self.stdio: RelayUpstream | None = None
        self.balancer: Balancer | None = None
        if isinstance(server, HttpServer):
            health = server.health
            balancer = Balancer.create(
                server.balancer.strategy,
                [(e.url, e.weight) for e in server.endpoints],
                failures_to_eject=health.failures_to_eject,
                backoff=health.ejection_backoff,
                max_backoff=health.max_ejection_backoff,
            )
            self.balancer = balancer
            if server.transport != "sse":
                self.http = HttpUpstream(server, balancer, max_message_bytes=max_message_bytes)
                if server.health.active:
                    task_group.start_soon(self._probe_replicas)
            self.bridge = RelayUpstream(
                server,
                self._bridged_connection,
                task_group,
                sessions,
                limit=BRIDGE_LIMIT,
                what="bridged connections",
                counts_exits=False,
            )
        if isinstance(server, StdioServer | HttpServer) and server.command:
            spawnable, argv = server, server.command
            self.stdio = RelayUpstream(
                spawnable,
                lambda: ProcessBackend(spawnable, argv, max_message_bytes=max_message_bytes),
                task_group,
                sessions,
                limit=server.pool.max,
            )
            if server.pool.min:
                self.stdio.keep_warm(server.pool.min)
        self.inflight = 0
        self._idle = anyio.Event()

    def _bridged_connection(self) -> Backend:
        """A connection to a replica the balancer picks, for the bridge relay."""
        server, balancer = self.server, self.balancer
        assert isinstance(server, HttpServer)
        assert balancer is not None
        url = balancer.pick().url
        endpoint = next(e for e in server.endpoints if e.url == url)
        kind = SseBackend if server.transport == "sse" else TransportBackend
        return kind(server, endpoint, max_message_bytes=self.max_message_bytes, forwarded=_OPENING_FOR.get())

    @property
    def upstreams(self) -> list[HttpUpstream | RelayUpstream]:
        return [u for u in (self.http, self.bridge, self.stdio) if u is not None]

    async def handle(self, exchange: Exchange) -> None:
        if not self.upstreams:
            raise GatewayError(
                501,
                -32601,
                f"server {self.server.id!r} is of type {self.server.type!r}: it is served"
                " through its deployment backend, which this version of mcpfleet does not have yet",
            )
        self.inflight += 1
        try:
            if exchange.rest == MCP_PATH:
                await self._mcp(exchange)
            elif exchange.rest == SSE_PATH and exchange.method == "GET":
                await self._legacy_stream(exchange)
            elif exchange.rest == MESSAGES_PATH and exchange.method == "POST":
                await self._legacy_message(exchange)
            elif self.http is not None:
                await self._forward_other(exchange)
            else:
                raise GatewayError(
                    404,
                    -32601,
                    f"server {self.server.id!r} serves only /{self.server.id}{MCP_PATH}, /{self.server.id}{SSE_PATH}"
                    f" and /{self.server.id}{WS_PATH}",
                )
        finally:
            self._done()

    def _done(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()
            self._idle = anyio.Event()

    async def _forward_other(self, exchange: Exchange) -> None:
        assert self.http is not None
        try:
            await self.http.forward(exchange, exchange.rest, self.sessions, None, None)
        except Unreachable as exc:
            raise GatewayError.unreachable(self.server.id, exc.detail) from None

    # --- Streamable HTTP clients --------------------------------------------------------------------------

    async def _mcp(self, exchange: Exchange) -> None:
        token = exchange.session_id
        if token is not None:
            session = self.sessions.get(token, self.server.id)
            if isinstance(session, HttpSession) and self.http is not None:
                try:
                    await self.http.forward(exchange, self.http.server.path, self.sessions, token, session)
                except Unreachable as exc:
                    raise GatewayError.unreachable(self.server.id, exc.detail) from None
                return
            if isinstance(session, SharedSession) and session.owner is self.stdio and self.stdio is not None:
                await self.stdio.in_shared_session(exchange, token, session)
                return
            if isinstance(session, StdioSession) and session.owner in (self.stdio, self.bridge):
                await session.owner.in_session(exchange, token, session)
                return
            raise GatewayError.session_not_found()
        if self.http is not None:
            initialize = exchange.method == "POST" and b'"initialize"' in exchange.body
            try:
                await self.http.forward(
                    exchange, self.http.server.path, self.sessions, None, None, initialize=initialize
                )
                return
            except Unreachable as exc:
                if self.stdio is None:
                    raise GatewayError.unreachable(self.server.id, exc.detail) from None
        await self._relayed_sessionless(exchange, self.stdio or self.bridge)

    async def _relayed_sessionless(self, exchange: Exchange, relay: RelayUpstream | None) -> None:
        assert relay is not None
        if exchange.method != "POST":
            if exchange.modern:
                await respond(exchange.send, 405, b"", [(b"allow", b"POST")])
                return
            raise GatewayError.invalid_request("Mcp-Session-Id header is required (initialize first)")
        if exchange.modern:
            await relay.stateless(exchange)
            return
        messages, _ = parse_body(exchange.body)
        if not is_initialize(messages):
            raise GatewayError.invalid_request("Mcp-Session-Id header is required (initialize first)")
        spawnable = self.server
        if relay is self.stdio and isinstance(spawnable, StdioServer | HttpServer) and spawnable.pool.mode == "shared":
            await relay.initialize_shared(exchange, messages[0])
            return
        with _opening_for(exchange.scope):
            await relay.initialize(exchange, messages[0])

    # --- message-stream clients: legacy HTTP+SSE and WebSocket --------------------------------------------

    async def _bridge_relay(self) -> RelayUpstream:
        if not self.upstreams:
            raise GatewayError(
                501, -32601, f"server {self.server.id!r} is of type {self.server.type!r}: not served yet"
            )
        """Where a message-stream client's session goes: the HTTP bridge while an endpoint answers, else stdio."""
        if self.bridge is not None and (self.stdio is None or await self._any_endpoint_answers()):
            return self.bridge
        if self.stdio is not None:
            return self.stdio
        raise GatewayError.unreachable(self.server.id, "no endpoint answers")

    async def _any_endpoint_answers(self) -> bool:
        assert isinstance(self.server, HttpServer)
        for endpoint in self.server.endpoints:
            parts = urlsplit(endpoint.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with anyio.move_on_after(self.server.timeouts.connect):
                try:
                    stream = await anyio.connect_tcp(parts.hostname or "", port)
                except OSError:
                    continue
                await stream.aclose()
                return True
        return False

    async def _legacy_stream(self, exchange: Exchange) -> None:
        relay = await self._bridge_relay()
        with _opening_for(exchange.scope):
            session, box = await relay.open_bridge()
        token = self.sessions.issue(session)
        prefix = str(exchange.scope.get("root_path", "")).rstrip("/")
        endpoint = f"{prefix}/{self.server.id}{MESSAGES_PATH}?session_id={token}"
        try:
            await start_event_stream(exchange.send)
            await send_chunk(exchange.send, sse_event(endpoint.encode(), event="endpoint"))
            keepalive = exchange.snapshot.gateway.keepalive_interval
            await stream_body(exchange.receive, exchange.send, box.events(keepalive))
        finally:
            self.sessions.drop(token)
            with anyio.CancelScope(shield=True):
                await session.aclose()

    async def _legacy_message(self, exchange: Exchange) -> None:
        token = parse_qs(exchange.query.decode("latin-1")).get("session_id", [None])[0]
        session = self.sessions.get(token, self.server.id) if token else None
        if not isinstance(session, StdioSession) or session.standing is None:
            raise GatewayError.session_not_found()
        messages, _ = parse_body(exchange.body)
        await session.bridge(messages, session.standing)
        await respond(exchange.send, 202, b"Accepted", content_type=b"text/plain")

    async def websocket(self, receive: Receive, send: Send, max_frame: int, *, scope: Scope | None = None) -> None:
        """One WebSocket connection = one session: text frames in, text frames out, one message each.
        `scope`: the connection's, for the X-Forwarded-* headers of a bridged connection."""
        self.inflight += 1
        try:
            relay = await self._bridge_relay()
            with _opening_for(scope):
                session, box = await relay.open_bridge()
        except GatewayError as exc:
            self._done()
            await send({"type": "websocket.close", "code": 1011, "reason": exc.message[:120]})
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": "mcp"})
            async with anyio.create_task_group() as tg:

                async def to_client() -> None:
                    async for item in box.receive:
                        await send({"type": "websocket.send", "text": item.decode()})
                    await send({"type": "websocket.close", "code": 1011, "reason": "the server went away"})
                    tg.cancel_scope.cancel()

                tg.start_soon(to_client)
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    text = message.get("text")
                    if text is None:
                        await send({"type": "websocket.close", "code": 1003, "reason": "text frames only"})
                        break
                    if len(text) > max_frame:
                        await send(
                            {"type": "websocket.close", "code": 1009, "reason": "frame over gateway.max_message_bytes"}
                        )
                        break
                    try:
                        messages, _ = parse_body(text.encode())
                        await session.bridge(messages, box)
                    except GatewayError as exc:
                        await send(
                            {"type": "websocket.send", "text": error_response(None, exc.code, exc.message).decode()}
                        )
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await session.aclose()
            self._done()

    async def _probe_replicas(self) -> None:
        """Active health checks (`health.active`): every `health.interval`, probe each replica."""
        assert self.http is not None
        assert self.balancer is not None
        assert isinstance(self.server, HttpServer)
        interval = self.server.health.interval
        while not self.http.retired:
            for replica in list(self.balancer.replicas):
                healthy = await self.http.probe(replica.url)
                self.balancer.probed(replica, healthy, hold=interval)
                if not healthy:
                    log.warning("server %r: replica %s failed its health check", self.server.id, mask_url(replica.url))
            await anyio.sleep(interval)

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def retire(self, drain_limit: float = 600.0) -> None:
        """Take no new work, let in-flight requests finish (bounded), then end sessions and processes."""
        for upstream in self.upstreams:
            upstream.retired = True
        with anyio.move_on_after(drain_limit):
            while self.inflight:
                await self._idle.wait()
        ending = [s for s in self.sessions.of_server(self.server.id) if s.owner in self.upstreams]
        for session in ending:
            self.sessions.drop_session(session)
        await close_all(ending)  # together: one after another, 2,000 sessions took a quarter of an hour
        await self.aclose()

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
