"""Starts into the two lists of shared processes (2026-07-28 traffic, pool mode `shared`).

At most one start into each list is under way; every caller that needs a process of that list and finds
none joins it, each until its own deadline (a burst starts one process, not one each). A start that failed
because its own caller's deadline passed is begun again for a caller whose deadline has not. No lock is
held while anything waits.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.upstream.admission import FULL
from mcpfleet.gateway.upstream.relay.sessions import SERIALS, SharedProcess

if TYPE_CHECKING:
    from mcpfleet.gateway.upstream.relay.pool import Pool

log = logging.getLogger("mcpfleet.gateway.relay")

MODERN, SHARED = "modern", "shared"  # the two lists of shared processes: 2026-07-28 traffic, pool mode `shared`


class _PendingStart:
    """A process start under way into one list of shared processes, which several callers may wait for."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: GatewayError | None = None


class SharedStarts:
    """The starts under way into `pool.modern` and `pool.shared`, and the callers waiting for them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._pending: dict[str, _PendingStart] = {}
        self.joined = 0  # callers waiting for a start under way, now

    def under_way(self, which: str) -> bool:
        return which in self._pending

    def begin(self, which: str, deadline: float) -> _PendingStart:
        """Start a process into list `which` (MODERN or SHARED) in the background, unless one is under way."""
        pending = self._pending.get(which)
        if pending is None:
            pending = self._pending[which] = _PendingStart()
            if not self._pool.spawn(self._start_into, which, pending, deadline):
                del self._pending[which]
                pending.error = self._pool.gone()
                pending.done.set()
        return pending

    async def join(self, which: str, deadline: float) -> None:
        """Wait for the start under way into list `which` (begun if none is), until `deadline`. Raises the
        start's error, or this caller's 503."""
        pool = self._pool
        while True:
            pending = self.begin(which, deadline)
            self.joined += 1
            try:
                with anyio.move_on_after(deadline - time.monotonic()):
                    await pending.done.wait()
            finally:
                self.joined -= 1
            if not pending.done.is_set():  # the start it waits for is itself waiting for a slot or a start-up turn
                raise pool.refusal("slot" if pool.admission.slots.available_tokens < 1 else "start")
            error = pending.error
            if error is None:
                return
            if error.code != FULL or time.monotonic() >= deadline:
                raise error

    async def _start_into(self, which: str, pending: _PendingStart, deadline: float) -> None:
        pool = self._pool
        try:
            process = SharedProcess(pool.server, pool.new_backend(), next(SERIALS))
            await pool.start(process, deadline)  # its first request may come late, or never: not measured
            if pool.retired:  # retired while it started: nobody would stop it
                await process.aclose()
                raise pool.gone()
            # Filed after the wait, into the list as it is now (never bind the list before an await).
            (pool.modern if which == MODERN else pool.shared).append(process)
        except GatewayError as exc:
            pending.error = exc
            if which == MODERN:
                log.warning("server %r: could not start a process: %s", pool.server.id, exc.message)
        finally:
            if self._pending.get(which) is pending:
                del self._pending[which]
            pending.done.set()
