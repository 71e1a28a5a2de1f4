"""Admission to a relay's pool: who may start a process, and when.

Two limits, both served in arrival order (anyio's `CapacityLimiter` is a FIFO of waiters):

- **slots**: at most `pool.max` processes (or bridged connections) alive at once;
- **starts**: at most `max_starting` processes in their start-up at once. A process is starting from its
  spawn until the first message it writes (for a stdio MCP server, the answer to its first request), so a
  burst of sessions never puts more start-ups on the CPUs than they can finish: each start's own
  `timeouts.startup` then measures that process alone, not its share of a crowd.

Every waiter carries its own deadline (its arrival plus `pool.acquire_timeout`) and gets its slot and start,
or its 503, by then, however many wait before or after it. No lock is held while waiting.

A `CrashLoop` stops starts altogether for a while: a command that exits right after it starts, again and
again, costs nothing while it backs off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import anyio

from mcpfleet.errors import GatewayError

log = logging.getLogger("mcpfleet.gateway.relay")

FULL = -32016
CRASH_LOOP = -32017
CRASH_WINDOW = 5.0  # seconds: an exit this soon after the start counts towards a crash loop
CRASH_LIMIT = 3
CRASH_BACKOFF = 2.0
CRASH_BACKOFF_MAX = 60.0


def default_max_starting() -> int:
    """Start-ups at once when the registry does not say: one per CPU this process may run on (measured in
    bench/pool.py: on 2 cores, 2 at once opened a burst of 64 sessions fastest, with no error)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has affinity
        return max(1, os.cpu_count() or 1)


class Admission:
    """The slots and start tokens of one pool. `owner` objects (processes) hold them."""

    def __init__(self, slots: int, max_starting: int) -> None:
        self.slots = anyio.CapacityLimiter(slots)
        self.starts = anyio.CapacityLimiter(max_starting)
        self.waiting = 0  # waiters for a slot or a start, now
        self._slot_waiters = 0
        self._holders: set[object] = set()
        self._starting: set[object] = set()

    def resize(self, slots: int, max_starting: int) -> None:
        """New limits for what is admitted from now on: raising one admits waiters at once; lowering one stops
        nothing that holds a slot or a turn, it only holds back the next ones."""
        self.slots.total_tokens = slots
        self.starts.total_tokens = max_starting

    @property
    def free(self) -> bool:
        """A slot is free and nobody waits for one: a new process may take it at once."""
        return self.slots.available_tokens >= 1 and not self._slot_waiters

    @property
    def slot_waiters(self) -> int:
        return self._slot_waiters

    @property
    def starting(self) -> int:
        return len(self._starting)

    async def admit(self, owner: object, deadline: float, refusal: Callable[[str], GatewayError]) -> None:
        """Give `owner` a slot, then a start token, before `deadline` (`time.monotonic()` seconds).

        Raises what `refusal(what)` builds when the deadline passes first; `what` says which limit was full
        ("slot" or "start"). Nothing is held after a refusal or a cancellation.
        """
        # A cancelled acquire holds nothing (anyio gives back a token granted as the cancellation came).
        self.waiting += 1
        try:
            self._slot_waiters += 1
            try:
                with anyio.move_on_after(deadline - time.monotonic()) as waited:
                    await self.slots.acquire_on_behalf_of(owner)
            finally:
                self._slot_waiters -= 1
            if waited.cancelled_caught:
                raise refusal("slot")
            try:
                with anyio.move_on_after(deadline - time.monotonic()) as waited:
                    await self.starts.acquire_on_behalf_of(owner)
                if waited.cancelled_caught:
                    raise refusal("start")
            except BaseException:
                self.slots.release_on_behalf_of(owner)
                raise
            self._holders.add(owner)
            self._starting.add(owner)
        finally:
            self.waiting -= 1

    def try_admit(self, owner: object) -> bool:
        """A slot and a start token for `owner` now, if both are free and nobody waits; else nothing."""
        if not self.free or self.starts.available_tokens < 1:
            return False
        try:
            self.slots.acquire_on_behalf_of_nowait(owner)
        except anyio.WouldBlock:
            return False
        try:
            self.starts.acquire_on_behalf_of_nowait(owner)
        except anyio.WouldBlock:
            self.slots.release_on_behalf_of(owner)
            return False
        self._holders.add(owner)
        self._starting.add(owner)
        return True

    def started(self, owner: object) -> None:
        """`owner`'s start-up is over (it wrote its first message, or it ended): the next start may begin."""
        if owner in self._starting:
            self._starting.discard(owner)
            self.starts.release_on_behalf_of(owner)

    def release(self, owner: object) -> None:
        """`owner` is gone: its start token (if still held) and its slot go to the next waiters."""
        self.started(owner)
        if owner in self._holders:
            self._holders.discard(owner)
            self.slots.release_on_behalf_of(owner)


class CrashLoop:
    """Exits the gateway did not ask for, and the crash loop they may make: CRASH_LIMIT exits in a row, each
    within CRASH_WINDOW of its start, refuse new starts at once (503, -32017) for a backoff that doubles
    (CRASH_BACKOFF up to CRASH_BACKOFF_MAX), instead of each caller waiting for a process that will die."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.crashed_total = 0  # exits the gateway did not ask for
        self.quick_exits = 0
        self.until = 0.0  # `time.monotonic()` until which starts are refused
        self.last_exit = ""

    def note_exit(self, *, asked: bool, lifetime: float, detail: str) -> None:
        """A process ended after `lifetime` seconds; `asked`: the gateway stopped it."""
        if not asked:
            self.crashed_total += 1
        if asked or lifetime >= CRASH_WINDOW:
            if lifetime >= CRASH_WINDOW:
                self.quick_exits = 0
            return
        self.quick_exits += 1
        self.last_exit = detail or "failed to start"
        if self.quick_exits >= CRASH_LIMIT:
            backoff = min(CRASH_BACKOFF_MAX, CRASH_BACKOFF * 2 ** (self.quick_exits - CRASH_LIMIT))
            self.until = time.monotonic() + backoff
            log.warning(
                "server %r is in a crash loop (%d quick exits, last: %s); new sessions fail for %g s",
                self.server_id,
                self.quick_exits,
                self.last_exit,
                backoff,
            )

    def check(self) -> None:
        """Raise the crash loop's 503 while its backoff lasts."""
        if (wait := self.until - time.monotonic()) > 0:
            raise GatewayError(
                503,
                CRASH_LOOP,
                f"server {self.server_id!r} keeps exiting right after it starts ({self.quick_exits} times in a row;"
                f" last: {self.last_exit}); new sessions fail fast for {wait:.0f} more s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
