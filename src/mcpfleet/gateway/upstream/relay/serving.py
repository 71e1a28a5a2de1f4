"""Serving relayed sessions (session mode: one client session, one process or bridged connection) over
Streamable HTTP, and opening sessions for message-stream clients (legacy SSE, WebSocket: the runtime carries
their messages).

A POST carrying requests is answered as an event stream (or JSON, if the client takes only JSON) that ends
when every request in it has its answer. A GET opens the session's standing stream; with `Last-Event-ID` it
resumes a stream from the session's journal (outbox.py). DELETE ends the session.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Headers, respond, start_event_stream, stream_body
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.policy.tools import ToolGuard, closing
from mcpfleet.gateway.protocol import (
    LAST_EVENT_ID,
    SESSION_HEADER,
    Message,
    accepts,
    error_response,
    loads,
    parse_body,
    parse_message,
    refuse_batch,
    sse_event,
)
from mcpfleet.gateway.session import SessionTable
from mcpfleet.gateway.upstream.relay.outbox import DETACHED_GRACE, Idle, Journal, Outbox, next_message
from mcpfleet.gateway.upstream.relay.pool import Pool
from mcpfleet.gateway.upstream.relay.sessions import SharedSession, StdioSession
from mcpfleet.registry.model import HttpServer, StdioServer

if TYPE_CHECKING:
    from mcpfleet.gateway.upstream.relay import RelayUpstream

EVENT_ID = re.compile(r"(\d+)-(\d+)", re.ASCII)


class PoolServing:
    """What serves requests over one relayed server's `pool`: the pool, the session table, the relay."""

    def __init__(self, pool: Pool, sessions: SessionTable, owner: RelayUpstream) -> None:
        self._pool = pool
        self._sessions = sessions
        self._owner = owner

    @property
    def server(self) -> StdioServer | HttpServer:
        return self._pool.server


class Serving(PoolServing):
    """The requests of session mode, for one relayed server's `pool`."""

    async def initialize(self, exchange: Exchange, message: Message) -> None:
        deadline = self._pool.deadline()
        session = self._pool.take_warm() or StdioSession(self.server, self._pool.new_backend(), self._owner)
        session.initializing = True  # not idle, so a concurrent reclaim cannot take it half-way
        session.leased = True
        if not session.started:
            try:
                await self._pool.start(session, deadline, measured=True)
            except BaseException:
                session.initializing = False
                raise
        keep = False
        try:
            box = await session.post([message])
            assert box is not None
            before: list[bytes] = []
            first = None
            with anyio.move_on_after(self.server.timeouts.startup):
                while (first := await next_message(box)) is not None:
                    parsed = parse_message(first)
                    if parsed is not None and parsed.is_response:
                        break
                    before.append(first)  # e.g. a log notification sent while initializing
            if first is None:
                if session.closed.is_set():
                    raise session.ended(session.exit_detail, " before answering initialize")
                raise GatewayError.timeout(
                    self.server.id, "answer to initialize", self.server.timeouts.startup, "timeouts.startup"
                )
            answer = parse_message(first)
            if answer is not None and "error" in answer.data and session.closed.is_set():
                # The process died before answering: that is the gateway's 502, not the server's answer.
                raise session.ended(session.exit_detail, " before answering initialize")
            headers: Headers = []
            if answer is not None and "result" in answer.data:
                headers.append((SESSION_HEADER, self._sessions.issue(session, exchange.owner).encode()))
                result = answer.data["result"]
                grace = min(DETACHED_GRACE, exchange.snapshot.gateway.session_idle_timeout)
                session.resumable(result.get("protocolVersion") if isinstance(result, dict) else None, grace)
                keep = True
            await answer_post(exchange, [*before, first], box, headers, batch=False)
            session.release(box)
        finally:
            session.initializing = False
            session.last_used = time.monotonic()  # idle from now, not from its start: no reclaim before a call
            # Refill after the answer: a starting process would compete for the CPU with this handshake.
            self._pool.refill_soon()
            if not keep:
                await session.aclose()

    async def in_session(self, exchange: Exchange, token: str, session: StdioSession) -> None:
        if await delete_or_stream(exchange, token, session, self._sessions):
            return
        messages, batch = parse_body(exchange.body)
        if batch:
            refuse_batch(session.version)
        guard = ToolGuard.for_exchange(exchange, token)
        with closing(guard):
            streamed = accepts(exchange.header(b"accept") or "", "text/event-stream")
            box = await session.post(messages, streamed=streamed, guard=guard)
            if box is None:
                await respond(exchange.send, 202, b"")
                return
            completed = False
            try:
                idle = request_timeout(self.server, loads)
                completed = await answer_post(
                    exchange, [], box, [(SESSION_HEADER, token.encode())], batch=batch, idle=idle
                )
            finally:
                session.release(box, completed=completed)
                if guard is not None:
                    guard.client_left = not completed

    async def open_bridge(self) -> tuple[StdioSession, Outbox]:
        """A session for a message-stream client: one connection, every message on one outbox."""
        session = StdioSession(self.server, self._pool.new_backend(), self._owner)
        session.leased = True
        await self._pool.start(session, self._pool.deadline())
        box = session.open_standing()
        assert box is not None
        return session, box


async def delete_or_stream(
    exchange: Exchange, token: str, session: StdioSession | SharedSession, sessions: SessionTable
) -> bool:
    """DELETE ends the session; GET opens its standing stream. True when the request was one of them."""
    if exchange.method == "DELETE":
        sessions.drop(token)
        await session.aclose()
        await respond(exchange.send, 200, b"")
        return True
    if exchange.method == "GET":
        await standing_stream(exchange, session)
        return True
    return False


