"""Which processes of a pool to stop: once a second (`expired`), for a caller waiting for a slot
(`reclaimable`), and on a reload (`surplus`, `unused`). Choosing only: each function takes its victims out
of the pool's lists, with no await in between (the lists change while a process stops), and the pool stops
them (pool.py).

Recycling: a process past `pool.max_lifetime`, or given `pool.max_sessions_per_process` sessions, is
*worn*: it takes no new work and stops once nothing is in flight (a shared one's replacement starts first).
The limits are those of the entry the process was started with (`Link.server`): a reload that changes them
applies to processes started after it, and ends no session.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from mcpfleet.gateway.upstream.relay.link import Link
from mcpfleet.gateway.upstream.relay.sessions import SharedProcess, StdioSession

if TYPE_CHECKING:
    from mcpfleet.gateway.upstream.relay.pool import Pool

log = logging.getLogger("mcpfleet.gateway.relay")

STATE_GRACE = 120.0  # seconds a process due to stop still waits for retries of the input it asked for
RECLAIM_IDLE = 0.5  # seconds with nothing in flight before a session may be ended for a waiter (not between calls)


def worn(process: Link, now: float) -> bool:
    """Past `pool.max_lifetime`, or given `pool.max_sessions_per_process` sessions: due to be recycled."""
    pool = process.server.pool
    return (pool.max_lifetime is not None and now - process.born >= pool.max_lifetime) or (
        pool.max_sessions_per_process is not None and process.served >= pool.max_sessions_per_process
    )


def awaits_retry(process: Link, now: float) -> bool:
    """A shared process that asked for input lately: only it can open the `requestState` of the retry."""
    return isinstance(process, SharedProcess) and now - process.asked_at <= STATE_GRACE


def expired(pool: Pool, now: float) -> list[Link]:
    """Once a second: warm processes that are worn, or surplus (beyond the warm target) and idle past
    `pool.idle_timeout`; leased sessions whose process is worn, at their first moment with nothing in flight;
    worn shared processes once idle, and extra 2026-07-28 processes (all but the oldest) and spare
    shared-mode ones (beyond the warm target) idle past `pool.idle_timeout` (every idle one, in a draining
    pool), each only STATE_GRACE after it last asked for input (a retry may follow)."""
    idle_timeout = pool.server.pool.idle_timeout
    victims: list[Link] = []
    pool.warm[:] = [s for s in pool.warm if not s.closed.is_set()]
    surplus = len(pool.warm) - pool.warm_target
    for session in list(pool.warm):
        if worn(session, now) or (surplus > 0 and now - session.last_used > idle_timeout):
            pool.warm.remove(session)
            surplus -= 1
            victims.append(session)
    for link in pool.live:
        if not isinstance(link, StdioSession) or not link.started or link in pool.warm or link in victims:
            continue
        if link.quiet and worn(link, now):  # leased: end the session between calls
            log.info("server %r: ending a session whose process reached pool.max_lifetime", pool.server.id)
            victims.append(link)

    def settled(process: SharedProcess) -> bool:  # nothing in flight, and no retry of its input due
        return process.idle and now - process.asked_at > STATE_GRACE

    pool.modern[:] = [p for p in pool.modern if not p.closed.is_set()]
    for index, process in enumerate(pool.modern):  # the first (oldest) stays unless worn
        idle_long = pool.draining or (index > 0 and now - process.last_used > idle_timeout)
        if settled(process) and (worn(process, now) or idle_long):
            victims.append(process)
    pool.shared[:] = [p for p in pool.shared if not p.closed.is_set()]
    spare = sum(1 for p in pool.shared if p.assigned == 0) - pool.warm_target
    for process in pool.shared:
        idle_long = spare > 0 and (pool.draining or now - process.last_used > idle_timeout)
        if settled(process) and (worn(process, now) or idle_long):
            victims.append(process)
            spare -= 1
    pool.modern[:] = [p for p in pool.modern if p not in victims]
    pool.shared[:] = [p for p in pool.shared if p not in victims]
    return victims


def reclaimable(pool: Pool) -> Link | None:
    """At the process cap, one process that has nothing in flight, for a caller waiting for a slot.

    Many clients never send DELETE; without this, their abandoned sessions would hold every process until
    they expire and new clients would wait. In order: a warm process; a shared process with no session and
    nothing in flight; the least recently used idle session (its client gets 404 and initializes again); a
    shared-mode process whose sessions have nothing in flight (the pool moves them to another process).
    """
    now = time.monotonic()
    settled = now - RECLAIM_IDLE
    if pool.warm:
        return pool.warm.pop()
    idle = [
        p
        for p in pool.live
        if p.idle and not p.stopping and p.started and p.last_used < settled and not awaits_retry(p, now)
    ]
    if idle:
        return min(idle, key=lambda process: process.last_used)
    quiet = [
        p
        for p in pool.shared
        if not p.stopping and not p.ids and p.assigned == len(p.sessions) and not awaits_retry(p, now)
    ]
    quiet = [p for p in quiet if all(s.in_flight == 0 and s.last_used < settled for s in p.sessions)]
    if not quiet:
        return None
    victim = min(quiet, key=lambda process: (len(process.sessions), process.last_used))
    pool.shared.remove(victim)
    return victim


def surplus(pool: Pool) -> list[Link]:
    """Warm processes beyond the warm target (a lowered `pool.min`, or a draining pool's none): the newest,
    as the oldest are leased first; in shared mode, spare processes with nothing in flight and no retry of
    their input due."""
    victims: list[Link] = []
    if pool.server.pool.mode != "shared":
        victims.extend(pool.warm[pool.warm_target :])
        del pool.warm[pool.warm_target :]
        return victims
    now = time.monotonic()
    beyond = sum(1 for p in pool.shared if p.assigned == 0) - pool.warm_target
    spare = [p for p in pool.shared if p.idle and not p.stopping and not awaits_retry(p, now)]
    victims.extend(spare[::-1][: max(0, beyond)])
    pool.shared[:] = [p for p in pool.shared if p not in victims]
    return victims


def unused(pool: Pool) -> list[Link]:
    """For a pool that starts draining: the surplus (every warm and spare process), and 2026-07-28
    processes with nothing in flight and no retry of their input due."""
    now = time.monotonic()
    idle = [p for p in pool.modern if p.idle and not p.stopping and not awaits_retry(p, now)]
    pool.modern[:] = [p for p in pool.modern if p not in idle]
    return [*surplus(pool), *idle]
