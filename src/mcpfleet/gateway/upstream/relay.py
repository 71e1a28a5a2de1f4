"""Relayed servers: the gateway is the MCP server transport for a stdio process or a bridged connection.

Session mode (the 2025 revisions): one client session leases one process, which sees exactly one
`initialize` and keeps its own state. Messages go to the process untouched, one per line; what the process
writes is routed back by id: responses to the POST that carried the request, progress to the stream of the
request whose token it names, and server requests and other notifications to the single open POST stream,
else the GET stream, else a bounded backlog that the next GET stream receives.

2026-07-28 traffic is stateless, so it shares the server's processes (one, more while they are busy), with
request ids and progress tokens remapped (`protocol.IdMap`), a client disconnect passed on as
`notifications/cancelled`, and a retry carrying `requestState` sent back to the process that issued it
(pinning.py).

Processes are recycled: past `pool.max_lifetime`, or after `pool.max_sessions_per_process` sessions, a
process takes no new work and stops once nothing is in flight (its replacement starts first).

When a process exits, every request still waiting on it gets a JSON-RPC error at once, never a hang.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc

from mcpfleet.errors import GatewayError, ServerStartError
from mcpfleet.framing import MessageTooLarge
from mcpfleet.gateway.asgi import Headers, respond, start_event_stream, stream_body
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.pinning import unwrap, wrap
from mcpfleet.gateway.protocol import (
    LAST_EVENT_ID,
    SESSION_HEADER,
    TOO_LARGE,
    IdMap,
    Message,
    accepts,
    dumps,
    error_response,
    id_key,
    message_kind,
    parse_body,
    parse_message,
    sse_event,
    too_large,
)
from mcpfleet.gateway.session import SessionTable
from mcpfleet.gateway.upstream.admission import FULL, Admission, default_max_starting
from mcpfleet.gateway.upstream.backend import Backend, ProcessBackend
from mcpfleet.registry.model import HttpServer, StdioServer

log = logging.getLogger("mcpfleet.gateway.relay")

BACKLOG = 256
CRASH_WINDOW = 5.0  # seconds: an exit this soon after the start counts towards a crash loop
CRASH_LIMIT = 3
CRASH_BACKOFF = 2.0
CRASH_BACKOFF_MAX = 60.0
KEEPALIVE = b": keepalive\n\n"
EXITED = -32014
UNREACHABLE = -32012
JOURNAL_EVENTS = 1000  # per session, for Last-Event-ID resumption
JOURNAL_BYTES = 1 << 20
DETACHED_STREAMS = 64  # per session: POST streams kept for a resume after their client went away
DETACHED_GRACE = 120.0  # seconds (at most gateway.session_idle_timeout) a detached stream keeps its session busy
STANDING_KEPT = 16  # per session: GET streams whose ids can still be resumed
EVENT_ID = re.compile(r"(\d+)-(\d+)", re.ASCII)
SPREAD_AT = 32  # 2026-07-28 requests in flight on every process before another one starts
SERIALS = itertools.count(1)  # shared processes, numbered across the gateway process (reloads included)
WORN_SOON = 0.9  # a warm process past this share of pool.max_lifetime is not leased (it is replaced soon)
STATE_GRACE = 120.0  # seconds a process due to stop still waits for retries of the input it asked for
RECLAIM_IDLE = 0.5  # seconds with nothing in flight before a session may be ended for a waiter (not between calls)
RECLAIM_POLL = 0.25  # seconds between looks for an idle process to free, while a caller waits for a slot
START_GUESS = 1.0  # seconds a start-up takes, until one is measured
MODERN, SHARED = "modern", "shared"  # the two lists of shared processes: 2026-07-28 traffic, pool mode `shared`


class Journal:
    """What the streams of one session sent lately, so a client that lost a stream can resume it with
    `GET` + `Last-Event-ID` (Streamable HTTP resumability). Event ids are `<stream>-<n>`: the stream's
    number in the session and the message's position in it. Bounded: the last JOURNAL_EVENTS events or
    JOURNAL_BYTES bytes, whichever is less."""

    def __init__(self, max_events: int = JOURNAL_EVENTS, max_bytes: int = JOURNAL_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._bytes = 0
        self._streams = itertools.count(1)
        self.standing: collections.deque[int] = collections.deque(maxlen=STANDING_KEPT)  # recent GET streams
        self.detached: dict[int, Outbox] = {}  # POST streams whose client went away before their answers
        self.grace = DETACHED_GRACE

    def new_stream(self) -> int:
        return next(self._streams)

    def last(self, stream: int) -> int | None:
        """The number of the last event of `stream` still known, or None if nothing of it is."""
        if (box := self.detached.get(stream)) is not None:
            return box.delivered
        return max((n for s, n, _ in self._events if s == stream), default=0 if stream in self.standing else None)

    def record(self, stream: int, seq: int, data: bytes) -> None:
        self._events.append((stream, seq, data))
        self._bytes += len(data)
        while len(self._events) > self.max_events or self._bytes > self.max_bytes:
            self._bytes -= len(self._events.popleft()[2])

    def after(self, stream: int, seq: int) -> list[tuple[int, bytes]]:
        return [(n, data) for s, n, data in self._events if s == stream and n > seq]

    def keep(self, box: Outbox) -> list[Outbox]:
        """Keep a detached stream for a resume; the oldest ones beyond DETACHED_STREAMS go (returned)."""
        box.detached_at = time.monotonic()
        self.detached[box.stream] = box
        evicted = []
        while len(self.detached) > DETACHED_STREAMS:
            evicted.append(self.detached.pop(next(iter(self.detached))))
        return evicted

    def recently_detached(self, now: float) -> bool:
        """A stream detached less than `grace` seconds ago: its client may be about to resume it."""
        return any(now - box.detached_at < self.grace for box in self.detached.values())


class Outbox:
    """Messages bound for one client stream: a POST's response stream or the session's GET stream."""

    def __init__(
        self,
        waiting: set[str] | None = None,
        transform: Callable[[bytes], bytes] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.waiting = waiting  # ids whose responses end this stream; None for the standing GET stream
        self.transform = transform  # applied to the responses that end it
        self.journal = journal  # when set, events carry ids and are kept for resumption
        self.stream = journal.new_stream() if journal is not None else 0
        self.delivered = 0  # messages delivered to this stream so far
        self.taken = 0  # messages taken from the channel so far
        self.detached = False
        self.detached_at = 0.0
        self.finished = False
        self.prime = False  # open with a priming event (an id, no data): the client may resume from it
        self._send, self.receive = anyio.create_memory_object_stream[bytes](math.inf)

    def event_id(self, seq: int) -> str | None:
        return f"{self.stream}-{seq}" if self.journal is not None else None

    async def events(self, keepalive: float) -> AsyncIterator[bytes]:
        """The messages as Server-Sent Events, with a `: keepalive` comment after `keepalive` seconds of
        silence, so proxies and clients do not take a quiet stream for a dead one."""
        if self.prime:
            self.prime = False
            yield f"id: {self.stream}-0\ndata: \n\n".encode()
        while True:
            item: bytes | None = None
            with anyio.move_on_after(keepalive):
                try:
                    item = await self.receive.receive()
                except anyio.EndOfStream:
                    return
            if item is None:
                yield KEEPALIVE
            else:
                self.taken += 1
                yield sse_event(item, self.event_id(self.taken))

    def deliver(self, message: bytes, answered: str | None = None) -> None:
        if answered is not None and self.transform is not None:
            message = self.transform(message)
        self.delivered += 1
        if self.journal is not None:
            self.journal.record(self.stream, self.delivered, message)
        if not self.detached:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._send.send_nowait(message)
        if answered is not None and self.waiting is not None:
            self.waiting.discard(answered)
            if not self.waiting:
                self.close()

    def close(self) -> None:
        self.finished = True
        self._send.close()

    def detach(self) -> None:
        """Its client went away: keep recording what arrives (the journal), for a resume."""
        self.detached = True
        self.prime = False
        self._send.close()
        self.receive.close()  # what it held unread is in the journal

    def reattach(self) -> None:
        """A client resumed it: a fresh channel for what arrives from now on (the journal has the rest)."""
        self.detached = False
        self.taken = self.delivered
        self._send, self.receive = anyio.create_memory_object_stream[bytes](math.inf)
        if self.finished:
            self._send.close()


class _Link:
    """What session and shared modes have in common: one backend and the task that reads it."""

    def __init__(self, server: StdioServer | HttpServer, backend: Backend) -> None:
        self.server = server
        self.backend = backend
        self.closed = anyio.Event()
        self.exit_detail = ""
        self.born = time.monotonic()
        self.served = 0  # client sessions given this process over its life (pool mode `shared`)
        self._running = False
        self.started = False
        self.stopping = False
        self._stop = anyio.CancelScope()
        # Called once, at the first message the backend writes: its start-up is over (admission.py).
        self.on_first_message: Callable[[], None] | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self.backend:
                self._running = True
                self.started = True
                task_status.started()
                with (
                    self._stop,
                    contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError),
                ):
                    while True:
                        try:
                            line = await self.backend.receive()
                        except MessageTooLarge as exc:  # skipped; the request it answers fails, nothing else
                            stand_in = self._in_place_of(exc)
                            if stand_in is None:
                                continue
                            line = stand_in
                        if self.on_first_message is not None:
                            self.on_first_message()
                            self.on_first_message = None
                        message = parse_message(line)
                        if message is None:
                            log.warning("server %r sent something that is not JSON-RPC; skipped", self.server.id)
                            continue
                        if (reply := self.dispatch(message)) is not None:
                            await self.backend.send(reply)
                self.exit_detail = await self.backend.settle()
        except ServerStartError as exc:
            self.exit_detail = exc.reason
            raise
        except Exception as exc:  # the gateway's task group must not die with one backend
            if not self._running:
                raise
            self.exit_detail = f"{type(exc).__name__}: {exc}"
            log.warning("server %r: backend failed: %s", self.server.id, self.exit_detail)
        finally:
            self._running = False
            self.exit_detail = self.exit_detail or "stopped"
            self.finish()
            self.closed.set()

    @property
    def bridged(self) -> bool:
        """An HTTP server reached through a connection of the gateway's, not a process it runs."""
        return not isinstance(self.backend, ProcessBackend)

    def ended(self, detail: str, when: str = "") -> GatewayError:
        """The error for requests that cannot be answered because this link ended: a process exited (-32014),
        or a bridged connection ended (-32012: a transport event, never counted as a crash)."""
        if self.bridged:
            return GatewayError(502, UNREACHABLE, f"the connection to server {self.server.id!r} ended{when} ({detail})")
        return GatewayError(502, EXITED, f"server {self.server.id!r} exited{when} ({detail})")

    def _in_place_of(self, exc: MessageTooLarge) -> bytes | None:
        """The error answer that stands for a message the server wrote over `gateway.max_message_bytes`, to
        the request whose id the message names (its first or last bytes hold it); None when none is found."""
        kind, request_id = message_kind(exc.head, exc.tail)
        text = too_large(self.server.id, exc.size, exc.limit)
        if kind != "answer":  # a notification or a request to the client: nobody waits for it
            log.warning("%s; not an answer to a request: skipped", text)
            return None
        log.warning("%s; request %r fails", text, request_id)
        return error_response(request_id, TOO_LARGE, text)

    last_used: float

    @property
    def idle(self) -> bool:
        """Nothing in flight and no stream open: stopping it now loses nothing."""
        raise NotImplementedError

    def dispatch(self, message: Message) -> bytes | None:
        """Route one message from the backend; return a message to send back to it, if any."""
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        if not self._running or self.closed.is_set():
            raise self.ended(self.exit_detail or "not running")
        try:
            await self.backend.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # The process is going away: wait (bounded) for its exit code and last stderr line to be known.
            with anyio.move_on_after(self.server.timeouts.shutdown + 1):
                await self.closed.wait()
            raise self.ended(self.exit_detail or "its input is closed") from None

    async def aclose(self) -> None:
        if not self.closed.is_set():
            self.stopping = True  # asked to stop: not a crash
        self._stop.cancel()
        with anyio.move_on_after(self.server.timeouts.shutdown * 3 + 1):
            await self.closed.wait()


