"""Streamable HTTP (and any other path) proxied to the replicas of an `http` server, byte for byte.

Bodies stream in both directions without buffering; `text/event-stream` responses go out event by event
as the upstream writes them, with `X-Accel-Buffering: no`, and race the client's disconnect.

Headers towards the server: the client's, less hop-by-hop ones (and those `Connection` names), `Host` (the
replica's is set), `Content-Length` (of the body sent), `Origin` (checked at the gateway), what the client
claims about its address (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) and any header the entry configures
(the entry's value replaces the client's); plus the entry's `headers` and the gateway's `X-Forwarded-For`,
`-Host` and `-Proto`. `Mcp-Session-Id` is the gateway's id outside, the upstream's inside.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import send_chunk, stream_body
from mcpfleet.gateway.balancer import Balancer
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.pinning import METHODS, rewrite_events, unwrap, wrap
from mcpfleet.gateway.protocol import (
    HOP_BY_HOP_PREFIXES,
    NOT_FORWARDED_DOWN,
    NOT_FORWARDED_UP,
    NOT_FORWARDED_UP_PREFIXES,
    SESSION_HEADER,
    forwarded_for,
    without,
)
from mcpfleet.gateway.session import HttpSession, SessionTable
from mcpfleet.gateway.upstream.wire import ConnectFailed, OutOfDescriptors, Pool, Response, UpstreamClosed
from mcpfleet.registry.model import HttpServer
from mcpfleet.registry.render import mask_url

log = logging.getLogger("mcpfleet.gateway.http")

_STANDING_STREAM = frozenset({"GET"})


class Unreachable(Exception):
    """No replica accepted a connection (nothing was sent): the caller may fall back to stdio."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class HttpUpstream:
    """The replicas of one `http` server, each with its own keep-alive connection pool."""

    def __init__(self, server: HttpServer, balancer: Balancer) -> None:
        self.server = server
        self.balancer = balancer
        self._pools: dict[str, Pool] = {}
        self._configured = [(k.lower().encode(), v.encode()) for k, v in server.headers.items()]
        # A header the entry configures replaces the client's, or the gateway's, of that name, whatever its case.
        self._configured_names = frozenset(name for name, _ in self._configured)
        self._not_forwarded = NOT_FORWARDED_UP | self._configured_names
        self.retired = False

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, replica: str) -> Pool:
        pool = self._pools.get(replica)
        if pool is None:
            pool = self._pools[replica] = Pool(replica, self.server.timeouts.connect)
        return pool

    async def probe(self, replica: str) -> bool:
        """One active health check: an HTTP answer below 500 on the MCP path within `health.timeout`."""
        health = self.server.health
        try:
            with anyio.fail_after(health.timeout):
                response = await self._pool(replica).request(
                    "GET",
                    self.server.path,
                    [(b"accept", b"application/json, text/event-stream")],
                    b"",
                    health.timeout,
                )
                await response.aclose()  # not read: the connection is closed, not reused
                return response.status < 500
        except (ConnectFailed, UpstreamClosed, TimeoutError):
            return False

    async def forward(
        self,
        exchange: Exchange,
        path: str,
        sessions: SessionTable,
        session_token: str | None,
        session: HttpSession | None,
        *,
        initialize: bool = False,
    ) -> None:
        """Send the request upstream and stream the answer back. Raises Unreachable when nothing was sent.

        New work goes to the balancer's pick; when nothing could be sent there (connection refused or not
        established in time) the next replica is tried, since the server cannot have seen the request.
        Session traffic stays on its replica; if that replica is gone, the session is too (404). A
        2026-07-28 retry carrying a `requestState` the gateway wrapped goes to the replica that issued it.
        """
        stateless = session is None and exchange.modern and exchange.method == "POST"
        if session is not None:
            pinned = self.balancer.replica(session.replica)
            candidates = [pinned] if pinned is not None else []
        else:
            candidates = self.balancer.candidates()
        body = exchange.body  # kept as the client sent it, for a fallback to the entry's command
        if stateless:
            record, body = unwrap(sessions.sealer, exchange.body)
            if record is not None and record.get("s") == self.server.id:
                issuer = self.balancer.replica(str(record.get("r")))
                candidates = [issuer] if issuer is not None else candidates  # gone: the server may share keys
        failures: list[str] = []
        method = exchange.header(b"mcp-method") if stateless else None  # 2026-07-28 requests name their method
        timed = exchange.method not in _STANDING_STREAM and method != "subscriptions/listen"
        for replica in candidates:
            started = time.monotonic()
            self.balancer.started(replica)
            try:
                response = await self._send(exchange, replica.url, path, session, body)
            except OutOfDescriptors as exc:
                self.balancer.finished(replica, time.monotonic() - started)
                log.error("server %r: no file descriptor left for a connection (%s)", self.server.id, exc)
                raise GatewayError(
                    503,
                    -32016,
                    f"the gateway is out of file descriptors ({exc}); retry later",
                    headers={"Retry-After": "1"},
                ) from None
            except ConnectFailed as exc:
                self.balancer.finished(replica, time.monotonic() - started)
                self.balancer.failed(replica)
                failures.append(f"{mask_url(replica.url)}: {exc}")
                continue
            except BaseException:
                self.balancer.finished(replica, time.monotonic() - started)
                raise
            rewrite = self._pin_states(exchange, sessions, replica.url, method) if stateless else None
            try:
                await self._relay(
                    exchange, response, replica.url, sessions, session_token, session, initialize, rewrite
                )
            finally:
                self.balancer.finished(replica, time.monotonic() - started if timed else None)
            self.balancer.succeeded(replica)
            return
        if session is not None and session_token is not None:
            sessions.drop(session_token)  # its replica is gone: the client initializes again elsewhere
            raise GatewayError.session_not_found()
        raise Unreachable("; ".join(failures))

    def _pin_states(
        self, exchange: Exchange, sessions: SessionTable, replica: str, method: str | None
    ) -> Callable[[bytes], bytes] | None:
        """How to wrap the `requestState` of an answer from `replica`, when a retry could go astray."""
        if self.server.balancer.request_state != "pin" or len(self.balancer.replicas) < 2:
            return None
        if method is None and not any(f'"{name}"'.encode() in exchange.body for name in METHODS):
            return None
        if method is not None and method not in METHODS:
            return None
        record = {"s": self.server.id, "r": replica}
        return lambda message: wrap(sessions.sealer, message, record)

    async def _send(
        self, exchange: Exchange, replica: str, path: str, session: HttpSession | None, body: bytes
    ) -> Response:
        headers = without(exchange.scope["headers"], self._not_forwarded, NOT_FORWARDED_UP_PREFIXES)
        headers.extend(self._configured)
        if session is not None:
            headers.append((SESSION_HEADER, session.upstream_id.encode()))
        scope = exchange.scope
        gateway_set = forwarded_for(scope.get("client"), exchange.header(b"host"), scope.get("scheme", "http"))
        if self._configured_names:
            gateway_set = [(name, value) for name, value in gateway_set if name not in self._configured_names]
        headers.extend(gateway_set)
        target = path + ("?" + exchange.query.decode("latin-1") if exchange.query else "")
        first_byte = None if exchange.method in _STANDING_STREAM else self.server.timeouts.first_byte
        with self._as_gateway_errors(replica, "response", self.server.timeouts.first_byte, "timeouts.first_byte"):
            return await self._pool(replica).request(exchange.method, target, headers, body, first_byte)

    @contextlib.contextmanager
    def _as_gateway_errors(self, replica: str, what: str, seconds: float, setting: str) -> Iterator[None]:
        """Upstream I/O failures before anything was sent to the client: a timeout is 504, a closed
        connection 502."""
        try:
            yield
        except TimeoutError:
            raise GatewayError.timeout(self.server.id, what, seconds, setting) from None
        except UpstreamClosed as exc:
            raise GatewayError.unreachable(self.server.id, f"{mask_url(replica)}: {exc}") from None

    async def _relay(
        self,
        exchange: Exchange,
        response: Response,
        replica: str,
        sessions: SessionTable,
        session_token: str | None,
        session: HttpSession | None,
        initialize: bool,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> None:
        idle = None if exchange.method in _STANDING_STREAM else self.server.timeouts.idle_stream
        streaming = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        whole: bytes | None = None
        if rewrite is not None and not streaming:
            # A JSON answer that may carry requestState is read whole (one JSON-RPC response, bounded by the
            # server), so its length can change; the connection is released whatever happens.
            limit = self.server.timeouts.idle_stream
            try:
                with self._as_gateway_errors(replica, "response body", limit, "timeouts.idle_stream"):
                    whole = rewrite(b"".join([chunk async for chunk in response.body(idle)]))
            finally:
                if whole is None:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
        try:
            headers = without(response.headers, NOT_FORWARDED_DOWN, HOP_BY_HOP_PREFIXES)
            upstream_session = response.header(SESSION_HEADER)
            ok = 200 <= response.status < 300
            if session is None and initialize and ok and upstream_session:
                token = sessions.issue(HttpSession(self.server.id, replica, upstream_session.decode()))
                headers.append((SESSION_HEADER, token.encode()))
            elif session is not None and session_token is not None:
                if upstream_session:
                    headers.append((SESSION_HEADER, session_token.encode()))
                if response.status == 404 or (exchange.method == "DELETE" and ok):
                    sessions.drop(session_token)
            if streaming and response.header(b"x-accel-buffering") is None:
                headers.append((b"x-accel-buffering", b"no"))
            elif whole is not None:
                headers.append((b"content-length", str(len(whole)).encode()))
            elif (length := response.header(b"content-length")) is not None:
                headers.append((b"content-length", length))
            await exchange.send({"type": "http.response.start", "status": response.status, "headers": headers})
            if streaming:
                # A client that goes away closes the upstream stream (a cancellation at 2026-07-28).
                events = response.body(idle)
                await stream_body(
                    exchange.receive, exchange.send, rewrite_events(events, rewrite) if rewrite else events
                )
            elif whole is not None:
                await send_chunk(exchange.send, whole, more=False)
            else:
                async for chunk in response.body(idle):
                    await send_chunk(exchange.send, chunk)
                await send_chunk(exchange.send, b"", more=False)
        except (TimeoutError, UpstreamClosed):
            # The status line is already out: all that is left is to end the response.
            await send_chunk(exchange.send, b"", more=False)
        finally:
            await response.aclose()
