"""The loop both backends' controllers run (Docker's `ReplicaController`, Kubernetes' `ScaleController`).

A round every `interval` seconds, and at once when kicked (a reload, a request). A request that needs a round
to do something for it (start replicas, scale up) asks for one (`ask`) and waits until it ended: every start
and stop runs in the controller's own task, so concurrent requests start things once and a client that goes
away cancels nothing. A round's `DeployError` goes to the controller (`failed`); any other exception is a fault
of ours, logged with its traceback, and the loop goes on: the gateway's other work must.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from mcpfleet.errors import DeployError

log = logging.getLogger("mcpfleet.deploy")


class Rounds:
    """`run(round, failed)` until cancelled; `kick()` for a round now; `ask()` for a round that serves a
    request (`round(True)`), whose end the returned event tells."""

    def __init__(self, interval: float, what: str) -> None:
        self.interval = interval  # seconds between rounds when nothing kicks
        self.what = what  # for the log: "server 'web': keeping its replicas"
        self._kick = anyio.Event()
        self._done = anyio.Event()  # set when the next round ends
        self._asked = False  # a request asked for a round since the last one began
        self.running = False
        self.stopped = anyio.Event()  # set when `run` has unwound

    def kick(self) -> None:
        self._kick.set()

    def ask(self) -> anyio.Event:
        """Have the next round serve a request; the event is set when that round ended."""
        done = self._done
        self._asked = True
        self._kick.set()
        return done

    async def run(self, round_: Callable[[bool], Awaitable[None]], failed: Callable[[DeployError, bool], None]) -> None:
        """Rounds until cancelled: `round_(asked)`; its DeployError goes to `failed(error, asked)`."""
        self.running = True
        try:
            while True:
                done, self._done = self._done, anyio.Event()
                asked, self._asked = self._asked, False
                try:
                    await round_(asked)
                except DeployError as exc:
                    failed(exc, asked)
                except Exception:  # a fault of ours: the gateway's other work must go on
                    log.exception("%s failed; trying again in %g s", self.what, self.interval)
                finally:
                    done.set()
                with anyio.move_on_after(self.interval):
                    await self._kick.wait()
                self._kick = anyio.Event()
        finally:
            self.stopped.set()