class StdioSession(_Link):
    """Session mode: one client session, one backend (a process, or a bridged connection)."""

    def __init__(self, server: StdioServer | HttpServer, backend: Backend, owner: RelayUpstream) -> None:
        super().__init__(server, backend)
        self.owner = owner
        self.server_id = server.id
        self.last_used = time.monotonic()
        self._pending: dict[str, Outbox] = {}
        self._progress: dict[str, Outbox] = {}
        self._posts: list[Outbox] = []
        self._standing: Outbox | None = None
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=BACKLOG)
        self.initializing = False
        self.journal: Journal | None = None  # Streamable HTTP sessions: event ids and resumption
        self.primes = False  # negotiated 2025-11-25 or later: streams open with a priming event

    def resumable(self, version: Any, grace: float = DETACHED_GRACE) -> None:
        """The session was initialized over Streamable HTTP at `version`: give its streams event ids. A
        stream whose client went away keeps the session busy for `grace` seconds, for a resume."""
        self.journal = Journal()
        self.journal.grace = grace
        self.primes = isinstance(version, str) and version >= "2025-11-25"

    def _outbox(self, waiting: set[str] | None) -> Outbox:
        box = Outbox(waiting, journal=self.journal)
        box.prime = self.primes
        return box

    def dispatch(self, message: Message) -> None:
        if message.is_response:
            box = self._pending.pop(message.id_key, None)
            if box is not None:
                box.deliver(message.raw, answered=message.id_key)
                if box.finished and box.detached:
                    self._forget(box)  # answered while its client was away: the journal has it
            return
        if message.method == "notifications/progress":
            token = (message.data.get("params") or {}).get("progressToken")
            box = self._progress.get(id_key(token))
            if box is not None:
                box.deliver(message.raw)
                return
        self._unsolicited(message.raw)

    def _unsolicited(self, raw: bytes) -> None:
        open_posts = [box for box in self._posts if box.waiting]
        if len(open_posts) == 1:
            open_posts[0].deliver(raw)
        elif self._standing is not None:
            self._standing.deliver(raw)
        else:
            self._backlog.append(raw)

    def finish(self) -> None:
        ended = self.ended(self.exit_detail)
        for key, box in list(self._pending.items()):
            box.deliver(error_response(json.loads(key), ended.code, ended.message), answered=key)
        self._pending.clear()
        if self._standing is not None:
            self._standing.close()

    async def post(self, messages: list[Message], *, streamed: bool = True) -> Outbox | None:
        """Write messages to the process; the outbox that will carry the answers, or None if none are due.
        `streamed`: the answers go out as an event stream (only those get event ids and the journal)."""
        requests = [m for m in messages if m.is_request]
        box = None
        if requests:
            box = self._outbox({m.id_key for m in requests}) if streamed else Outbox({m.id_key for m in requests})
            for m in requests:
                self._pending[m.id_key] = box
                if (token := m.progress_token()) is not None:
                    self._progress[id_key(token)] = box
            self._posts.append(box)
        for m in messages:
            await self.send(m.raw)
        return box

    def release(self, box: Outbox, *, completed: bool = True) -> None:
        """The client stream of `box` ended. If it ended early and can be resumed, later answers are kept
        for a `Last-Event-ID` resume (a disconnect is not a cancellation before 2026-07-28); else they have
        nowhere to go."""
        self.last_used = time.monotonic()
        with contextlib.suppress(ValueError):
            self._posts.remove(box)
        if not completed and box.journal is not None and box.waiting and not box.finished:
            box.detach()
            for evicted in box.journal.keep(box):
                self._forget(evicted)
            return
        self._forget(box)

    def _forget(self, box: Outbox) -> None:
        """Later messages for `box` have nowhere to go."""
        for key in [k for k, b in self._pending.items() if b is box]:
            del self._pending[key]
        for key in [k for k, b in self._progress.items() if b is box]:
            del self._progress[key]
        box.close()

    async def bridge(self, messages: list[Message], box: Outbox) -> None:
        """For message-stream clients (legacy SSE, WebSocket): everything for this session goes to `box`."""
        for m in messages:
            if m.is_request:
                self._pending[m.id_key] = box
                if (token := m.progress_token()) is not None:
                    self._progress[id_key(token)] = box
        for m in messages:
            await self.send(m.raw)

    @property
    def idle(self) -> bool:
        """Nothing in flight and no stream open: ending it loses no message."""
        return self.quiet and self._standing is None

    @property
    def quiet(self) -> bool:
        """Nothing in flight (a GET stream may be open) and no stream lately detached whose client may come
        back for its answers: ending it now fails no request. Calls whose client left more than
        DETACHED_GRACE ago do not count (else an abandoned call would hold its process for good)."""
        if self.initializing or self._posts:
            return False
        if self.journal is None:
            return not self._pending
        now = time.monotonic()
        return not self.journal.recently_detached(now) and all(box.detached for box in self._pending.values())

    def open_standing(self) -> Outbox | None:
        if self._standing is not None:
            return None
        box = self._outbox(None)
        if self.journal is not None:
            self.journal.standing.append(box.stream)
        while self._backlog:
            box.deliver(self._backlog.popleft())
        if self.closed.is_set():
            box.close()
        self._standing = box
        return box

    @property
    def standing(self) -> Outbox | None:
        return self._standing

    def attach(self, box: Outbox) -> None:
        """A resumed POST stream takes messages again: its answers, and, with no GET stream open, what the
        server sent on its own meanwhile (a request for the user, say), which the call may be waiting on."""
        self._posts.append(box)
        if self._standing is None:
            while self._backlog:
                box.deliver(self._backlog.popleft())

    def close_standing(self, box: Outbox) -> None:
        if self._standing is box:
            self._standing = None
        box.close()


