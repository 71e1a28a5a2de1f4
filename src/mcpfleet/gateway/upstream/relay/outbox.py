"""Where a relayed session's messages go: one `Outbox` per client stream, and the session's `Journal` of
recent events, from which a client that lost a stream resumes it (`GET` + `Last-Event-ID`).

Pure bookkeeping over memory channels: no process, no HTTP. Event ids are `<stream>-<n>`, the stream's
number in the session and the message's position in it.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from mcpfleet.gateway.protocol import sse_event

KEEPALIVE = b": keepalive\n\n"
JOURNAL_EVENTS = 1000  # per session, for Last-Event-ID resumption
JOURNAL_BYTES = 1 << 20
DETACHED_STREAMS = 64  # per session: POST streams kept for a resume after their client went away
DETACHED_GRACE = 120.0  # seconds (at most gateway.session_idle_timeout) a detached stream keeps its session busy
STANDING_KEPT = 16  # per session: GET streams whose ids can still be resumed


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


@dataclass(frozen=True)
class Idle:
    """How long the requests of a POST stream may wait with nothing arriving for them (`timeouts.idle_stream`,
    in seconds), and the error answer that then takes the place of each one's answer, by its id key."""

    seconds: float
    error: Callable[[str], bytes]


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
        # Sees each response with the key it answers before it goes out: the tool filter and the audit line
        # (policy/tools.py, `ToolGuard.answer`); may return it changed.
        self.watch: Callable[[bytes, str], bytes] | None = None
        self.journal = journal  # when set, events carry ids and are kept for resumption
        self.stream = journal.new_stream() if journal is not None else 0
        self.delivered = 0  # messages delivered to this stream so far
        self.taken = 0  # messages taken from the channel so far
        self.detached = False
        self.detached_at = 0.0
        self.finished = False
        self.prime = False  # open with a priming event (an id, no data): the client may resume from it
        self.active_at = time.monotonic()  # its creation or last delivery: the idle clock of its requests
        self._send, self.receive = anyio.create_memory_object_stream[bytes](math.inf)

    def event_id(self, seq: int) -> str | None:
        return f"{self.stream}-{seq}" if self.journal is not None else None

    async def events(self, keepalive: float, idle: Idle | None = None) -> AsyncIterator[bytes]:
        """The messages as Server-Sent Events, with a `: keepalive` comment after `keepalive` seconds of
        silence, so proxies and clients do not take a quiet stream for a dead one. With `idle`, requests
        still waiting after `idle.seconds` with nothing delivered get its error in place of their answers."""
        if self.prime:
            self.prime = False
            yield f"id: {self.stream}-0\ndata: \n\n".encode()
        quiet_since = time.monotonic()
        while True:
            wait = keepalive - (time.monotonic() - quiet_since)
            if idle is not None and self.waiting:
                wait = min(wait, idle.seconds - (time.monotonic() - self.active_at))
            item: bytes | None = None
            with anyio.move_on_after(max(wait, 0)):
                try:
                    item = await self.receive.receive()
                except anyio.EndOfStream:
                    return
            now = time.monotonic()
            if item is not None:
                quiet_since = now
                self.taken += 1
                yield sse_event(item, self.event_id(self.taken))
            elif not self.expire_if_idle(idle, now) and now - quiet_since >= keepalive:
                quiet_since = now
                yield KEEPALIVE

    async def collect(self, idle: Idle | None = None) -> list[bytes]:
        """Every message until the box closes (a POST answered as JSON), with `idle` as in `events`."""
        items = []
        while True:
            wait = math.inf
            if idle is not None and self.waiting:
                wait = idle.seconds - (time.monotonic() - self.active_at)
            with anyio.move_on_after(max(wait, 0)) as scope:
                try:
                    items.append(await self.receive.receive())
                except anyio.EndOfStream:
                    return items
            if scope.cancelled_caught:
                self.expire_if_idle(idle, time.monotonic())

    def expire_if_idle(self, idle: Idle | None, now: float) -> bool:
        """Answer the requests still waiting with `idle.error` if nothing came for them for `idle.seconds`."""
        if idle is None or not self.waiting or now - self.active_at < idle.seconds:
            return False
        for key in list(self.waiting):
            self.deliver(idle.error(key), answered=key)
        return True

    def deliver(self, message: bytes, answered: str | None = None) -> None:
        if answered is not None:
            if self.watch is not None:
                message = self.watch(message, answered)
            if self.transform is not None:
                message = self.transform(message)
        self.delivered += 1
        self.active_at = time.monotonic()
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


def closed_outbox(*messages: bytes) -> Outbox:
    """An outbox that holds `messages` and nothing more: answers the gateway gives itself."""
    box = Outbox()
    for message in messages:
        box.deliver(message)
    box.close()
    return box


async def next_message(box: Outbox) -> bytes | None:
    """The next message of `box`, or None once it is closed and empty."""
    try:
        return await box.receive.receive()
    except anyio.EndOfStream:
        return None
