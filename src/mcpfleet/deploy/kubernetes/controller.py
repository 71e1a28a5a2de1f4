"""What the gateway runs for a `kubernetes` entry: its objects kept applied, its pods found through the
Service's EndpointSlices, and scale to zero and back shared by every gateway replica (Plan Document, 12.4).

- **objects**: when the gateway starts (and on a reload that changes the entry) the entry's objects are
  applied; a new Deployment starts with `replicas` pods for `start: on_boot` and none for `on_demand`. An
  existing Deployment keeps its count (a `mcpfleet scale`, or another gateway's scale, is not undone). A
  `chart` entry's objects are the chart's: nothing is applied, its Deployment and Service are found by label.
- **shared activity**: a gateway that served a request (or holds one in flight) writes the time to the
  Deployment's annotation `mcpfleet.io/last-request`, at most once per `idle_timeout / 4` (and 30 s). A
  gateway scales the Deployment to zero only when its own last request and the annotation are both older
  than `idle_timeout`, and only if the Deployment did not change since it read the annotation (the scale
  carries the `resourceVersion` it read; a conflict means another gateway was just active). So a server in
  use through one gateway replica is never scaled down by another, with no store besides the Deployment.
- **wake**: a request that finds no ready pod scales the Deployment to its `replicas` (at least one) once,
  in the controller's task, and waits (up to `timeouts.startup` + 5 s) for a serving endpoint; past it,
  503 with `Retry-After`. A failed scale backs off (1 s doubling to 60 s) and requests meanwhile get its
  error at once: no retry storm.
- **clean-up**: the objects stay when a gateway stops (other replicas use them, and the next start finds
  them); when the entry leaves the registry, the objects a gateway created are deleted.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from mcpfleet.deploy.container import container_spec
from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.deploy.kubernetes.api import ConflictError
from mcpfleet.deploy.kubernetes.deployer import KubernetesDeployer
from mcpfleet.deploy.kubernetes.source import DnsSource, EndpointSliceSource, SliceHub
from mcpfleet.deploy.rounds import Rounds
from mcpfleet.errors import DeployError
from mcpfleet.registry.model import KubernetesServer
from mcpfleet.replicas.source import ReplicaAddress, ReplicaSource

log = logging.getLogger("mcpfleet.kubernetes")

RECONCILE_INTERVAL = 2.0  # seconds between rounds (activity marks, idle checks)
BACKOFF = 1.0  # seconds before a failed apply or scale is tried again, doubling
BACKOFF_MAX = 60.0
WAKE_MARGIN = 5.0  # seconds a request waits beyond `timeouts.startup`
MARK_EVERY_MAX = 30.0  # seconds: the activity mark is written at most this often (and idle_timeout / 4)
# Seconds a gateway that found the server idle waits, then reads the Deployment again and scales to zero only
# if nothing changed: every other gateway has a round (RECONCILE_INTERVAL) to write a mark meanwhile.
QUIET = RECONCILE_INTERVAL * 2 + 1


def place(entry: KubernetesServer) -> tuple[object, ...]:
    """Where a kubernetes entry's objects and replicas are. A reload that changes it gets a new runtime and
    controller (a new watch), and the old one deletes what a gateway created in the old place."""
    return (entry.namespace, entry.image is None, entry.chart, entry.discovery)


class ScaleController:
    """Keeps one kubernetes entry: `run()` until cancelled. Implements `deploy.base.Deployment`."""

    drains = True  # a terminating pod serves its sessions until it is gone

    def __init__(self, deployer: KubernetesDeployer, entry: KubernetesServer, hubs: Callable[[str], SliceHub]) -> None:
        self.deployer = deployer
        self.entry = entry
        self.hubs = hubs
        self.error: DeployError | None = None  # the last failed apply or scale, until one succeeds
        self.not_ready: DeployError | None = None  # no pod was ready in time after a wake, until one is
        self.retry_at = 0.0
        self._backoff = BACKOFF
        self._applied = False
        self._removed = False
        self.rounds = Rounds(RECONCILE_INTERVAL, f"server {entry.id!r}: keeping its Deployment")
        self._failing = ""  # the last round's failure, logged once while it repeats
        self._serving = anyio.Event()  # set while the source lists a serving replica
        self._listed_any = False  # the source's last set had a replica (serving or draining)
        self._inflight = 0
        self._last_request = time.monotonic()
        self._last_request_wall = 0.0  # time.time() of the last request, for the shared mark
        self._marked = 0.0  # time.time() this gateway last wrote the mark
        self._idle_checked = 0.0  # time.monotonic() of the last idle check that read the Deployment
        self._mark_failing = ""
        self.scaled_to_zero = 0  # times this gateway scaled the server to zero (for /servers and tests)
        self.source: ReplicaSource = self._source(entry)

    def _source(self, entry: KubernetesServer) -> ReplicaSource:
        if entry.discovery == "dns":
            return _DnsLater(self)
        return EndpointSliceSource(
            self.hubs,
            lambda: self.deployer.namespace(self.entry),
            lambda: self.deployer.service_name(self.entry),
            manifests.PORT_NAME,
            listed=self._listed,
        )

    def _listed(self, replicas: tuple[ReplicaAddress, ...]) -> None:
        self._listed_any = bool(replicas)
        if any(r.serving for r in replicas):
            self._serving.set()
            self.not_ready = None  # a pod is ready now: requests wait for none
            self._backoff = BACKOFF
        elif self._serving.is_set():
            self._serving = anyio.Event()

    # --- what the gateway tells it ---------------------------------------------------------------------

    def request_started(self) -> None:
        self._inflight += 1
        self._last_request = time.monotonic()
        self._last_request_wall = time.time()
        if self.entry.idle_timeout is not None and self._last_request_wall - self._marked >= self._mark_every:
            self.rounds.kick()  # the first request after a quiet spell is marked now, not at the next round

    def request_ended(self) -> None:
        self._inflight -= 1
        self._last_request = time.monotonic()
        self._last_request_wall = time.time()

    @property
    def _mark_every(self) -> float:
        return min(MARK_EVERY_MAX, (self.entry.idle_timeout or MARK_EVERY_MAX * 4) / 4)

    def configure(self, entry: KubernetesServer) -> None:
        """A reload changed the entry: apply it again at once (a new spec rolls the pods out)."""
        self.entry = entry
        self._applied = False
        self.error, self.retry_at, self._backoff = None, 0.0, BACKOFF
        self.rounds.kick()

    def removed(self) -> None:
        """The entry left the registry: `aclose` deletes the objects a gateway created for it."""
        self._removed = True

    def hand_over(self, successor: Any) -> None:
        """The entry came back while this controller's runtime drained: when the successor keeps its objects
        in the same place, they are the successor's now, and this one deletes nothing when it ends."""
        if isinstance(successor, ScaleController) and place(successor.entry) == place(self.entry):
            self._removed = False

    def describe(self) -> dict[str, Any]:
        entry = self.entry
        failed = self.error or self.not_ready
        return {
            "backend": "kubernetes",
            "project": self.deployer.project,
            "namespace": self.deployer.namespace_known(entry),
            "image": entry.image,
            "chart": entry.chart,
            "discovery": entry.discovery,
            "start": "on_demand" if not entry.starts_on_boot else "on_boot",
            "idle_timeout": entry.idle_timeout,
            "scaled_to_zero": self.scaled_to_zero,
            "error": failed.message if failed is not None else None,
            "retry_in_s": max(0.0, round(self.retry_at - time.monotonic(), 1)) if failed is not None else None,
        }

    @property
    def retry_after(self) -> int:
        return max(1, round(self.retry_at - time.monotonic()))

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """A round every RECONCILE_INTERVAL seconds, and at once when told (`configure`, `wake`, the first
        request after a quiet spell). A failure backs off and is logged once while it repeats."""
        await self.rounds.run(self._round, self._round_failed)

    async def _round(self, woken: bool) -> None:
        await self.reconcile(woken)
        self._failing = ""

    def _round_failed(self, exc: DeployError, woken: bool) -> None:
        self._failed(exc)
        if exc.message != self._failing:
            log.error("server %r: %s (tried again in %g s)", self.entry.id, exc.message, self._backoff)
        self._failing = exc.message

    async def reconcile(self, woken: bool = False) -> None:
        """One round: the activity mark first (it must never lapse while requests come, whatever else
        fails); then the objects applied if not yet (within a failure's backoff only for a request); a scale
        up for a request that found no pod; a scale to zero when every gateway was idle for `idle_timeout`."""
        entry = self.entry
        await self._mark_if_active()
        if time.monotonic() < self.retry_at and not woken:
            return
        if not self._applied and entry.chart is None:
            start = entry.replicas if entry.starts_on_boot else 0
            await self.deployer.apply(entry, replicas_if_created=start, created_by="gateway")
        self._applied = True
        if woken:
            await self._scale_up()
        self.error = None
        if self.not_ready is None:
            self.retry_at = 0.0
        if self._still_idle():
            await self._scale_down_if_idle()

    async def _scale_up(self) -> None:
        """A request found no serving pod: the Deployment at `replicas` (at least 1), marked active first
        (so no gateway reading it between the two scales it back down). A Deployment that is gone (deleted
        by hand, or by a removal that raced a re-add) is applied again."""
        entry = self.entry
        found = await self.deployer.deployment(entry)
        if found is None and entry.chart is None:
            await self.deployer.apply(entry, replicas_if_created=0, created_by="gateway")
            found = await self.deployer.deployment(entry)
        if found is None:
            raise DeployError(
                "no Deployment labelled for it: install its chart with `mcpfleet deploy`", server_id=entry.id
            )
        if not (found.get("spec") or {}).get("replicas"):
            want = max(1, entry.replicas)
            await self._mark(time.time())
            log.info("server %r: a request found no pod: scaling to %d", entry.id, want)
            await self.deployer.scale(entry, want)
        if isinstance(self.source, _DnsLater):
            self.source.refresh()  # DNS is polled: look again now

    async def _mark_if_active(self) -> None:
        """Write the activity mark when this gateway served or holds requests and the last mark is older
        than `idle_timeout / 4` (30 s at most). A failure is logged and tried again next round."""
        if self.entry.idle_timeout is None:
            return
        now = time.time()
        active = self._inflight > 0 or self._last_request_wall > self._marked
        if not active or now - self._marked < self._mark_every:
            return
        try:
            await self._mark(now if self._inflight else self._last_request_wall)
            self._mark_failing = ""
        except DeployError as exc:
            if exc.message != self._mark_failing:
                log.warning("server %r: its activity mark could not be written: %s", self.entry.id, exc.message)
            self._mark_failing = exc.message

    async def _mark(self, when: float) -> None:
        await self.deployer.annotate(self.entry, manifests.LAST_REQUEST, f"{when:.3f}")
        self._marked = time.time()

    def _still_idle(self) -> bool:
        idle_timeout = self.entry.idle_timeout
        return idle_timeout is not None and not self._inflight and time.monotonic() - self._last_request > idle_timeout

    async def _scale_down_if_idle(self) -> None:
        """Scale to zero when no gateway served a request for `idle_timeout`: this gateway's own clock, and the
        shared mark. Two reads `QUIET` seconds apart must find the Deployment unchanged (any gateway's mark
        meanwhile changes it), and the scale carries the `resourceVersion` read, so a mark written after the
        second read makes it a conflict. Checked at most every `idle_timeout / 4`, and not while the source
        lists no pod (nothing to scale down: no API call for an idle server at zero)."""
        entry = self.entry
        assert entry.idle_timeout is not None
        if not self._listed_any or time.monotonic() - self._idle_checked < self._mark_every:
            return
        self._idle_checked = time.monotonic()
        first = await self.deployer.deployment(entry)
        if first is None or not (first.get("spec") or {}).get("replicas") or not self._idle_by_mark(first):
            return
        await anyio.sleep(QUIET)
        second = await self.deployer.deployment(entry)
        version = ((second or {}).get("metadata") or {}).get("resourceVersion")
        if second is None or version != (first.get("metadata") or {}).get("resourceVersion"):
            return  # it changed meanwhile: maybe another gateway's mark; decided again later
        if not self._still_idle():
            return  # a request came here meanwhile
        try:
            await self.deployer.scale(entry, 0, resource_version=version)
        except ConflictError:
            return
        self.scaled_to_zero += 1
        log.info(
            "server %r: no request through any gateway for %g s (idle_timeout): scaled to zero",
            entry.id,
            entry.idle_timeout,
        )

    def _idle_by_mark(self, deployment: dict[str, Any]) -> bool:
        assert self.entry.idle_timeout is not None
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        try:
            shared = float(annotations.get(manifests.LAST_REQUEST) or 0)
        except ValueError:
            shared = 0.0
        return time.time() - shared > self.entry.idle_timeout

    async def wake(self) -> None:
        """A request found no serving pod: have the controller's task scale up (again each round while none
        serves, in case another gateway scaled down meanwhile) and wait for a serving endpoint, up to
        `timeouts.startup` + 5 s. DeployError if the scale failed, or no pod was ready in time; within the
        backoff of such a failure (1 s doubling to 60 s), at once."""
        self._last_request = time.monotonic()
        self._last_request_wall = time.time()
        failed = self.error or self.not_ready
        if failed is not None and time.monotonic() < self.retry_at:
            raise copy.copy(failed)  # a fresh one each time: the one kept must not gather tracebacks
        within = self.entry.timeouts.startup + WAKE_MARGIN
        with anyio.move_on_after(within):
            while not self._serving.is_set():
                await self.rounds.ask().wait()
                if self.error is not None:
                    raise copy.copy(self.error)
                with anyio.move_on_after(RECONCILE_INTERVAL):
                    await self._serving.wait()
            return
        reason = await self._reason()
        self.not_ready = DeployError(
            f"no pod was ready within {within:g} s (setting: timeouts.startup){reason}; see `mcpfleet status"
            f" {self.entry.id}` and `mcpfleet logs {self.entry.id}`",
            server_id=self.entry.id,
        )
        self.retry_at = time.monotonic() + self._backoff
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)
        raise copy.copy(self.not_ready)

    async def _reason(self) -> str:
        """The Deployment's own word on why no pod is ready (a failing condition's message), if it has one."""
        try:
            found = await self.deployer.deployment(self.entry)
        except DeployError:
            return ""
        for condition in ((found or {}).get("status") or {}).get("conditions") or []:
            if condition.get("status") == "False" and condition.get("message"):
                return f" ({condition['message']})"
        return ""

    def _failed(self, exc: DeployError) -> None:
        self.error = exc
        self.retry_at = time.monotonic() + self._backoff
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    async def aclose(self) -> None:
        """When the entry left the registry: delete the objects a gateway created for it (shielded, bounded).
        When the gateway only stops: nothing (the objects serve the other gateway replicas)."""
        if not self._removed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                removed = await self.deployer.down(self.entry.id, self.entry, created_by="gateway")
            except DeployError as exc:
                log.error("server %r: its objects could not be removed: %s", self.entry.id, exc)
                return
            if removed:
                log.info("server %r left the registry: removed %s", self.entry.id, [c.name for c in removed])


class _DnsLater:
    """`discovery: dns`: the headless Service's DNS name, known once the namespace is (first use)."""

    def __init__(self, controller: ScaleController) -> None:
        self.controller = controller
        self.source: DnsSource | None = None

    def refresh(self) -> None:
        if self.source is not None:
            self.source.refresh()

    async def watch(self) -> Any:
        controller = self.controller
        service = await controller.deployer.service_name(controller.entry)
        port = container_spec(controller.entry).port if controller.entry.image else controller.entry.port
        assert port is not None
        namespace = await controller.deployer.namespace(controller.entry)
        source = self.source = DnsSource(f"{service}.{namespace}.svc", port, listed=controller._listed)
        async for found in source.watch():
            yield found
