"""The kinds of relayed link and the sessions on them.

- `StdioSession` (session mode, the 2025 revisions): one client session, one link, which sees exactly one
  `initialize` and keeps its own state. Messages go to it untouched, one per line; what it writes is routed
  back by id: responses to the POST that carried the request, progress to the stream of the request whose
  token it names, server requests and other notifications to the single open POST stream, else the GET
  stream, else a bounded backlog that the next GET stream receives.
- `SharedProcess`: many clients over one process, request ids and progress tokens remapped (`IdMap`):
  2026-07-28 traffic, and (pool mode `shared`) 2025-era sessions of servers declared stateless, each a
  `SharedSession`.

Each session knows the `RelayUpstream` that serves it (`owner`): the runtime routes its requests there.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import time
from typing import TYPE_CHECKING, Any

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.policy.tools import ToolGuard
from mcpfleet.gateway.protocol import IdMap, Message, dumps, error_response, id_key, parse_message
from mcpfleet.gateway.upstream.backend import Backend
from mcpfleet.gateway.upstream.relay.link import EXITED, Link
from mcpfleet.gateway.upstream.relay.outbox import DETACHED_GRACE, Journal, Outbox, next_message
from mcpfleet.registry.model import HttpServer, StdioServer

if TYPE_CHECKING:
    from mcpfleet.gateway.upstream.relay import RelayUpstream

BACKLOG = 256
SERIALS = itertools.count(1)  # shared processes, numbered across the gateway process (reloads included)


class StdioSession(Link):
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
        self.leased = False  # given to a client (not a warm process): counts until its process ends
        self.journal: Journal | None = None  # Streamable HTTP sessions: event ids and resumption
        self.primes = False  # negotiated 2025-11-25 or later: streams open with a priming event
        self.guard: ToolGuard | None = None  # message-stream clients: the connection's tool filter and audit line
        self.version: Any = None  # the protocol version it negotiated (Streamable HTTP sessions)

    def resumable(self, version: Any, grace: float = DETACHED_GRACE) -> None:
        """The session was initialized over Streamable HTTP at `version`: give its streams event ids. A
        stream whose client went away keeps the session busy for `grace` seconds, for a resume."""
        self.version = version
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

    async def post(
        self, messages: list[Message], *, streamed: bool = True, guard: ToolGuard | None = None
    ) -> Outbox | None:
        """Write messages to the process; the outbox that will carry the answers, or None if none are due.
        `streamed`: the answers go out as an event stream (only those get event ids and the journal).
        `guard`: the request's tool filter and audit line (policy/tools.py)."""
        requests = [m for m in messages if m.is_request]
        box = None
        if requests:
            box = self._outbox({m.id_key for m in requests}) if streamed else Outbox({m.id_key for m in requests})
            if guard is not None:
                box.watch = guard.answer
            for m in requests:
                self._pending[m.id_key] = box
                if (token := m.progress_token()) is not None:
                    self._progress[id_key(token)] = box
            self._posts.append(box)
        for m in messages:
            if guard is None or not self._refused(m, guard):
                await self.send(m.raw)
        return box

    def _refused(self, message: Message, guard: ToolGuard) -> bool:
        """Whether `guard` refuses `message` (a denied `tools/call`): its answer then goes the way the
        server's would (a notification has none), and the message goes nowhere."""
        refusal = guard.screen(message)
        if refusal is None:
            return False
        if refusal:
            self.dispatch(Message(json.loads(refusal), refusal))
        return True

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
        """For message-stream clients (legacy SSE, WebSocket): everything for this session goes to `box`,
        through the connection's tool guard (`guard`) if it has one."""
        for m in messages:
            if m.is_request:
                self._pending[m.id_key] = box
                if (token := m.progress_token()) is not None:
                    self._progress[id_key(token)] = box
        guard = self.guard
        for m in messages:
            if guard is None or not self._refused(m, guard):
                await self.send(m.raw)

    @property
    def idle(self) -> bool:
        """Nothing in flight and no stream open: ending it loses no message."""
        return self.quiet and self._standing is None

    @property
    def upstream_closed(self) -> bool:
        return self.owner.retired

    @property
    def has_sessions(self) -> bool:
        return self.leased

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


class SharedProcess(Link):
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

    @property
    def has_sessions(self) -> bool:
        return self.assigned > 0  # including those still initializing

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

    def hand_over(self, others: list[SharedProcess]) -> list[SharedSession]:
        """Give this process's sessions (nothing in flight) to the least loaded of `others` (the server is
        declared stateless, so nothing is lost); with no other, end them (404: the client initializes again).
        Returns the sessions it ended."""
        ended: list[SharedSession] = []
        for session in list(self.sessions):
            if not others:
                session.end()
                ended.append(session)
                continue
            self.sessions.discard(session)
            self.assigned -= 1
            target = min(others, key=lambda p: p.assigned)
            target.assigned += 1
            target.sessions.add(session)
            session.process = target
        return ended

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
                answer = await next_message(box)
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

    @property
    def upstream_closed(self) -> bool:
        return self.owner.retired

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
