"""Streamable HTTP (and any other path) proxied to the replicas of an `http` server, byte for byte.

Bodies stream in both directions without buffering; `text/event-stream` responses go out event by event
as the upstream writes them, with `X-Accel-Buffering: no`, and race the client's disconnect.

Headers towards the server: the client's, less hop-by-hop ones (and those `Connection` names), `Host` (the
replica's is set), `Content-Length` (of the body sent), `Origin` (checked at the gateway), what the client
claims about its address (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) and any header the entry configures
(the entry's value replaces the client's); plus the entry's `headers` and the gateway's `X-Forwarded-For`,
`-Host` and `-Proto`. `Mcp-Session-Id` is the gateway's id outside, the upstream's inside.

On the server's MCP path an answer is one message and holds to `gateway.max_message_bytes`: a JSON answer
whose length says it is larger gets 502 with a JSON-RPC error naming the setting, and in an event stream an
event larger than the limit (plus SSE_FRAMING) is dropped before any byte of it goes out; if it answered a
request, an error event for that request takes its place. Events are cut at their boundaries as they pass
(`protocol.EventMeter`), so a chunk of whole events costs one `endswith`.

A request with a tool guard (policy/tools.py: the caller's grant restricts tools, or auditing is on) is
screened on every path of the server, not only its MCP path: a backend may route `/mcp/`, `/MCP`, `/mcp;x`
or any other path to its MCP handler (Express matches a trailing slash and any case by default), and a
legacy SSE backend's message path is one the gateway does not know. Its body, whatever the method, must
be one the guard reads as the server will (uncompressed, UTF-8: 415 otherwise); a body that could name a
tools method is read (400 when it is not JSON or names one in a malformed message), denied calls are
answered here, and its answer is watched: `tools/list` answers filtered and `tools/call` answers audited as
they pass (a JSON answer read whole, an event stream in the runs the meter cuts, held to the message limit
as on the MCP path). When the grant restricts tools, every event stream of the caller (GET streams,
`Last-Event-ID` resumptions, legacy SSE streams) is watched too, for results shaped like a `tools/list`
one, since the request they answer was another exchange's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway import tracing
from mcpfleet.gateway.asgi import respond, send_chunk, stream_body
from mcpfleet.gateway.balancer import Balancer
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.oauth import backend_challenge
from mcpfleet.gateway.pinning import METHODS, rewrite_events, unwrap, wrap
from mcpfleet.gateway.policy.access import EVERYTHING, GRANT
from mcpfleet.gateway.policy.tools import ToolGuard, closing, may_name_tools
from mcpfleet.gateway.protocol import (
    HOP_BY_HOP_PREFIXES,
    NOT_FORWARDED_DOWN,
    NOT_FORWARDED_UP,
    NOT_FORWARDED_UP_PREFIXES,
    SESSION_HEADER,
    SSE_FRAMING,
    TOO_LARGE,
    EventMeter,
    Oversized,
    answered_request,
    error_response,
    forwarded_for,
    single_request,
    sse_event,
    too_large,
    too_large_event,
    without,
)
from mcpfleet.gateway.session import HttpSession, Session, SessionTable
from mcpfleet.gateway.upstream.base import Unreachable
from mcpfleet.gateway.upstream.wire import ConnectFailed, OutOfDescriptors, Pool, Response, UpstreamClosed
from mcpfleet.masking import shown_url
from mcpfleet.registry.model import Gateway, HttpServer

log = logging.getLogger("mcpfleet.gateway.http")

_STANDING_STREAM = frozenset({"GET"})
JSON_CONTENT = (b"content-type", b"application/json")
DEFAULT_MAX_MESSAGE_BYTES: int = Gateway().max_message_bytes


class HttpUpstream:
    """The replicas of one `http` server, each with its own keep-alive connection pool: an `Upstream`
    (base.py). Its sessions are sealed records (`HttpSession`), held by the replicas, not by a table."""

    def __init__(
        self,
        server: HttpServer,
        balancer: Balancer,
        sessions: SessionTable,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.balancer = balancer
        self.sessions = sessions
        self._pools: dict[str, Pool] = {}
        self.configure(server, max_message_bytes)
        self.retired = False
        self.draining = False

    # --- the Upstream interface ------------------------------------------------------------------------------

    async def pass_on(self, exchange: Exchange) -> None:
        """A request on any other path of the server (`Runtime._dispatch`), forwarded as it is once screened
        like one on the MCP path (`_screen`): a backend may serve MCP there too."""
        guard, screened = await self._screen(exchange, None)
        if screened is not None:
            with closing(guard):
                await self.forward(screened, exchange.rest, guard=guard)

    async def open(self, exchange: Exchange, key: str | None) -> None:
        """A request on the MCP path outside any session, to the balancer's pick (`forward`)."""
        if self.draining:
            raise Unreachable("the server is draining")
        initialize = exchange.method == "POST" and b'"initialize"' in exchange.body
        guard, screened = await self._screen(exchange, None)
        if screened is not None:
            with closing(guard):
                await self.forward(screened, self.server.path, initialize=initialize, key=key, guard=guard)

    def holds(self, session: Session) -> bool:
        """An http session whose replica serves or still drains here (none once the upstream closed)."""
        return (
            not self.retired and isinstance(session, HttpSession) and self.balancer.replica(session.replica) is not None
        )

    async def serve(self, exchange: Exchange, token: str, session: Session) -> None:
        assert isinstance(session, HttpSession)
        guard, screened = await self._screen(exchange, token)
        if screened is not None:
            with closing(guard):
                await self.forward(screened, self.server.path, token, session, guard=guard)

    async def _screen(self, exchange: Exchange, token: str | None) -> tuple[ToolGuard | None, Exchange | None]:
        """The request's tool guard (policy/tools.py; None: nothing to see) and the request to send on, where
        a batch has lost its denied calls; None when only denied calls were left: they are answered here
        (200, their JSON-RPC errors; 202 for denied notifications alone) and nothing goes to the server. Any
        method, any path. A body is looked into only when it could name a tools method (`may_name_tools`),
        so other requests cost three byte scans and, for a body, the check of its headers (`_unreadable`).
        A request without a body gets a guard only when the grant restricts tools (its answer may be a
        stream holding a `tools/list` result). Raises GatewayError 400 (`screen_body`) or 415."""
        body = exchange.body
        if not body and exchange.scope.get(GRANT, EVERYTHING).tools is None:
            return None, exchange
        guard = ToolGuard.for_exchange(exchange, token)
        if guard is None:
            return None, exchange
        if body and (why := _unreadable(exchange.scope["headers"])) is not None:
            raise GatewayError(
                415,
                -32600,
                f"the gateway reads request bodies to check tool access and audit calls (gateway.access,"
                f" gateway.logging.audit) and cannot read this one: {why}; send UTF-8 JSON, uncompressed",
            )
        if body and may_name_tools(body):
            screened, own_answer = guard.screen_body(body)
            if own_answer is not None:
                session = [(SESSION_HEADER, token.encode())] if token else []
                await respond(exchange.send, 200 if own_answer else 202, own_answer, session)
                return guard, None
            if screened is not body:
                exchange = dataclasses.replace(exchange, body=screened)
        if not (guard.restricts or guard.pending):
            return None, exchange  # auditing only, and no call in the body
        return guard, exchange

    def drain(self) -> None:
        self.draining = True

    async def wait_drained(self) -> None:
        """Never: http sessions live in the replicas, which do not say when they end; the caller's bound
        (`timeouts.drain`) ends the wait."""
        await anyio.sleep_forever()

    def configure(self, server: HttpServer, max_message_bytes: int) -> None:
        """Take a new entry (a reload): headers, path, timeouts and the size limit apply to the next request;
        connections stay. A pool's connect timeout is the one it was opened with."""
        self.server = server
        self.max_message_bytes = max_message_bytes
        self._configured = [(k.lower().encode(), v.encode()) for k, v in server.headers.items()]
        # A header the entry configures replaces the client's, or the gateway's, of that name, whatever its case.
        self._configured_names = frozenset(name for name, _ in self._configured)
        self._not_forwarded = NOT_FORWARDED_UP | self._configured_names
        self._not_forwarded_mcp = self._not_forwarded | {b"accept-encoding"}

    def sweep(self) -> None:
        """Close the connections to replicas the balancer no longer knows (their drain ended). Swept rather
        than closed at the end of each drain: a request or probe that began before may open a pool after."""
        for replica in [url for url in self._pools if self.balancer.replica(url) is None]:
            self._pools.pop(replica).close()

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
        session_token: str | None = None,
        session: HttpSession | None = None,
        *,
        initialize: bool = False,
        key: str | None = None,
        guard: ToolGuard | None = None,
    ) -> None:
        """Send the request upstream and stream the answer back. Raises Unreachable when nothing was sent.
        `path`: the server's MCP path, or any other path of the server (forwarded as it is). `key`: the
        request's routing key (`balancer.hash_header`), for strategies that read one. `guard`: the request's
        tool filter and audit line, shown the answer.

        New work goes to the balancer's pick; when nothing could be sent there (connection refused or not
        established in time) the next replica is tried, since the server cannot have seen the request.
        Session traffic stays on its replica, draining ones included (`timeouts.drain`); once that replica is
        gone, the session is too (404). A 2026-07-28 retry carrying a `requestState` the gateway wrapped goes
        to the replica that issued it.
        """
        sessions = self.sessions
        stateless = session is None and exchange.modern and exchange.method == "POST"
        if session is not None:
            pinned = self.balancer.replica(session.replica)
            candidates = [pinned] if pinned is not None else []
        else:
            candidates = self.balancer.candidates(key)
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
                response = await self._send(exchange, replica.url, path, session, body, guard is not None)
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
                failures.append(f"{shown_url(replica.url)}: {exc}")
                continue
            except BaseException:
                self.balancer.finished(replica, time.monotonic() - started)
                raise
            rewrite = self._pin_states(exchange, sessions, replica.url, method) if stateless else None
            try:
                await self._relay(
                    exchange,
                    response,
                    replica.url,
                    sessions,
                    session_token,
                    session,
                    initialize,
                    rewrite,
                    bounded=path == self.server.path,
                    guard=guard,
                )
            finally:
                self.balancer.finished(replica, time.monotonic() - started if timed else None)
            self.balancer.succeeded(replica)
            return
        if session is not None and session_token is not None:
            sessions.drop(session_token)  # its replica is gone: the client initializes again elsewhere
            raise GatewayError.session_not_found()
        if guard is not None:
            guard.forget()  # nothing was sent: the entry's command may take the request (and audit it there)
        raise Unreachable("; ".join(failures) or "no replica serves")

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
        self, exchange: Exchange, replica: str, path: str, session: HttpSession | None, body: bytes, watched: bool
    ) -> Response:
        """`watched`: a tool guard reads the answer, which must come uncompressed, as on the MCP path."""
        mcp_path = path == self.server.path or watched
        headers = without(
            exchange.scope["headers"],
            self._not_forwarded_mcp if mcp_path else self._not_forwarded,
            NOT_FORWARDED_UP_PREFIXES,
        )
        if mcp_path:  # uncompressed: the size limit counts a message's own bytes, and events are seen as they pass
            headers.append((b"accept-encoding", b"identity"))
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
        span = tracing.http_call(headers, exchange.method, replica + target) if tracing.enabled else None
        try:
            with self._as_gateway_errors(replica, "response", self.server.timeouts.first_byte, "timeouts.first_byte"):
                response = await self._pool(replica).request(exchange.method, target, headers, body, first_byte)
        except BaseException as exc:
            if span is not None:
                tracing.http_failed(span, exc)
            raise
        if span is not None:
            tracing.http_answered(span, response.status)
        return response

    @contextlib.contextmanager
    def _as_gateway_errors(self, replica: str, what: str, seconds: float, setting: str) -> Iterator[None]:
        """Upstream I/O failures before anything was sent to the client: a timeout is 504, a closed
        connection 502."""
        try:
            yield
        except TimeoutError:
            raise GatewayError.timeout(self.server.id, what, seconds, setting) from None
        except UpstreamClosed as exc:
            raise GatewayError.unreachable(self.server.id, f"{shown_url(replica)}: {exc}") from None

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
        *,
        bounded: bool = False,
        guard: ToolGuard | None = None,
    ) -> None:
        """Stream the answer to the client. `bounded`: an answer on the MCP path, held to the size limit (as is
        one a guard reads, on any path). `guard`: the request's tool filter and audit line, which sees the
        answers it waits for (and adds the gateway's answers to denied calls of a batch), and, when the grant
        restricts tools, every event stream (results shaped like a `tools/list` one). Content-Length is
        passed on only with a body passed on byte for byte."""
        idle = None if exchange.method in _STANDING_STREAM else self.server.timeouts.idle_stream
        streaming = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        status = response.status
        if guard is not None and not (guard.pending or guard.refusals or (streaming and guard.restricts)):
            guard = None  # nothing to see in this answer
        limit = self.max_message_bytes if bounded or guard is not None else None
        if guard is not None and guard.refusals and status == 202:
            # What was sent on needed no answer: the gateway's answers to the denied calls are the answer.
            await response.aclose()
            whole: bytes | None = b"[" + b",".join(guard.take_refusals()) + b"]"
            status, streaming = 200, False
        else:
            whole = None
        json_rewrite = rewrite
        if guard is not None and not streaming and whole is None:
            seen = guard.answer_body
            json_rewrite = seen if rewrite is None else (lambda answer: rewrite(seen(answer)))
        if not streaming and whole is None and (json_rewrite is not None or limit is not None):
            whole = await self._read_json(response, replica, idle, limit, json_rewrite)
        try:
            headers = without(response.headers, NOT_FORWARDED_DOWN, HOP_BY_HOP_PREFIXES)
            headers = backend_challenge(exchange, response.status, headers)  # challenges point at the gateway
            upstream_session = response.header(SESSION_HEADER)
            ok = 200 <= response.status < 300
            if session is None and initialize and ok and upstream_session:
                token = sessions.issue(HttpSession(self.server.id, replica, upstream_session.decode()), exchange.owner)
                headers.append((SESSION_HEADER, token.encode()))
            elif session is not None and session_token is not None:
                if upstream_session:
                    headers.append((SESSION_HEADER, session_token.encode()))
                if response.status == 404 or (exchange.method == "DELETE" and ok):
                    sessions.drop(session_token)
            if streaming:
                # Never a Content-Length: the gateway may drop, rewrite or add events (limit, guard, pinning).
                if response.header(b"x-accel-buffering") is None:
                    headers.append((b"x-accel-buffering", b"no"))
            elif whole is not None:
                headers.append((b"content-length", str(len(whole)).encode()))
                if status != response.status:
                    headers = [(k, v) for k, v in headers if k != b"content-type"] + [JSON_CONTENT]
            elif (length := response.header(b"content-length")) is not None:
                headers.append((b"content-length", length))  # the body goes out byte for byte
            await exchange.send({"type": "http.response.start", "status": status, "headers": headers})
            if streaming:
                # A client that goes away closes the upstream stream (a cancellation at 2026-07-28).
                events = response.body(idle)
                if limit is not None:  # the MCP path, or a guard's answer on another
                    events = self._bounded_events(events, limit, exchange, guard)
                completed = await stream_body(
                    exchange.receive,
                    exchange.send,
                    rewrite_events(events, rewrite) if rewrite else events,
                    exchange.max_stream_duration,
                )
                if guard is not None:
                    guard.client_left = not completed
            elif whole is not None:
                await send_chunk(exchange.send, whole, more=False)
            else:
                async for chunk in response.body(idle):
                    await send_chunk(exchange.send, chunk)
                await send_chunk(exchange.send, b"", more=False)
        except (TimeoutError, UpstreamClosed) as exc:
            # The status line is already out: end the response, on an event stream with an error for the one
            # request it was to answer, so the client is told why (not just that the stream ended).
            if streaming and exchange.method == "POST":
                await self._stream_failed(exchange, replica, exc, idle)
            await send_chunk(exchange.send, b"", more=False)
        finally:
            await response.aclose()
        if guard is not None and status >= 400:
            guard.close("error")  # an HTTP error answered the calls, whatever its body names

    async def _stream_failed(self, exchange: Exchange, replica: str, exc: Exception, idle: float | None) -> None:
        """The error event for the request of a POST whose answer stream went silent for `idle` seconds
        (-32015, `timeouts.idle_stream`) or whose replica closed it before the end (-32012)."""
        is_request, request_id = single_request(exchange.body)
        if not is_request:
            return
        if isinstance(exc, TimeoutError):
            error = GatewayError.timeout(self.server.id, "answer", idle or 0.0, "timeouts.idle_stream")
        else:
            error = GatewayError.unreachable(self.server.id, f"replica {shown_url(replica)} ended the answer stream")
        log.warning("%s", error.message)
        with contextlib.suppress(OSError):
            await send_chunk(exchange.send, sse_event(error_response(request_id, error.code, error.message)))

    async def _read_json(
        self,
        response: Response,
        replica: str,
        idle: float | None,
        limit: int | None,
        rewrite: Callable[[bytes], bytes] | None,
    ) -> bytes | None:
        """A JSON answer read whole when it must be (None when it can stream as it is): to rewrite its
        `requestState`, or to hold it to `limit` when it has no length. One JSON-RPC message (or batch) is
        bounded by `limit`; over it, 502 with a JSON-RPC error. The connection is released on failure."""
        length = response.header(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if limit is not None and declared is not None and declared > limit:
            await response.aclose()
            log.warning(
                "server %r: a JSON answer of %d bytes exceeds gateway.max_message_bytes", self.server.id, declared
            )
            raise GatewayError(502, TOO_LARGE, too_large(self.server.id, declared, limit))
        if rewrite is None and (limit is None or declared is not None):
            return None
        chunks: list[bytes] = []
        size = 0
        whole = None
        try:
            with self._as_gateway_errors(
                replica, "response body", self.server.timeouts.idle_stream, "timeouts.idle_stream"
            ):
                async for chunk in response.body(idle):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        log.warning("server %r: a JSON answer exceeds gateway.max_message_bytes", self.server.id)
                        raise GatewayError(502, TOO_LARGE, too_large(self.server.id, None, limit))
                    chunks.append(chunk)
            whole = b"".join(chunks)
            return rewrite(whole) if rewrite is not None else whole
        finally:
            if whole is None:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

    async def _bounded_events(
        self, chunks: AsyncIterator[bytes], limit: int, exchange: Exchange, guard: ToolGuard | None = None
    ) -> AsyncIterator[bytes]:
        """The event stream, whole events as they complete; an event over the limit gives way to an error
        for the request it answered, or, if it answered none (a notification, a request to the client), to
        nothing. `guard` sees the runs of whole events (the answers it waits for; once none is awaited a run
        costs it one test), and its answers to a batch's denied calls go first."""
        meter = EventMeter(limit + SSE_FRAMING)
        if guard is not None:
            for refusal in guard.take_refusals():
                yield sse_event(refusal)
        async for chunk in chunks:
            for piece in meter.feed(chunk):
                run = piece if isinstance(piece, bytes) else self._in_place_of(piece, limit, exchange.body)
                if run is not None:
                    yield run if guard is None else guard.answer_events(run)
        if rest := meter.flush():
            yield rest

    def _in_place_of(self, event: Oversized, limit: int, body: bytes) -> bytes | None:
        answers, request_id = answered_request(event, body)
        log.warning(
            "server %r: an event of %d bytes exceeds gateway.max_message_bytes (%d); %s",
            self.server.id,
            event.size,
            limit,
            "its request gets an error" if answers else "it answers no request and is dropped",
        )
        return too_large_event(request_id, self.server.id, event.size, limit) if answers else None


_CHARSET = re.compile(rb';\s*charset\s*=\s*"?([^";,\s]*)', re.IGNORECASE)
_UTF8 = frozenset({b"utf-8", b"utf8", b"us-ascii"})


def _unreadable(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a tool guard cannot read a request body as a server may (None: it can): a `Content-Encoding`
    other than identity (Express's `express.json()` inflates gzip, deflate and br), or a `Content-Type`
    charset other than UTF-8 (the TypeScript SDK's server decodes the charset the request names, UTF-7 and
    UTF-16 included). MCP's Streamable HTTP messages are UTF-8 JSON, so no client of the spec meets this.
    Every header of those names is read: servers differ on which of repeated ones they take."""
    for name, value in headers:
        if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return f"Content-Encoding {value.decode('latin-1')!r}"
        if name == b"content-type":
            for charset in _CHARSET.findall(value):
                if charset.lower() not in _UTF8:
                    return f"Content-Type charset {charset.decode('latin-1')!r}"
    return None
