"""Idle sessions expire together: the table's `expire` ends them concurrently, bounded, and one that fails
to end does not keep the others alive. Sessions here are in-memory implementations of the table's own
`Session` protocol, whose `aclose` takes as long as stopping a process does."""

from __future__ import annotations

import time

import anyio
import pytest

from mcpfleet.gateway.sealing import Sealer
from mcpfleet.gateway.session import CLOSING_AT_ONCE, SessionTable


class SlowSession:
    """Stands for a stdio session: ending it stops a process, which takes `stop` seconds."""

    closing = 0
    peak = 0

    def __init__(self, *, idle: bool = True, fails: bool = False, stop: float = 0.5) -> None:
        self.server_id = "s"
        self.upstream_closed = False
        self.last_used = time.monotonic() - 60
        self.idle = idle
        self.fails = fails
        self.stop = stop
        self.closed = False

    async def aclose(self) -> None:
        SlowSession.closing += 1
        SlowSession.peak = max(SlowSession.peak, SlowSession.closing)
        try:
            await anyio.sleep(self.stop)
            if self.fails:
                raise RuntimeError("the process would not stop")
            self.closed = True
        finally:
            SlowSession.closing -= 1


@pytest.mark.parametrize("count", [10, 300])
def test_expiry_ends_every_idle_session_together_and_bounded(count: int) -> None:
    table = SessionTable(Sealer(["k"]))
    sessions = [SlowSession() for _ in range(count)]
    busy = SlowSession(idle=False)  # a stream open or a request in flight
    tokens = [table.issue(s) for s in [*sessions, busy]]
    SlowSession.peak = 0

    expired = anyio.run(table.expire, 30.0)

    assert set(map(id, expired)) == set(map(id, sessions))
    assert all(s.closed for s in sessions) and not busy.closed
    assert SlowSession.peak == min(count, CLOSING_AT_ONCE)  # together, never more than the bound at once
    assert all(table.get(t, "s") is None for t in tokens[:-1])
    assert table.get(tokens[-1], "s") is busy and len(table) == 1


def test_a_session_that_fails_to_end_does_not_stop_the_others() -> None:
    table = SessionTable(Sealer(["k"]))
    sessions = [SlowSession(fails=index % 3 == 0, stop=0.05) for index in range(12)]
    for session in sessions:
        table.issue(session)

    expired = anyio.run(table.expire, 30.0)

    assert len(expired) == 12 and len(table) == 0
    assert all(s.closed for s in sessions if not s.fails)


def test_recently_used_sessions_stay() -> None:
    table = SessionTable(Sealer(["k"]))
    fresh = SlowSession()
    fresh.last_used = time.monotonic()
    table.issue(fresh)
    assert anyio.run(table.expire, 30.0) == [] and len(table) == 1
