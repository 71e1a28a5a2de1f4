"""What the gateway runs for a `docker` entry: a controller for HTTP replicas, containers for stdio sessions.

`ReplicaController` keeps an HTTP entry's replica containers as the Plan Document's section 12.2 says:

- **how many**: the containers that exist are the truth (a `mcpfleet scale` from the CLI is followed, not
  undone). When none exists, `start: on_boot` starts `replicas` of them with the gateway and `on_demand`
  leaves them at zero until the first request.
- **replaced**: a replica that stopped (crashed, killed, the engine restarted) is removed and a new one
  started; a replica of an older spec (the entry changed) is rolled out: the new ones first, ready, then
  the old ones go. A start that fails backs off (1 s doubling to 60 s) and is logged; requests meanwhile
  get the failure at once (503 with `Retry-After`), never a retry storm.
- **scale to zero**: after `idle_timeout` seconds without a request (and none in flight), every replica
  stops. A request that finds none calls `wake`: concurrent callers start the replicas once, and each waits
  up to `timeouts.startup`.
- **clean-up**: when the gateway stops or the entry leaves the registry, the containers this controller
  started are removed; ones it found running (deployed by the CLI) are left as they were (an idle scale to
  zero stops those too).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import anyio

from mcpfleet.deploy.base import ReplicaStatus
from mcpfleet.deploy.docker import spec
from mcpfleet.deploy.docker.deployer import DockerDeployer
from mcpfleet.deploy.docker.engine import REQUEST_TIMEOUT
from mcpfleet.deploy.docker.source import DockerSource
from mcpfleet.deploy.rounds import Rounds
from mcpfleet.errors import DeployError
from mcpfleet.registry.model import DockerServer

log = logging.getLogger("mcpfleet.docker")

RECONCILE_INTERVAL = 2.0  # seconds between checks of the replica containers
BACKOFF = 1.0  # seconds before a failed start is tried again, doubling
BACKOFF_MAX = 60.0
WAKE_MARGIN = 5.0  # seconds a request waits for a start beyond `timeouts.startup` (engine calls, the first list)


class ReplicaController:
    """Keeps one docker HTTP entry's replicas; `run()` until cancelled, then `aclose()`."""

    def __init__(self, deployer: DockerDeployer, entry: DockerServer) -> None:
        self.deployer = deployer
        self.entry = entry
        self.source = DockerSource(deployer, lambda: self.entry)
        self.made: set[str] = set()  # names of the containers this controller started
        self.error: DeployError | None = None  # the last failed start, until one succeeds
        self.retry_at = 0.0
        self._backoff = BACKOFF
        self.rounds = Rounds(RECONCILE_INTERVAL, f"server {entry.id!r}: keeping its replicas")
        self._failing = ""  # the last round's failure, logged once while it repeats
        self._inflight = 0
        self._last_request = time.monotonic()
        self._started = False  # the first round ran (on_boot decided)
        self._new_count = False  # a reload changed `replicas`: converge on it
        self._reported: set[str] = set()  # stopped replicas already logged

    # --- what the gateway tells it ---------------------------------------------------------------------

    def request_started(self) -> None:
        self._inflight += 1
        self._last_request = time.monotonic()

    def request_ended(self) -> None:
        self._inflight -= 1
        self._last_request = time.monotonic()

    def configure(self, entry: DockerServer) -> None:
        """A reload changed the entry: a new `replicas` or spec is converged on at once (a new spec is tried
        at once even within the backoff of the old one's failure)."""
        old, self.entry = self.entry, entry
        self._new_count = self._new_count or entry.replicas != old.replicas
        if spec.spec_digest(entry) != spec.spec_digest(old):
            self.error, self.retry_at, self._backoff = None, 0.0, BACKOFF
        self.rounds.kick()

    def describe(self) -> dict[str, Any]:
        """The entry's image and start policy, the replicas it started, and the last failed start."""
        entry = self.entry
        return {
            "backend": "docker",
            "project": self.deployer.project,
            "image": entry.image,
            "start": "on_demand" if not entry.starts_on_boot else "on_boot",
            "idle_timeout": entry.idle_timeout,
            "started_here": sorted(self.made),
            "error": self.error.message if self.error is not None else None,
            "retry_in_s": max(0.0, round(self.retry_at - time.monotonic(), 1)) if self.error is not None else None,
        }

    def removed(self) -> None:
        """Nothing more to do: `aclose` removes the containers this controller started in any case."""

    def hand_over(self, successor: ReplicaController) -> None:
        """The server's id came back while this controller's runtime drained: `successor` keeps the replicas,
        including the ones this controller started (so they are removed once, by the one in charge)."""
        successor.made |= self.made
        self.made = set()

    drains = False  # a container that left the set is gone: nothing is left to drain to

    @property
    def retry_after(self) -> int:
        """Whole seconds until a failed start is tried again (at least 1)."""
        return max(1, round(self.retry_at - time.monotonic()))

    # --- the loop: every start and stop of replicas happens in `run`'s task --------------------------------

    async def run(self) -> None:
        """A round every RECONCILE_INTERVAL seconds, and at once when told (`configure`, `wake`). A failure is
        logged (once while it repeats); none ends the loop."""
        await self.rounds.run(self._round, self._round_failed)

    async def _round(self, woken: bool) -> None:
        await self.reconcile(woken)
        if self._failing:
            log.info("server %r: the Docker engine answers again", self.entry.id)
        self._failing = ""

    def _round_failed(self, exc: DeployError, woken: bool) -> None:
        if woken:
            self._failed(exc)
        if exc.message != self._failing:
            log.error("server %r: %s (tried again in %g s)", self.entry.id, exc.message, RECONCILE_INTERVAL)
        self._failing = exc.message

    async def reconcile(self, woken: bool = False) -> None:
        """One round: scale to zero when idle, start replicas for a request that found none (`woken`), else
        keep the count of containers that exist (replace stopped ones, roll out an older spec)."""
        entry = self.entry
        replicas = await self.deployer.replicas(entry)
        current = [r for r in replicas if r.current]
        running = [r for r in current if r.running]
        if self._idle() and replicas and not woken:
            log.info("server %r: no request for %g s (idle_timeout): scaling to zero", entry.id, entry.idle_timeout)
            await self._converge(0, replicas)
            return
        booting = not replicas and not self._started and entry.starts_on_boot
        if woken and not running:
            want = max(1, entry.replicas)
        elif self._new_count or booting:
            want = entry.replicas
        elif not replicas:
            want = 0
        else:
            want = len(current) or len(replicas)  # the containers that exist (an older spec rolls out)
        for replica in current:
            if not replica.running and replica.state != "created" and replica.id not in self._reported:
                self._reported.add(replica.id)
                code = f" with code {replica.exit_code}" if replica.exit_code is not None else ""
                log.warning("server %r: replica %s %s%s: replacing it", entry.id, replica.name, replica.state, code)
        if (want != 0 or replicas) and (len(running) != want or len(running) != len(replicas)):
            if await self._converge(want, replicas):
                self._new_count = False
                self._started = True  # on_boot done (a failed one is tried again after its backoff)
        else:
            self._new_count = False
            self._started = self._started or bool(replicas) or not booting

    def _idle(self) -> bool:
        idle_timeout = self.entry.idle_timeout
        return idle_timeout is not None and not self._inflight and time.monotonic() - self._last_request > idle_timeout

    async def wake(self) -> None:
        """A request found no replica: have the next round start the entry's replicas (at least one) unless
        they run, and return when it ended. The round runs in the controller's task, so a request that goes
        away cancels nothing. Raises the DeployError of a start that failed (at once within the backoff of
        an earlier one), or one saying no replica was ready within `timeouts.startup`."""
        self._last_request = time.monotonic()
        if self.error is not None and time.monotonic() < self.retry_at:
            raise copy.copy(self.error)  # a fresh one each time: the one kept must not gather tracebacks
        done = self.rounds.ask()
        within = self.entry.timeouts.startup + WAKE_MARGIN
        with anyio.move_on_after(within):
            await done.wait()
        if not done.is_set():
            raise DeployError(
                f"no replica was ready within {within:g} s (setting: timeouts.startup)", server_id=self.entry.id
            )
        if self.error is not None and time.monotonic() < self.retry_at:
            raise copy.copy(self.error)

    def _failed(self, exc: DeployError) -> None:
        self.error = exc
        self.retry_at = time.monotonic() + self._backoff
        log.error("server %r: starting replicas failed; trying again in %g s: %s", self.entry.id, self._backoff, exc)
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    async def _converge(self, want: int, replicas: list[ReplicaStatus]) -> bool:
        """`up(entry, want)` unless within a failure's backoff; whether it succeeded. `replicas`: the ones the
        round listed (so the containers this one starts are known: `made`)."""
        if time.monotonic() < self.retry_at:
            return False
        before = {r.name for r in replicas}
        if want == 0 and not self._idle():
            return False  # a request came while the idle decision was made
        try:
            after = await self.deployer.up(self.entry, want)
        except DeployError as exc:
            self._failed(exc)
            return False
        self.error, self.retry_at, self._backoff = None, 0.0, BACKOFF
        names = {r.name for r in after}
        self.made = (self.made | (names - before)) & names
        if names != before:
            running = ", ".join(sorted(names)) or "none"
            log.info("server %r: replicas running: %s", self.entry.id, running)
        return True

    async def aclose(self) -> None:
        """After `run` was cancelled: wait for it to unwind (its start removes what it made), then remove the
        containers this controller started. Shielded and bounded: it runs while the gateway stops."""
        with anyio.CancelScope(shield=True):
            if self.rounds.running:
                with anyio.move_on_after(REQUEST_TIMEOUT):
                    await self.rounds.stopped.wait()
            try:
                mine = [r.id for r in await self.deployer.replicas(self.entry) if r.name in self.made]
            except DeployError as exc:
                log.error("server %r: its containers could not be listed to remove them: %s", self.entry.id, exc)
                return
            if mine:
                log.info("server %r: removing the %d container(s) it started", self.entry.id, len(mine))
            await self.deployer.remove_all(mine, self.entry.timeouts.shutdown)
            self.made.clear()
