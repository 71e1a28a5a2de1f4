"""Relayed servers: the gateway is the MCP server transport for a stdio process or a bridged connection.

`RelayUpstream` is the one object the runtime holds per relayed server; it composes

- `pool.py`: the processes, an async context manager owning their tasks (admission, warm processes, crash
  loops, supervision, reload); `upkeep.py` chooses which processes stop, `starts.py` runs the starts of
  shared processes that many callers join;
- `serving.py`: session mode over Streamable HTTP (one client session, one process), and bridges;
- `shared.py`: 2026-07-28 requests and pool mode `shared`, over processes many clients share;
- `sessions.py`, `link.py`, `outbox.py`: the session kinds, the link to a backend, per-stream delivery and
  the resumption journal.

When a process exits, every request still waiting on it gets a JSON-RPC error at once, never a hang.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import respond
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.logs import detached
from mcpfleet.gateway.protocol import Message, is_initialize, parse_body
from mcpfleet.gateway.session import Session, SessionTable
from mcpfleet.gateway.upstream.admission import Admission
from mcpfleet.gateway.upstream.backend import Backend, opening_for
from mcpfleet.gateway.upstream.relay.link import Link
from mcpfleet.gateway.upstream.relay.outbox import Outbox
from mcpfleet.gateway.upstream.relay.pool import Pool
from mcpfleet.gateway.upstream.relay.serving import Serving
from mcpfleet.gateway.upstream.relay.sessions import SharedProcess, SharedSession, StdioSession
from mcpfleet.gateway.upstream.relay.shared import SharedServing
from mcpfleet.registry.model import HttpServer, StdioServer

__all__ = ["Outbox", "RelayUpstream", "SharedProcess", "SharedSession", "StdioSession"]


class RelayUpstream:
    """The relayed connections of one server: stdio processes, or bridged HTTP connections.

    The pool's life runs in a task of `task_group` (the gateway's) until `aclose()`. `new_backend` opens one
    connection; `limit` caps how many run at once (`pool.max` for processes).
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
        self.relays_processes = what == "processes"
        self.pool = Pool(server, new_backend, sessions, self, limit=limit, what=what, counts_exits=counts_exits)
        self._serving = Serving(self.pool, sessions, self)
        self._shared = SharedServing(self.pool, sessions, self)
        self._closing = anyio.Event()
        self._ended = anyio.Event()
        task_group.start_soon(detached(self._run))  # made by a request, it outlives it

    async def _run(self) -> None:
        try:
            async with self.pool:
                await self._closing.wait()
        finally:
            self._ended.set()

    async def aclose(self) -> None:
        """Stop every process (each bounded by its `timeouts.shutdown`) and end the pool's tasks."""
        self._closing.set()
        await self._ended.wait()

    # --- reload -------------------------------------------------------------------------------------------

    def reconfigure(self, server: StdioServer | HttpServer) -> None:
        """Adopt a new entry for the same command, environment and mode: new settings for new work, in place;
        no session ends and no request in flight is disturbed (`Pool.reconfigure`)."""
        self.pool.reconfigure(server)

    def drain(self) -> None:
        """What runs changed, or the server was removed: open no new session, start no process, stop the
        warm ones; the sessions there are go on as before until they end."""
        self.pool.drain()

    @property
    def drained(self) -> bool:
        """Draining, with no session and no request in flight left: `aclose()` loses nothing."""
        return self.pool.drained

    async def wait_drained(self) -> None:
        """Return once `drained`; the caller bounds the wait and then calls `aclose()`."""
        await self.pool.wait_drained()

    # --- the Upstream interface (base.py) -------------------------------------------------------------------

    async def open(self, exchange: Exchange, key: str | None) -> None:
        """A request outside any session: a 2026-07-28 request goes to the shared processes; an
        `initialize` leases a process (or, pool mode `shared`, a place on one); anything else is refused
        (405 for a 2026-07-28 GET or DELETE, 400 otherwise). A bridged connection opened here for one client
        carries that client's X-Forwarded-* and is balanced by `key`."""
        if exchange.method != "POST":
            if exchange.modern:
                await respond(exchange.send, 405, b"", [(b"allow", b"POST")])
                return
            raise GatewayError.invalid_request("Mcp-Session-Id header is required (initialize first)")
        if exchange.modern:
            await self.stateless(exchange)
            return
        messages, _ = parse_body(exchange.body)
        if not is_initialize(messages):
            raise GatewayError.invalid_request("Mcp-Session-Id header is required (initialize first)")
        if self.relays_processes and self.server.pool.mode == "shared":
            await self.initialize_shared(exchange, messages[0])
            return
        with opening_for(exchange.scope, key):
            await self.initialize(exchange, messages[0])

    def holds(self, session: Session) -> bool:
        return isinstance(session, StdioSession | SharedSession) and session.owner is self and not self.retired

    async def serve(self, exchange: Exchange, token: str, session: Session) -> None:
        pool = self.pool
        pool.calls += 1  # in flight (what `pool.request()` does, without a generator on the hot path)
        try:
            if isinstance(session, StdioSession):
                await self._serving.in_session(exchange, token, session)
            else:
                assert isinstance(session, SharedSession)
                await self._shared.in_shared_session(exchange, token, session)
        finally:
            pool.request_ended()

    # --- serving ------------------------------------------------------------------------------------------

    # Each request is counted in flight while it is served; a draining relay opens no new session.

    async def initialize(self, exchange: Exchange, message: Message) -> None:
        self.pool.refuse_if_draining("sessions")
        with self.pool.request():
            await self._serving.initialize(exchange, message)

    async def open_bridge(self) -> tuple[StdioSession, Outbox]:
        """A session for a message-stream client: one connection, every message on one outbox."""
        self.pool.refuse_if_draining("sessions")
        with self.pool.request():
            return await self._serving.open_bridge()

    async def stateless(self, exchange: Exchange) -> None:
        with self.pool.request():
            await self._shared.stateless(exchange)

    async def initialize_shared(self, exchange: Exchange, message: Message) -> None:
        self.pool.refuse_if_draining("sessions")
        with self.pool.request():
            await self._shared.initialize_shared(exchange, message)

    def session_ended(self, session: SharedSession) -> None:
        self.pool.session_ended(session)

    # --- the pool, as the runtime and the status pages see it ----------------------------------------------

    @property
    def server(self) -> StdioServer | HttpServer:
        return self.pool.server

    @property
    def retired(self) -> bool:
        return self.pool.retired

    @retired.setter
    def retired(self, value: bool) -> None:
        self.pool.retired = value

    @property
    def admission(self) -> Admission:
        return self.pool.admission

    @property
    def live(self) -> set[Link]:
        return self.pool.live

    @property
    def warm_count(self) -> int:
        return self.pool.warm_count

    @property
    def waiting(self) -> int:
        """Callers waiting for a process (a slot, a start-up turn, or a start under way), now."""
        return self.pool.waiting

    @property
    def started_total(self) -> int:
        return self.pool.started_total

    @property
    def crashed_total(self) -> int:
        return self.pool.crashes.crashed_total

    @property
    def quick_exits(self) -> int:
        return self.pool.crashes.quick_exits

    @property
    def crash_loop_until(self) -> float:
        return self.pool.crashes.until

    @property
    def last_exit(self) -> str:
        return self.pool.crashes.last_exit

    def keep_warm(self, count: int) -> None:
        """Keep `count` processes started ahead of need (`pool.min`), so a new session has no cold start."""
        self.pool.keep_warm(count)

    async def close_links(self, which: Callable[[Link], bool]) -> None:
        """End the connections (and the sessions on them) that `which` picks, together: a bridged
        connection to a replica whose drain ended. Their clients see the session end (404, or a closed
        WebSocket or event stream)."""
        async with anyio.create_task_group() as tg:
            for link in [link for link in self.live if which(link)]:
                tg.start_soon(link.aclose)

    async def expire_idle(self, now: float) -> None:
        """Once a second (the gateway's maintenance pass): see `Pool.expire_idle`."""
        await self.pool.expire_idle(now)