class SharedProcess(_Link):
    """Many clients over one process, request ids and progress tokens remapped: 2026-07-28 traffic, and
    (pool mode `shared`) 2025-era sessions of servers declared stateless.

    In shared mode the gateway initializes the process once itself and answers each client's `initialize`
    with that result; notifications the process sends on its own (list_changed, log messages) go to every
    session on it. A server-to-client request cannot name its client here, so it is refused.
    """

    def __init__(self, server: StdioServer | HttpServer, backend: Backend, serial: int = 0) -> None:
        super().__init__(server, backend)
        self.serial = serial  # names it in the requestState records of its answers
        self.asked_at = -math.inf  # when it last answered `input_required` (a retry may follow)
        self.ids = IdMap()
        self.last_used = time.monotonic()
        self.sessions: set[SharedSession] = set()
        self.assigned = 0  # sessions given this process, including those still initializing
        self.init_result: Any = None
        self.init_lock = anyio.Lock()

    @property
    def idle(self) -> bool:
        # `assigned` counts sessions still initializing, which are not in `sessions` yet.
        return len(self.ids) == 0 and not self.sessions and self.assigned == 0

    def dispatch(self, message: Message) -> bytes | None:
        routed = self.ids.incoming(message)
        if routed is not None:
            box, data = routed
            box.deliver(data, answered=message.id_key if message.is_response else None)
            return None
        if message.is_request:
            return error_response(
                message.data.get("id"),
                -32601,
                "a shared process cannot send requests to its clients (pool mode 'shared' is for stateless servers)",
            )
        if message.is_notification:
            for session in list(self.sessions):
                session.notify(message.raw)
        return None

    def finish(self) -> None:
        ended = self.ended(self.exit_detail)
        for box, original_id in self.ids.drain():
            box.deliver(error_response(original_id, ended.code, ended.message), answered=None)
            box.close()
        for session in list(self.sessions):
            session.end()

    async def ensure_initialized(self, message: Message, startup: float) -> Any:
        """Initialize the process once, with the first client's `initialize`; the result, for every client."""
        async with self.init_lock:
            if self.init_result is not None:
                return self.init_result
            box = Outbox(set())
            upstream_id, data = self.ids.outgoing(message, box)
            assert box.waiting is not None
            box.waiting.add(id_key(upstream_id))
            await self.send(data)
            answer = None
            with anyio.move_on_after(startup):
                answer = await _next(box)
            self.ids.forget(box)
            parsed = parse_message(answer) if answer is not None else None
            if parsed is None or "result" not in parsed.data:
                reason = parsed.data.get("error", {}).get("message") if parsed is not None else "no answer"
                raise GatewayError(502, EXITED, f"server {self.server.id!r} did not initialize: {reason}")
            await self.send(dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            self.init_result = parsed.data["result"]
            return self.init_result


class SharedSession:
    """A 2025-era client session on a `SharedProcess` (pool mode `shared`)."""

    def __init__(self, process: SharedProcess, owner: RelayUpstream) -> None:
        self.process = process
        self.owner = owner
        self.server_id = process.server.id
        self.last_used = time.monotonic()
        self.in_flight = 0
        self.upstream_ids: dict[str, int] = {}  # the client's request id -> the process's, for cancellation
        self.standing: Outbox | None = None
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=BACKLOG)
        self.closed = False

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.standing is None

    def notify(self, raw: bytes) -> None:
        if self.standing is not None:
            self.standing.deliver(raw)
        else:
            self._backlog.append(raw)

    def open_standing(self) -> Outbox | None:
        if self.standing is not None:
            return None
        box = Outbox()
        while self._backlog:
            box.deliver(self._backlog.popleft())
        self.standing = box
        return box

    def close_standing(self, box: Outbox) -> None:
        if self.standing is box:
            self.standing = None
        box.close()

    def end(self) -> None:
        if not self.closed:
            self.process.assigned -= 1
            self.process.last_used = time.monotonic()
        self.closed = True
        if self.standing is not None:
            self.standing.close()
        self.process.sessions.discard(self)

    async def aclose(self) -> None:
        self.end()
        self.owner.session_ended(self)