async def standing_stream(exchange: Exchange, session: StdioSession | SharedSession) -> None:
    if not accepts(exchange.header(b"accept") or "", "text/event-stream"):
        raise GatewayError(406, -32600, "the GET stream needs 'Accept: text/event-stream'")
    last_event_id = exchange.header(LAST_EVENT_ID)
    if last_event_id is not None and isinstance(session, StdioSession) and session.journal is not None:
        await resume(exchange, session, session.journal, last_event_id)
        return
    box = session.open_standing()
    if box is None:
        raise GatewayError(409, -32600, "this session already has a GET stream open")
    try:
        await stream(exchange, box, [(SESSION_HEADER, exchange.session_id.encode())] if exchange.session_id else [])
    finally:
        session.close_standing(box)


async def resume(exchange: Exchange, session: StdioSession, journal: Journal, last_event_id: str) -> None:
    """`GET` + `Last-Event-ID`: replay what the stream sent after that event, then go on with it live (a
    POST stream whose answers are still due, or the GET stream); a POST stream already answered ends."""
    parsed = EVENT_ID.fullmatch(last_event_id.strip())
    last = journal.last(int(parsed[1])) if parsed else None
    if parsed is None or last is None or int(parsed[2]) > last:
        raise GatewayError(
            400,
            -32600,
            f"Last-Event-ID {last_event_id!r} is not an event id of this session that is still kept (the"
            f" replay buffer holds the last {journal.max_events} events or {journal.max_bytes // 1024} KiB)",
        )
    stream, seq = int(parsed[1]), int(parsed[2])
    replay = journal.after(stream, seq)
    if last > seq and (not replay or replay[0][0] != seq + 1):
        raise GatewayError(
            400,
            -32600,
            f"the events after {last_event_id} are no longer kept (the replay buffer holds the last"
            f" {journal.max_events} events or {journal.max_bytes // 1024} KiB of a session)",
        )
    box = journal.detached.pop(stream, None)  # checked first: a refused resume leaves it resumable
    standing: Outbox | None = None
    if box is not None:
        box.reattach()
        if not box.finished:
            session.attach(box)
    elif stream in journal.standing:
        standing = session.open_standing()
        if standing is None:
            raise GatewayError(409, -32600, "this session already has a GET stream open")
    live = box or standing
    keepalive = exchange.snapshot.gateway.keepalive_interval
    idle = request_timeout(session.server, loads)

    async def events() -> AsyncIterator[bytes]:
        for n, data in replay:
            yield sse_event(data, f"{stream}-{n}")
        if live is not None:
            async for event in live.events(keepalive, idle):
                yield event

    await start_event_stream(
        exchange.send, [(SESSION_HEADER, exchange.session_id.encode())] if exchange.session_id else []
    )
    completed = False
    try:
        completed = await stream_body(exchange.receive, exchange.send, events(), exchange.max_stream_duration)
    finally:
        if box is not None:
            session.release(box, completed=completed)
        if standing is not None:
            session.close_standing(standing)


def request_timeout(server: StdioServer | HttpServer, original_id: Callable[[str], Any]) -> Idle:
    """`timeouts.idle_stream` for relayed requests: a request whose server sends nothing for it (no answer, no
    progress, nothing on its stream) for that long gets -32015 in place of its answer, as a silent passthrough
    stream does, rather than waiting for ever (a server that lost it, or stalled half-way through writing a
    line). `original_id` turns a waiting id key into the id the client sent."""
    seconds = server.timeouts.idle_stream

    def error(key: str) -> bytes:
        timeout = GatewayError.timeout(server.id, f"answer to request {key}", seconds, "timeouts.idle_stream")
        return error_response(original_id(key), timeout.code, timeout.message)

    return Idle(seconds, error)


async def answer_post(
    exchange: Exchange, already: list[bytes], box: Outbox, headers: Headers, *, batch: bool, idle: Idle | None = None
) -> bool:
    """Answer a POST from `box`: an event stream when the client takes one, else JSON. True if complete.
    `idle`: how long its requests may wait with nothing arriving for them (`request_timeout`)."""
    accept = exchange.header(b"accept") or ""
    if accepts(accept, "text/event-stream"):
        return await stream(exchange, box, headers, already, idle)
    if not accepts(accept, "application/json"):
        raise GatewayError(406, -32600, "the client must accept application/json or text/event-stream")
    responses = list(already)
    for item in await box.collect(idle):
        parsed = parse_message(item)
        if parsed is not None and parsed.is_response:
            responses.append(item)
    body = b"[" + b",".join(responses) + b"]" if batch else (responses[0] if responses else b"")
    await respond(exchange.send, 200, body, headers)
    return True


async def stream(
    exchange: Exchange, box: Outbox, headers: Headers, already: list[bytes] | None = None, idle: Idle | None = None
) -> bool:
    """Relay `box` as Server-Sent Events until it closes or the client goes away. True if it closed."""
    await start_event_stream(exchange.send, headers)

    async def events() -> AsyncIterator[bytes]:
        for item in already or []:
            yield sse_event(item)
        async for event in box.events(exchange.snapshot.gateway.keepalive_interval, idle):
            yield event

    return await stream_body(exchange.receive, exchange.send, events(), exchange.max_stream_duration)
