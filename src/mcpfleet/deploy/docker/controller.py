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
  started are removed; ones it found running (deployed by the CLI) are left as they were.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from mcpfleet.deploy.docker.deployer import DockerDeployer
from mcpfleet.deploy.docker.source import DockerSource
from mcpfleet.errors import DeployError
from mcpfleet.registry.model import DockerServer

log = logging.getLogger("mcpfleet.docker")

RECONCILE_INTERVAL = 2.0  # seconds between checks of the replica containers
BACKOFF = 1.0  # seconds before a failed start is tried again, doubling
BACKOFF_MAX = 60.0


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
        self._lock = anyio.Lock()  # one converge at a time: wakes and reconciles queue
        self._kick = anyio.Event()
        self._inflight = 0
        self._last_request = time.monotonic()
        self._started = False  # the first reconcile ran (on_boot decided)
        self._new_count = False  # a reload changed `replicas`: converge on it

    # --- what the gateway tells it ---------------------------------------------------------------------

    def request_started(self) -> None:
        self._inflight += 1
        self._last_request = time.monotonic()

    def request_ended(self) -> None:
        self._inflight -= 1
        self._last_request = time.monotonic()

    def configure(self, entry: DockerServer) -> None:
        """A reload changed the entry: a new `replicas` or spec is converged on at once."""
        old, self.entry = self.entry, entry
        self._new_count = self._new_count or entry.replicas != old.replicas
        self._kick.set()

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

    @property
    def retry_after(self) -> int:
        """Whole seconds until a failed start is tried again (at least 1)."""
        return max(1, round(self.retry_at - time.monotonic()))

    # --- the loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile every RECONCILE_INTERVAL seconds, and at once when told (`configure`)."""
        failing = ""  # the failure logged last: the same one again is not logged every round
        while True:
            try:
                await self.reconcile()
                if failing:
                    log.info("server %r: the Docker engine answers again", self.entry.id)
                failing = ""
            except DeployError as exc:
                if exc.message != failing:
                    log.error(
                        "server %r: %s (checked again every %g s)", self.entry.id, exc.message, RECONCILE_INTERVAL
                    )
                failing = exc.message
            with anyio.move_on_after(RECONCILE_INTERVAL):
                await self._kick.wait()
            self._kick = anyio.Event()

    async def reconcile(self) -> None:
        entry = self.entry
        replicas = await self.deployer.replicas(entry)
        current = [r for r in replicas if r.current]
        running = [r for r in current if r.running]
        idle_for = time.monotonic() - self._last_request
        if entry.idle_timeout is not None and replicas and not self._inflight and idle_for > entry.idle_timeout:
            log.info("server %r: no request for %.0f s (idle_timeout): scaling to zero", entry.id, idle_for)
            await self._converge(0)
            return
        if self._new_count:
            self._new_count = False
            want = entry.replicas
        elif not replicas:
            want = entry.replicas if not self._started and entry.starts_on_boot else 0
        else:
            want = len(current) or len(replicas)  # the containers that exist (an older spec rolls out)
        self._started = True
        if want == 0 and not replicas:
            return
        if len(running) != want or len(running) != len(replicas):
            await self._converge(want)

    async def wake(self) -> None:
        """A request found no replica: start the entry's replicas (at least one) unless they run already,
        and return when one is ready. Raises the DeployError of a start that failed (also one within the
        backoff of an earlier failure, at once)."""
        self._last_request = time.monotonic()
        async with self._lock:
            if any(r.running and r.current for r in await self.deployer.replicas(self.entry)):
                return
            if self.error is not None and time.monotonic() < self.retry_at:
                raise self.error
            await self._converge_locked(max(1, self.entry.replicas))
            if self.error is not None:
                raise self.error

    async def _converge(self, want: int) -> None:
        async with self._lock:
            if time.monotonic() < self.retry_at:
                return
            await self._converge_locked(want)

    async def _converge_locked(self, want: int) -> None:
        before = {r.name for r in await self.deployer.replicas(self.entry)}
        try:
            after = await self.deployer.up(self.entry, want)
        except DeployError as exc:
            self.error = exc
            self.retry_at = time.monotonic() + self._backoff
            log.error(
                "server %r: starting replicas failed; trying again in %g s: %s", self.entry.id, self._backoff, exc
            )
            self._backoff = min(BACKOFF_MAX, self._backoff * 2)
            return
        self.error, self.retry_at, self._backoff = None, 0.0, BACKOFF
        names = {r.name for r in after}
        self.made = (self.made | (names - before)) & names
        if names != before:
            log.info("server %r: %d replica(s) running: %s", self.entry.id, len(names), ", ".join(sorted(names)))

    async def aclose(self) -> None:
        """Remove the containers this controller started (shielded: it runs while the gateway stops)."""
        with anyio.CancelScope(shield=True):
            try:
                mine = [r.id for r in await self.deployer.replicas(self.entry) if r.name in self.made]
            except DeployError as exc:
                log.error("server %r: its containers could not be listed to remove them: %s", self.entry.id, exc)
                return
            if mine:
                log.info("server %r: removing the %d container(s) it started", self.entry.id, len(mine))
            async with anyio.create_task_group() as group:
                for container_id in mine:
                    group.start_soon(self._remove, container_id)
            self.made.clear()

    async def _remove(self, container_id: str) -> None:
        try:
            await self.deployer.engine.remove(container_id, grace=self.entry.timeouts.shutdown)
        except DeployError as exc:
            log.error("server %r: could not remove container %s: %s", self.entry.id, container_id[:12], exc)
