"""The processes of one relayed server (stdio processes, or bridged HTTP connections): which may start, which
run, and when each stops.

`Pool` is an async context manager that owns its tasks, as the SDK's stdio client owns its child: every
process runs under `_supervise` in the pool's own task group, and leaving the pool stops them all together,
shielded from cancellation and bounded (each link's `timeouts.shutdown`), then cancels what is left.

- **Admission** (admission.py): a slot (`pool.max`) and a start-up turn (`pool.max_starting`) for every
  process; a caller that finds no free slot frees an idle one while it waits (upkeep.py); a crash loop
  refuses starts for a while.
- **Warm processes** (`pool.min`): started ahead of need while nobody waits, handed out first.
- **Shared processes** (2026-07-28 traffic, pool mode `shared`): at most one start into each list under way,
  which every caller that needs a process of that list and finds none waits for (starts.py).
- **Upkeep** once a second (`expire_idle`): replace dead and worn warm processes, stop surplus and worn ones.
- **Reload**: `reconfigure` adopts new settings in place for new work; `drain` takes no new work and lets
  the sessions it has run until they end (`drained`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from mcpfleet.errors import DeployError, GatewayError, ServerStartError
from mcpfleet.gateway.logs import detached
from mcpfleet.gateway.session import SessionTable
from mcpfleet.gateway.upstream.admission import FULL, Admission, CrashLoop, default_max_starting
from mcpfleet.gateway.upstream.backend import Backend
from mcpfleet.gateway.upstream.relay.link import Link
from mcpfleet.gateway.upstream.relay.sessions import SERIALS, SharedProcess, SharedSession, StdioSession
from mcpfleet.gateway.upstream.relay.starts import SharedStarts
from mcpfleet.gateway.upstream.relay.upkeep import expired, reclaimable, surplus, unused
from mcpfleet.registry.model import HttpServer, StdioServer

if TYPE_CHECKING:
    from mcpfleet.gateway.upstream.relay import RelayUpstream

log = logging.getLogger("mcpfleet.gateway.relay")

WORN_SOON = 0.9  # a warm process past this share of pool.max_lifetime is not leased (it is replaced soon)
RECLAIM_POLL = 0.25  # seconds between looks for an idle process to free, while a caller waits for a slot
START_GUESS = 1.0  # seconds a start-up takes, until one is measured

Job = Callable[..., Coroutine[Any, Any, None]]


class Pool:
    """`new_backend` opens one connection; `limit` caps how many run at once (`pool.max` for processes);
    `owner` is the upstream the pool's sessions belong to."""

    def __init__(
        self,
        server: StdioServer | HttpServer,
        new_backend: Callable[[], Backend],
        sessions: SessionTable,
        owner: RelayUpstream,
        *,
        limit: int,
        what: str,
        counts_exits: bool,
    ) -> None:
        self.server = server
        self.new_backend = new_backend
        self._sessions = sessions
        self._owner = owner
        self._limit = limit
        self._what = what
        # Bridged HTTP connections end through transport or protocol errors, not crashes: never counted.
        self._counts_exits = counts_exits
        starting = (server.pool.max_starting or default_max_starting()) if what == "processes" else limit
        self.admission = Admission(limit, starting)
        self.crashes = CrashLoop(server.id)
        self.start_seconds = START_GUESS  # a start-up's length, measured (moving average): paces warm starts
        self.starts = SharedStarts(self)  # into the lists of shared processes, one at a time each
        self._reclaiming = 0  # processes being stopped to free a slot for a waiter
        self.modern: list[SharedProcess] = []  # 2026-07-28 traffic
        self.shared: list[SharedProcess] = []  # pool mode `shared`: 2025-era sessions of a stateless server
        self.live: set[Link] = set()
        self.started_total = 0
        self.retired = False  # the runtime retired it: its sessions get 404 (session.py), it starts nothing
        self.draining = False  # no new sessions or processes; its sessions go on until they end
        self.calls = 0  # requests being served, now
        self._change = anyio.Event()  # set (and replaced) when a request, a session or a process ends
        # Warm processes: started, not yet leased (no initialize seen). Only for stdio servers (`pool.min`).
        self.warm: list[StdioSession] = []
        self.warm_target = 0
        self._refilling = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._queued: list[tuple[Job, tuple[Any, ...]]] = []  # asked for before the pool runs
        self._entered = anyio.Event()  # the pool runs, or has ended
        self.closed = False

    # --- life -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Pool:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        queued, self._queued = self._queued, []
        for fn, args in queued:
            tg.start_soon(detached(fn), *args)
        self._entered.set()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.closed = True  # from here on nothing starts
        self._entered.set()
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True):
                self.warm_target = 0
                self.warm.clear()
                async with anyio.create_task_group() as tg:
                    for process in list(self.live):
                        tg.start_soon(process.aclose)  # each bounded by its timeouts.shutdown
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)

    def spawn(self, fn: Job, *args: Any) -> bool:
        """Run `fn(*args)` in the pool's task group (once it runs); False when the pool has ended."""
        if self.closed:
            return False
        if self._tg is None:
            self._queued.append((fn, args))
        else:
            self._tg.start_soon(detached(fn), *args)  # may outlive the request that asks
        return True

    @property
    def accepting(self) -> bool:
        """New sessions and processes may start."""
        return not (self.retired or self.draining or self.closed)

    def _changed(self) -> None:
        """Wake `wait_drained`: only a draining pool has anyone waiting (the hot path skips it)."""
        if self.draining:
            self._change.set()
            self._change = anyio.Event()

    def gone(self) -> GatewayError:
        return GatewayError.unreachable(self.server.id, "the server was removed or changed by a reload")

    @property
    def waiting(self) -> int:
        """Callers waiting for a process (a slot, a start-up turn, or a start under way), now."""
        return self.admission.waiting + self.starts.joined

    def deadline(self) -> float:
        """Until when a caller arriving now may wait for a process (`pool.acquire_timeout`)."""
        return time.monotonic() + self.server.pool.acquire_timeout

    # --- warm processes ---------------------------------------------------------------------------------

    @property
    def warm_count(self) -> int:
        if self.server.pool.mode == "shared":
            return sum(1 for p in self.shared if not p.closed.is_set() and p.assigned == 0)
        return sum(1 for session in self.warm if not session.closed.is_set())

    def _short_of_warm(self) -> bool:
        if self.server.pool.mode == "shared":
            return sum(1 for p in self.shared if not p.closed.is_set()) < self.warm_target
        return len(self.warm) < self.warm_target

    def keep_warm(self, count: int) -> None:
        """Keep `count` processes started ahead of need (`pool.min`), so a new session has no cold start."""
        self.warm_target = count
        self.refill_soon()

    def take_warm(self) -> StdioSession | None:
        """The oldest warm process, unless it is about to be worn out (then the session would end at once)."""
        now = time.monotonic()
        for session in list(self.warm):
            lifetime = session.server.pool.max_lifetime
            if session.closed.is_set() or session.stopping:
                self.warm.remove(session)
            elif lifetime is None or now - session.born < lifetime * WORN_SOON:
                self.warm.remove(session)
                return session
        return None

    def refill_soon(self) -> None:
        if not self._refilling and self.accepting and self._short_of_warm() and self.spawn(self._refill):
            self._refilling = True

    async def _refill(self) -> None:
        """Start warm processes while no session waits and a start-up turn is free: they never take a slot
        or a turn a session could use (`_launch` holds each one's turn for a measured start-up)."""
        try:
            while self.accepting and self._short_of_warm():
                shared = self.server.pool.mode == "shared"
                process: Link = (
                    SharedProcess(self.server, self.new_backend(), next(SERIALS))
                    if shared
                    else StdioSession(self.server, self.new_backend(), self._owner)
                )
                if self.waiting or not self.admission.try_admit(process):
                    return  # the next lease or maintenance pass tries again
                try:
                    await self._launch(process, measured=False)
                except GatewayError as exc:
                    log.warning("server %r: could not start a warm process: %s", self.server.id, exc.message)
                    return
                # Retired or draining while it started, or `pool.min` lowered (only this task adds warm ones).
                surplus = isinstance(process, StdioSession) and len(self.warm) >= self.warm_target
                if not self.accepting or surplus:
                    await process.aclose()
                    return
                if isinstance(process, SharedProcess):
                    self.shared.append(process)  # initialized by its first session's initialize
                else:
                    assert isinstance(process, StdioSession)
                    self.warm.append(process)
        finally:
            self._refilling = False

    async def expire_idle(self, now: float) -> None:
        """Once a second: keep `pool.min` warm processes and stop what upkeep.py finds expired, together. The
        victims are out of the pool's lists and marked stopping before the first await, so nothing picks one."""
        victims = expired(self, now)
        for victim in victims:
            victim.stopping = True
            if isinstance(victim, StdioSession):
                self._sessions.drop_session(victim)
        self.refill_soon()
        if victims:
            async with anyio.create_task_group() as tg:
                for victim in victims:
                    tg.start_soon(victim.aclose)

    # --- starting and supervising -----------------------------------------------------------------------

    async def start(self, process: Link, deadline: float, *, measured: bool = False) -> None:
        """Start `process` once it has a slot and a start-up turn (admission.py), or raise 503 by `deadline`.
        `measured`: an `initialize` is sent to it at once (see `_launch`)."""
        self.crashes.check()
        try:
            await self._admit(process, deadline)
            await self._launch(process, measured=measured)
        except BaseException:
            if process not in self.live:  # not under supervision: nothing else gives its slot and turn back
                self.admission.release(process)
            raise

    async def _admit(self, process: Link, deadline: float) -> None:
        if self.admission.free:
            await self.admission.admit(process, deadline, self.refusal)
            return
        # Capacity is what is in flight: while this caller waits, a session that falls idle is freed for it.
        refused: GatewayError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reclaim_while_waiting)
            try:
                await self.admission.admit(process, deadline, self.refusal)
            except GatewayError as exc:  # raised outside the group, not wrapped in an exception group
                refused = exc
            finally:
                tg.cancel_scope.cancel()
        if refused is not None:
            raise refused

    async def _launch(self, process: Link, *, measured: bool = False) -> None:
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
        await self._entered.wait()
        if self.closed or self._tg is None:
            raise self.gone()
        try:
            await self._tg.start(detached(self._supervise), process)  # _supervise gives the slot back, whatever happens
        except (ServerStartError, DeployError) as exc:
            raise GatewayError.start_failed(exc) from None
        if not measured:
            self.spawn(self._start_up_over, process, min(self.start_seconds, self.server.timeouts.startup))

    async def _start_up_over(self, process: Link, after: float) -> None:
        with anyio.move_on_after(after):
            await process.closed.wait()
        self.admission.started(process)  # a no-op when its first message came first

    async def _supervise(self, process: Link, *, task_status: anyio.abc.TaskStatus[None]) -> None:
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
            if self._counts_exits:
                self.crashes.note_exit(
                    asked=process.stopping, lifetime=time.monotonic() - born, detail=process.exit_detail
                )
            self.live.discard(process)
            self.admission.release(process)
            if isinstance(process, StdioSession):
                self._sessions.drop_session(process)
            self._changed()

    def refusal(self, what: str) -> GatewayError:
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
            sessions = sum(1 for p in self.live if isinstance(p, StdioSession) and p not in self.warm)
            in_flight = sum(len(p.ids) for p in self.modern)
            detail = (
                f"all {self._limit} processes are in use: {sessions} by sessions,"
                f" {len(self.shared)} by shared sessions, {len(self.modern)} by 2026-07-28 requests"
                f" ({in_flight} in flight), {len(self.warm)} warm, none of them idle"
                " (settings: pool.max, pool.acquire_timeout)"
            )
        return GatewayError(
            503,
            FULL,
            f"server {self.server.id!r}: no process within {waited:g} s; {detail}",
            headers={"Retry-After": "1"},
        )

    # --- freeing a slot for a waiter ----------------------------------------------------------------------

    async def _reclaim_while_waiting(self) -> None:
        while True:
            if self.admission.slot_waiters and self.admission.slots.available_tokens < 1:
                await self._reclaim_idle()
            await anyio.sleep(RECLAIM_POLL)

    async def _reclaim_idle(self) -> None:
        """At the process cap, stop one process that has nothing in flight (upkeep.reclaimable)."""
        if self._reclaiming >= self.admission.slot_waiters:
            return  # as many are being freed as callers wait for a slot (a stop takes a moment to give it back)
        victim = reclaimable(self)
        if victim is None:
            return
        if isinstance(victim, SharedProcess) and victim.sessions:
            others = [p for p in self.shared if p is not victim and p.init_result is not None and not p.stopping]
            for session in victim.hand_over(others):
                self.session_ended(session)
        log.info("server %r: at %d %s, freeing an idle one", self.server.id, self._limit, self._what)
        victim.stopping = True
        if isinstance(victim, StdioSession):
            self._sessions.drop_session(victim)
        self._reclaiming += 1
        try:
            await victim.aclose()
        finally:
            self._reclaiming -= 1

    def session_ended(self, session: SharedSession) -> None:
        self._sessions.drop_session(session)
        self._changed()

    # --- reload: new settings in place, or draining ---------------------------------------------------------

    def reconfigure(self, server: StdioServer | HttpServer) -> None:
        """Adopt a new registry entry whose command, environment and mode are those of the current one. New
        limits apply from now on: raising `pool.max` admits waiters at once, lowering it stops no process that
        runs; `pool.min` starts or stops warm processes; timeouts and the other pool settings apply to new
        work. Processes keep the entry they were started with for their own timeouts and recycling limits."""
        self.server = server
        if self._what != "processes":
            return  # bridged connections: `limit` is the gateway's, not the entry's
        self._limit = server.pool.max
        self.admission.resize(server.pool.max, server.pool.max_starting or default_max_starting())
        if not self.draining:
            self.warm_target = server.pool.min
            self._stop(surplus(self))
            self.refill_soon()

    def drain(self) -> None:
        """Open no new session and start no process from now on (`refuse_if_draining`); stop the warm and
        spare ones now; serve the sessions there are until they end. `drained` says when none is left."""
        if self.draining:
            return
        self.draining = True
        self.warm_target = 0
        self._stop(unused(self))
        self._changed()

    def _stop(self, victims: list[Link]) -> None:
        """Stop `victims` (out of the lists already) in the background, together."""
        for victim in victims:
            victim.stopping = True
        for victim in victims:
            self.spawn(victim.aclose)

    def refuse_if_draining(self, what: str) -> None:
        """The 503 for new work on a draining pool: what it no longer takes, and why."""
        if self.draining:
            raise GatewayError(
                503,
                FULL,
                f"server {self.server.id!r}: these {self._what} take no new {what}: a reload changed what runs or"
                " removed the server, and the sessions they serve go on until they end",
                headers={"Retry-After": "1"},
            )

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count a request as in flight while it is served (a draining pool is not drained before it ends)."""
        self.calls += 1
        try:
            yield
        finally:
            self.request_ended()

    def request_ended(self) -> None:
        """The end of a request counted in `calls` by the caller (the in-session hot path counts inline)."""
        self.calls -= 1
        self._changed()

    @property
    def drained(self) -> bool:
        """Draining, and nothing is left to serve: no request in flight and no session open."""
        return self.draining and not self.calls and not any(p.has_sessions for p in self.live)

    async def wait_drained(self) -> None:
        """Return once `drained` (the caller bounds the wait, then closes the pool)."""
        while not self.drained:
            await self._change.wait()