class _PendingStart:
    """A process start under way into one list of shared processes, which several callers may wait for."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: GatewayError | None = None


class RelayUpstream:
    """The relayed connections of one server: stdio processes, or bridged HTTP connections.

    Their tasks live in the gateway's task group, not in a request. `new_backend` opens one connection;
    `limit` caps how many run at once (`pool.max` for processes).
    """

    def __init__(
        self,
        server: StdioServer | HttpServer,
        new_backend: Callable[[], Backend],
        task_group: anyio.abc.TaskGroup,
        sessions: SessionTable,
        *,
        limit: int,
        what: str = "processes",
        counts_exits: bool = True,
    ) -> None:
        self.server = server
        # Bridged HTTP connections end through transport or protocol errors, not crashes: never counted.
        self._counts_exits = counts_exits
        self._new_backend = new_backend
        self._tg = task_group
        self._sessions = sessions
        self._limit = limit
        self._what = what
        starting = (server.pool.max_starting or default_max_starting()) if what == "processes" else limit
        self.admission = Admission(limit, starting)
        self.start_seconds = START_GUESS  # a start-up's length, measured (moving average): paces warm starts
        # Starts into each list of shared processes: at most one under way per list, which every caller that
        # needs a process of that list and finds none joins (a burst starts one process, not one each).
        self._pending: dict[str, _PendingStart] = {}
        self._reclaiming = 0  # processes being stopped to free a slot for a waiter
        self._joined = 0  # callers waiting for a start under way into a list of shared processes
        self._modern: list[SharedProcess] = []  # 2026-07-28 traffic
        self._pool: list[SharedProcess] = []  # pool mode `shared`: 2025-era sessions of a stateless server
        self.live: set[_Link] = set()
        self.started_total = 0
        self.crashed_total = 0  # exits the gateway did not ask for
        self.retired = False
        # Warm processes: started, not yet leased (no initialize seen). Only for stdio servers (`warm` > 0).
        self._warm: list[StdioSession] = []
        self._warm_target = 0
        self._refilling = False
        # Crash loops: processes that die on their own soon after starting, several times in a row.
        self.quick_exits = 0
        self.crash_loop_until = 0.0
        self.last_exit = ""

    @property
    def waiting(self) -> int:
        """Callers waiting for a process (a slot, a start-up turn, or a start under way), now."""
        return self.admission.waiting + self._joined

    async def aclose(self) -> None:
        self._warm_target = 0
        self._warm.clear()
        async with anyio.create_task_group() as tg:
            for process in list(self.live):
                tg.start_soon(process.aclose)

    def _note_exit(self, process: _Link, lifetime: float) -> None:
        """Count exits the gateway did not ask for within CRASH_WINDOW of the start; CRASH_LIMIT of them in
        a row start a crash loop: new sessions get 503 at once for a backoff that doubles (CRASH_BACKOFF up
        to CRASH_BACKOFF_MAX) instead of each waiting for a process that will die."""
        if not self._counts_exits:
            return
        if not process.stopping:
            self.crashed_total += 1
        if process.stopping or lifetime >= CRASH_WINDOW:
            if lifetime >= CRASH_WINDOW:
                self.quick_exits = 0
            return
        self.quick_exits += 1
        self.last_exit = process.exit_detail or "failed to start"
        if self.quick_exits >= CRASH_LIMIT:
            backoff = min(CRASH_BACKOFF_MAX, CRASH_BACKOFF * 2 ** (self.quick_exits - CRASH_LIMIT))
            self.crash_loop_until = time.monotonic() + backoff
            log.warning(
                "server %r is in a crash loop (%d quick exits, last: %s); new sessions fail for %g s",
                self.server.id,
                self.quick_exits,
                self.last_exit,
                backoff,
            )

    # --- warm processes ---------------------------------------------------------------------------------

    @property
    def warm_count(self) -> int:
        if self.server.pool.mode == "shared":
            return sum(1 for p in self._pool if not p.closed.is_set() and p.assigned == 0)
        return sum(1 for session in self._warm if not session.closed.is_set())

    def _short_of_warm(self) -> bool:
        if self.server.pool.mode == "shared":
            return sum(1 for p in self._pool if not p.closed.is_set()) < self._warm_target
        return len(self._warm) < self._warm_target

    def keep_warm(self, count: int) -> None:
        """Keep `count` processes started ahead of need (`pool.min`), so a new session has no cold start."""
        self._warm_target = count
        self._refill_soon()

    def _take_warm(self) -> StdioSession | None:
        """The oldest warm process, unless it is about to be worn out (then the session would end at once)."""
        lifetime = self.server.pool.max_lifetime
        now = time.monotonic()
        for session in list(self._warm):
            if session.closed.is_set() or session.stopping:
                self._warm.remove(session)
            elif lifetime is None or now - session.born < lifetime * WORN_SOON:
                self._warm.remove(session)
                return session
        return None

    def _refill_soon(self) -> None:
        if not self._refilling and not self.retired and self._short_of_warm():
            self._refilling = True
            self._tg.start_soon(self._refill)

    async def _refill(self) -> None:
        """Start warm processes while no session waits and a start-up turn is free: they never take a slot
        or a turn a session could use (`_launch` holds each one's turn for a measured start-up)."""
        try:
            while not self.retired and self._short_of_warm():
                shared = self.server.pool.mode == "shared"
                process: _Link = (
                    SharedProcess(self.server, self._new_backend(), next(SERIALS))
                    if shared
                    else StdioSession(self.server, self._new_backend(), self)
                )
                if self.waiting or not self.admission.try_admit(process):
                    return  # the next lease or maintenance pass tries again
                try:
                    await self._launch(process, measured=False)
                except GatewayError as exc:
                    log.warning("server %r: could not start a warm process: %s", self.server.id, exc.message)
                    return
                if self.retired:  # retired while it started: nobody would stop it
                    await process.aclose()
                    return
                if isinstance(process, SharedProcess):
                    self._pool.append(process)  # initialized by its first session's initialize
                else:
                    assert isinstance(process, StdioSession)
                    self._warm.append(process)
        finally:
            self._refilling = False

    def worn(self, process: _Link, now: float) -> bool:
        """Past `pool.max_lifetime`, or given `pool.max_sessions_per_process` sessions: due to be recycled."""
        pool = self.server.pool
        return (pool.max_lifetime is not None and now - process.born >= pool.max_lifetime) or (
            pool.max_sessions_per_process is not None and process.served >= pool.max_sessions_per_process
        )

    async def expire_idle(self, now: float) -> None:
        """Once a second: keep `pool.min` warm processes (replace dead and worn ones; stop surplus ones idle
        past `pool.idle_timeout`); end leased sessions past `pool.max_lifetime` at their first moment with
        nothing in flight; stop worn shared processes once idle, and extra 2026-07-28 processes idle past
        `pool.idle_timeout` (either only STATE_GRACE after it last asked for input: a retry may follow)."""
        idle_timeout = self.server.pool.idle_timeout
        # Choose every victim first, with no await in between (the lists change while a process stops),
        # take it out of the lists and mark it stopping, so nothing picks it; then stop them together.
        victims: list[_Link] = []
        self._warm[:] = [s for s in self._warm if not s.closed.is_set()]
        surplus = len(self._warm) - self._warm_target
        for session in list(self._warm):
            if self.worn(session, now) or (surplus > 0 and now - session.last_used > idle_timeout):
                self._warm.remove(session)
                surplus -= 1
                victims.append(session)
        for link in self.live:
            if not isinstance(link, StdioSession) or not link.started or link in self._warm or link in victims:
                continue
            if link.quiet and self.worn(link, now):  # leased: end the session between calls
                log.info("server %r: ending a session whose process reached pool.max_lifetime", self.server.id)
                self._sessions.drop_session(link)
                victims.append(link)

        def settled(process: SharedProcess) -> bool:  # nothing in flight, and no retry of its input due
            return process.idle and now - process.asked_at > STATE_GRACE

        self._modern[:] = [p for p in self._modern if not p.closed.is_set()]
        for index, process in enumerate(self._modern):  # the first (oldest) stays unless worn
            expired = index > 0 and now - process.last_used > idle_timeout
            if settled(process) and (self.worn(process, now) or expired):
                victims.append(process)
        self._pool[:] = [p for p in self._pool if not p.closed.is_set()]
        spare = sum(1 for p in self._pool if p.assigned == 0) - self._warm_target
        for process in self._pool:
            expired = spare > 0 and now - process.last_used > idle_timeout
            if settled(process) and (self.worn(process, now) or expired):
                victims.append(process)
                spare -= 1
        self._modern[:] = [p for p in self._modern if p not in victims]
        self._pool[:] = [p for p in self._pool if p not in victims]
        for victim in victims:
            victim.stopping = True
        self._refill_soon()
        if victims:
            async with anyio.create_task_group() as tg:
                for victim in victims:
                    tg.start_soon(victim.aclose)

    def deadline(self) -> float:
        """Until when a caller arriving now may wait for a process (`pool.acquire_timeout`)."""
        return time.monotonic() + self.server.pool.acquire_timeout

    async def _start(self, process: _Link, deadline: float, *, measured: bool = False) -> None:
        """Start `process` once it has a slot and a start-up turn (admission.py), or raise 503 by `deadline`.
        `measured`: an `initialize` is sent to it at once (see `_launch`)."""
        if (wait := self.crash_loop_until - time.monotonic()) > 0:
            raise GatewayError(
                503,
                -32017,
                f"server {self.server.id!r} keeps exiting right after it starts ({self.quick_exits} times in a row;"
                f" last: {self.last_exit}); new sessions fail fast for {wait:.0f} more s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        try:
            await self._admit(process, deadline)
            await self._launch(process, measured=measured)
        except BaseException:
            if process not in self.live:  # not under supervision: nothing else gives its slot and turn back
                self.admission.release(process)
            raise

    async def _admit(self, process: _Link, deadline: float) -> None:
        if self.admission.free:
            await self.admission.admit(process, deadline, self._refusal)
        else:
            # Capacity is what is in flight: while this caller waits, a session that falls idle is freed for it.
            refused: GatewayError | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reclaim_while_waiting)
                try:
                    await self.admission.admit(process, deadline, self._refusal)
                except GatewayError as exc:  # raised outside the group, not wrapped in an exception group
                    refused = exc
                finally:
                    tg.cancel_scope.cancel()
            if refused is not None:
                raise refused

    async def _reclaim_while_waiting(self) -> None:
        while True:
            if self.admission.slot_waiters and self.admission.slots.available_tokens < 1:
                await self._reclaim_idle()
            await anyio.sleep(RECLAIM_POLL)

    async def _launch(self, process: _Link, *, measured: bool = False) -> None:
        """Run an admitted process under supervision; return once it is spawned. Its start-up turn ends at its
        first message, and when that says nothing of its start (`measured` False), at the latest after the
        measured length of a start-up: a warm process writes nothing until it is leased, a bridged session's
        first message waits for its client, a 2026-07-28 process's for the first tool call it runs.
        `measured`: the first message answers an `initialize` sent at once, so the time to it is a start-up's
        length, which updates `start_seconds` (a moving average)."""
        launched = time.monotonic()

        def started() -> None:
            self.admission.started(process)
            if measured and self._what == "processes":
                self.start_seconds += (time.monotonic() - launched - self.start_seconds) * 0.3

        process.on_first_message = started
        try:
            await self._tg.start(self._supervise, process)  # _supervise gives the slot back, whatever happens
        except ServerStartError as exc:
            raise GatewayError.start_failed(exc) from None
        if not measured:
            self._tg.start_soon(self._start_up_over, process, min(self.start_seconds, self.server.timeouts.startup))

    async def _start_up_over(self, process: _Link, after: float) -> None:
        with anyio.move_on_after(after):
            await process.closed.wait()
        self.admission.started(process)  # a no-op when its first message came first

    def _refusal(self, what: str) -> GatewayError:
        """The 503 for a caller whose `pool.acquire_timeout` passed: what was really full, and the setting."""
        waited = self.server.pool.acquire_timeout
        if self._what != "processes":
            detail = f"all {self._limit} {self._what} are in use"
        elif what == "start":
            detail = (
                f"{self.admission.starting} process start-ups were under way and {max(0, self.waiting - 1)} other"
                " requests waiting (settings: pool.acquire_timeout, pool.max_starting)"
            )
        else:
            sessions = sum(1 for p in self.live if isinstance(p, StdioSession) and p not in self._warm)
            in_flight = sum(len(p.ids) for p in self._modern)
            detail = (
                f"all {self._limit} processes are in use: {sessions} by sessions,"
                f" {len(self._pool)} by shared sessions, {len(self._modern)} by 2026-07-28 requests"
                f" ({in_flight} in flight), {len(self._warm)} warm, none of them idle"
                " (settings: pool.max, pool.acquire_timeout)"
            )
        return GatewayError(
            503,
            FULL,
            f"server {self.server.id!r}: no process within {waited:g} s; {detail}",
            headers={"Retry-After": "1"},
        )

    async def _reclaim_idle(self) -> None:
        """At the process cap, free one process that has nothing in flight.

        Many clients never send DELETE; without this, their abandoned sessions would hold every process
        until they expire and new clients would wait. In order: a warm process; a shared process with no
        session and nothing in flight; the least recently used idle session (its client gets 404 and
        initializes again); a shared-mode process whose sessions have nothing in flight, its sessions moved
        to another initialized process of the pool (the server is declared stateless), else ended.
        """
        if self._reclaiming >= self.admission.slot_waiters:
            return  # as many are being freed as callers wait for a slot (a stop takes a moment to give it back)
        victim: _Link | None = None
        now = time.monotonic()
        settled = now - RECLAIM_IDLE
        if self._warm:
            victim = self._warm.pop()
        else:
            idle = [
                p
                for p in self.live
                if p.idle and not p.stopping and p.started and p.last_used < settled and not _awaits_retry(p, now)
            ]
            if idle:
                victim = min(idle, key=lambda process: process.last_used)
        if victim is None:
            quiet = [
                p
                for p in self._pool
                if not p.stopping and not p.ids and p.assigned == len(p.sessions) and not _awaits_retry(p, now)
            ]
            quiet = [p for p in quiet if all(s.in_flight == 0 and s.last_used < settled for s in p.sessions)]
            if not quiet:
                return
            victim = min(quiet, key=lambda process: (len(process.sessions), process.last_used))
            self._pool.remove(victim)
            self._move_sessions(victim)
        log.info("server %r: at %d %s, freeing an idle one", self.server.id, self._limit, self._what)
        victim.stopping = True
        if isinstance(victim, StdioSession):
            self._sessions.drop_session(victim)
        self._reclaiming += 1
        try:
            await victim.aclose()
        finally:
            self._reclaiming -= 1

    def _move_sessions(self, process: SharedProcess) -> None:
        """Give the sessions of `process` (nothing in flight) to the other initialized processes of the pool."""
        others = [p for p in self._pool if p is not process and p.init_result is not None and not p.stopping]
        for session in list(process.sessions):
            if not others:
                session.end()  # its client gets 404 and initializes again
                self.session_ended(session)
                continue
            process.sessions.discard(session)
            process.assigned -= 1
            target = min(others, key=lambda p: p.assigned)
            target.assigned += 1
            target.sessions.add(session)
            session.process = target

    async def _supervise(self, process: _Link, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self.live.add(process)
        self.started_total += 1
        born = time.monotonic()
        try:
            await process.run(task_status=task_status)
        except Exception:
            if not process.started:
                raise  # the caller of start() reports it
            log.exception("server %r: a relayed connection failed after it started", self.server.id)
        finally:
            self._note_exit(process, time.monotonic() - born)
            self.live.discard(process)
            self.admission.release(process)
            if isinstance(process, StdioSession):
                self._sessions.drop_session(process)

    # --- session mode -------------------------------------------------------------------------------------

    async def initialize(self, exchange: Exchange, message: Message) -> None:
        deadline = self.deadline()
        session = self._take_warm() or StdioSession(self.server, self._new_backend(), self)
        session.initializing = True  # not idle, so a concurrent reclaim cannot take it half-way
        if not session.started:
            try:
                await self._start(session, deadline, measured=True)
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
                while (first := await _next(box)) is not None:
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
                headers.append((SESSION_HEADER, self._sessions.issue(session).encode()))
                result = answer.data["result"]
                grace = min(DETACHED_GRACE, exchange.snapshot.gateway.session_idle_timeout)
                session.resumable(result.get("protocolVersion") if isinstance(result, dict) else None, grace)
                keep = True
            await _answer(exchange, [*before, first], box, headers, batch=False)
            session.release(box)
        finally:
            session.initializing = False
            session.last_used = time.monotonic()  # idle from now, not from its start: no reclaim before a call
            # Refill after the answer: a starting process would compete for the CPU with this handshake.
            self._refill_soon()
            if not keep:
                await session.aclose()

    async def _delete_or_stream(self, exchange: Exchange, token: str, session: StdioSession | SharedSession) -> bool:
        """DELETE ends the session; GET opens its standing stream. True when the request was one of them."""
        if exchange.method == "DELETE":
            self._sessions.drop(token)
            await session.aclose()
            await respond(exchange.send, 200, b"")
            return True
        if exchange.method == "GET":
            await self._standing_stream(exchange, session)
            return True
        return False

    async def in_session(self, exchange: Exchange, token: str, session: StdioSession) -> None:
        if await self._delete_or_stream(exchange, token, session):
            return
        messages, batch = parse_body(exchange.body)
        box = await session.post(messages, streamed=accepts(exchange.header(b"accept") or "", "text/event-stream"))
        if box is None:
            await respond(exchange.send, 202, b"")
            return
        completed = False
        try:
            completed = await _answer(exchange, [], box, [(SESSION_HEADER, token.encode())], batch=batch)
        finally:
            session.release(box, completed=completed)

    async def _standing_stream(self, exchange: Exchange, session: StdioSession | SharedSession) -> None:
        if not accepts(exchange.header(b"accept") or "", "text/event-stream"):
            raise GatewayError(406, -32600, "the GET stream needs 'Accept: text/event-stream'")
        last_event_id = exchange.header(LAST_EVENT_ID)
        if last_event_id is not None and isinstance(session, StdioSession) and session.journal is not None:
            await self._resume(exchange, session, session.journal, last_event_id)
            return
        box = session.open_standing()
        if box is None:
            raise GatewayError(409, -32600, "this session already has a GET stream open")
        try:
            await _stream(
                exchange, box, [(SESSION_HEADER, exchange.session_id.encode())] if exchange.session_id else []
            )
        finally:
            session.close_standing(box)

    async def _resume(self, exchange: Exchange, session: StdioSession, journal: Journal, last_event_id: str) -> None:
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

        async def events() -> AsyncIterator[bytes]:
            for n, data in replay:
                yield sse_event(data, f"{stream}-{n}")
            if live is not None:
                async for event in live.events(keepalive):
                    yield event

        await start_event_stream(
            exchange.send, [(SESSION_HEADER, exchange.session_id.encode())] if exchange.session_id else []
        )
        completed = False
        try:
            completed = await stream_body(exchange.receive, exchange.send, events())
        finally:
            if box is not None:
                session.release(box, completed=completed)
            if standing is not None:
                session.close_standing(standing)

    async def open_bridge(self) -> tuple[StdioSession, Outbox]:
        """A session for a message-stream client: one connection, every message on one outbox."""
        session = StdioSession(self.server, self._new_backend(), self)
        await self._start(session, self.deadline())
        box = session.open_standing()
        assert box is not None
        return session, box

    # --- shared mode (2026-07-28) -------------------------------------------------------------------------

    async def stateless(self, exchange: Exchange) -> None:
        record, body = unwrap(self._sessions.sealer, exchange.body)
        messages, batch = parse_body(body)
        if batch or len(messages) != 1:
            raise GatewayError.invalid_request("2026-07-28 requests are single JSON-RPC messages, not batches")
        message = messages[0]
        shared = await self._modern_process(record, self.deadline())
        if not message.is_request:
            # A client's `notifications/cancelled` names its own request id, which on a shared process may be
            # another client's; at 2026-07-28 the cancellation is the client closing its stream, passed on below.
            if message.method != "notifications/cancelled":
                await shared.send(message.raw)
            await respond(exchange.send, 202, b"")
            return
        where = {"s": self.server.id, "g": self._sessions.instance, "p": shared.serial}

        def pin(answer: bytes) -> bytes:
            wrapped = wrap(self._sessions.sealer, answer, where)
            if wrapped is not answer:
                shared.asked_at = time.monotonic()
            return wrapped

        box = Outbox(set(), transform=pin)
        shared.last_used = time.monotonic()
        upstream_id, data = shared.ids.outgoing(message, box)
        assert box.waiting is not None
        box.waiting.add(id_key(upstream_id))
        try:
            await shared.send(data)
            completed = await _answer(exchange, [], box, [], batch=False)
        finally:
            leftover = shared.ids.forget(box)
            box.close()
        if not completed and leftover and not shared.closed.is_set():
            # At 2026-07-28 a client that goes away cancels its request.
            with contextlib.suppress(GatewayError):
                await shared.send(shared.ids.cancel(upstream_id, "the client disconnected"))

    async def _modern_process(self, record: dict[str, Any] | None, deadline: float) -> SharedProcess:
        """The process for a 2026-07-28 request: the one that issued its `requestState` if it still runs;
        else the least busy one not due for recycling. Another process starts in the background when every
        one has SPREAD_AT requests in flight (up to `pool.max`) or is worn; the first starts on the request,
        and every request that arrives meanwhile waits for that same start (each until its own deadline)."""
        while True:
            now = time.monotonic()
            self._modern[:] = [p for p in self._modern if not p.closed.is_set()]  # in place: lists keep identity
            live = [p for p in self._modern if not p.stopping]
            if record is not None and record.get("s") == self.server.id and record.get("g") == self._sessions.instance:
                issuer = next((p for p in live if p.serial == record.get("p")), None)
                if issuer is not None:
                    return issuer  # only it can open the state (unless the server shares its key)
            if not live:
                await self._join_start(MODERN, deadline)
                continue
            fresh = [p for p in live if not self.worn(p, now)]
            best = min(fresh or live, key=lambda p: len(p.ids))
            busy = len(best.ids) >= SPREAD_AT and len(live) < self.server.pool.max
            if (busy or not fresh) and MODERN not in self._pending and self.admission.free and not self.retired:
                log.info(
                    "server %r: another process for 2026-07-28 traffic (%d running, %d in flight on the least busy)",
                    self.server.id,
                    len(live),
                    len(best.ids),
                )
                self._begin_start(MODERN, self.deadline())
            return best

    def _begin_start(self, which: str, deadline: float) -> _PendingStart:
        """Start a process into list `which` (MODERN or SHARED) in the background, unless one is under way."""
        pending = self._pending.get(which)
        if pending is None:
            pending = self._pending[which] = _PendingStart()
            self._tg.start_soon(self._start_into, which, pending, deadline)
        return pending

    async def _join_start(self, which: str, deadline: float) -> None:
        """Wait for the start under way into list `which` (begun if none is), until `deadline`; a start that
        failed because its own caller's deadline passed is begun again for a caller whose deadline has not.
        Raises the start's error, or this caller's 503."""
        while True:
            pending = self._begin_start(which, deadline)
            self._joined += 1
            try:
                with anyio.move_on_after(deadline - time.monotonic()):
                    await pending.done.wait()
            finally:
                self._joined -= 1
            if not pending.done.is_set():  # the start it waits for is itself waiting for a slot or a start-up turn
                raise self._refusal("slot" if self.admission.slots.available_tokens < 1 else "start")
            error = pending.error
            if error is None:
                return
            if error.code != FULL or time.monotonic() >= deadline:
                raise error

    async def _start_into(self, which: str, pending: _PendingStart, deadline: float) -> None:
        try:
            process = SharedProcess(self.server, self._new_backend(), next(SERIALS))
            await self._start(process, deadline)  # its first request may come late, or never: not measured
            if self.retired:  # retired while it started: nobody would stop it
                await process.aclose()
                raise GatewayError.unreachable(self.server.id, "the server was removed or changed by a reload")
            # Filed after the wait, into the list as it is now (never bind the list before an await).
            (self._modern if which == MODERN else self._pool).append(process)
        except GatewayError as exc:
            pending.error = exc
            if which == MODERN:
                log.warning("server %r: could not start a process: %s", self.server.id, exc.message)
        finally:
            if self._pending.get(which) is pending:
                del self._pending[which]
            pending.done.set()

    # --- pool mode `shared` (servers declared stateless) ----------------------------------------------------

    async def initialize_shared(self, exchange: Exchange, message: Message) -> None:
        process = await self._pick_shared(self.deadline())
        try:
            result = await process.ensure_initialized(message, self.server.timeouts.startup)
        except BaseException:
            process.assigned -= 1
            raise
        session = SharedSession(process, self)
        process.sessions.add(session)
        token = self._sessions.issue(session)
        answer = dumps({"jsonrpc": "2.0", "id": message.data.get("id"), "result": result})
        box = Outbox()
        box.deliver(answer)
        box.close()
        await _answer(exchange, [], box, [(SESSION_HEADER, token.encode())], batch=False)

    async def _pick_shared(self, deadline: float) -> SharedProcess:
        """A process with no session if there is one; else a new process while fewer than `pool.max` are in
        service and a slot is free (one start at a time, which concurrent callers wait for together); else the
        process with the fewest sessions (counted from the pick, so concurrent initializations spread too).
        Processes due for recycling get new sessions only when no other can take them."""
        while True:
            now = time.monotonic()
            self._pool[:] = [p for p in self._pool if not p.closed.is_set() and not p.stopping]
            fresh = [p for p in self._pool if not self.worn(p, now)]
            spare = next((p for p in fresh if p.assigned == 0), None)  # a warm one, or one all sessions left
            if spare is not None:
                process = spare
            elif not self._pool or (len(fresh) < self.server.pool.max and self.admission.free):
                await self._join_start(SHARED, deadline)
                continue
            else:
                process = min(fresh or self._pool, key=lambda p: p.assigned)
            process.assigned += 1
            process.served += 1
            return process

    async def in_shared_session(self, exchange: Exchange, token: str, session: SharedSession) -> None:
        if await self._delete_or_stream(exchange, token, session):
            return
        process = session.process
        if session.closed or process.closed.is_set():
            self._sessions.drop(token)
            raise GatewayError.session_not_found()
        messages, batch = parse_body(exchange.body)
        box = Outbox(set())
        assert box.waiting is not None
        mine: list[str] = []
        for message in messages:
            if message.is_request:
                upstream_id, data = process.ids.outgoing(message, box)
                box.waiting.add(id_key(upstream_id))
                session.upstream_ids[message.id_key] = upstream_id
                mine.append(message.id_key)
            elif message.method == "notifications/initialized" or message.is_response:
                continue  # the process was initialized once; it sends its clients no requests
            elif message.method == "notifications/cancelled":
                params = dict(message.data.get("params") or {})
                upstream = session.upstream_ids.get(id_key(params.get("requestId")))
                if upstream is None:
                    continue
                data = dumps({**message.data, "params": {**params, "requestId": upstream}})
            else:
                data = message.raw
            await process.send(data)
        if not box.waiting:
            await respond(exchange.send, 202, b"")
            return
        session.in_flight += 1
        try:
            await _answer(exchange, [], box, [(SESSION_HEADER, token.encode())], batch=batch)
        finally:
            session.in_flight -= 1
            process.ids.forget(box)
            box.close()
            for key in mine:
                session.upstream_ids.pop(key, None)

    def session_ended(self, session: SharedSession) -> None:
        self._sessions.drop_session(session)


async def _next(box: Outbox) -> bytes | None:
    try:
        return await box.receive.receive()
    except anyio.EndOfStream:
        return None


async def _answer(exchange: Exchange, already: list[bytes], box: Outbox, headers: Headers, *, batch: bool) -> bool:
    """Answer a POST from `box`: an event stream when the client takes one, else JSON. True if complete."""
    accept = exchange.header(b"accept") or ""
    if accepts(accept, "text/event-stream"):
        return await _stream(exchange, box, headers, already)
    if not accepts(accept, "application/json"):
        raise GatewayError(406, -32600, "the client must accept application/json or text/event-stream")
    responses = list(already)
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            item = await box.receive.receive()
            parsed = parse_message(item)
            if parsed is not None and parsed.is_response:
                responses.append(item)
    body = b"[" + b",".join(responses) + b"]" if batch else (responses[0] if responses else b"")
    await respond(exchange.send, 200, body, headers)
    return True


async def _stream(exchange: Exchange, box: Outbox, headers: Headers, already: list[bytes] | None = None) -> bool:
    """Relay `box` as Server-Sent Events until it closes or the client goes away. True if it closed."""
    await start_event_stream(exchange.send, headers)

    async def events() -> AsyncIterator[bytes]:
        for item in already or []:
            yield sse_event(item)
        async for event in box.events(exchange.snapshot.gateway.keepalive_interval):
            yield event

    return await stream_body(exchange.receive, exchange.send, events())


__all__ = ["Outbox", "RelayUpstream", "SharedProcess", "SharedSession", "StdioSession"]


def _awaits_retry(process: _Link, now: float) -> bool:
    """A shared process that asked for input lately: only it can open the `requestState` of the retry."""
    return isinstance(process, SharedProcess) and now - process.asked_at <= STATE_GRACE
