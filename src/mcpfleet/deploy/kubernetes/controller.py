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
from typing import Any

import anyio

from mcpfleet.deploy.container import container_spec
from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.deploy.kubernetes.api import ConflictError
from mcpfleet.deploy.kubernetes.deployer import KubernetesDeployer
from mcpfleet.deploy.kubernetes.source import DnsSource, EndpointSliceSource
from mcpfleet.errors import DeployError
from mcpfleet.registry.model import KubernetesServer
from mcpfleet.replicas.source import ReplicaAddress, ReplicaSource

log = logging.getLogger("mcpfleet.kubernetes")

RECONCILE_INTERVAL = 2.0  # seconds between rounds (activity marks, idle checks)
BACKOFF = 1.0  # seconds before a failed apply or scale is tried again, doubling
BACKOFF_MAX = 60.0
WAKE_MARGIN = 5.0  # seconds a request waits beyond `timeouts.startup`
MARK_EVERY_MAX = 30.0  # seconds: the activity mark is written at most this often (and idle_timeout / 4)


class ScaleController:
    """Keeps one kubernetes entry: `run()` until cancelled. Implements `deploy.base.Deployment`."""

    drains = True  # a terminating pod serves its sessions until it is gone

    def __init__(self, deployer: KubernetesDeployer, entry: KubernetesServer) -> None:
        self.deployer = deployer
        self.entry = entry
        self.error: DeployError | None = None  # the last failed API call (apply, scale), until a round succeeds
        self.not_ready: DeployError | None = None  # no pod was ready in time after a wake, until one is
        self.retry_at = 0.0
        self._backoff = BACKOFF
        self._applied = False
        self._removed = False
        self._kick = anyio.Event()
        self._round_done = anyio.Event()
        self._woken = False
        self._serving = anyio.Event()  # set while the source lists a serving replica
        self._inflight = 0
        self._last_request = time.monotonic()
        self._last_request_wall = 0.0  # time.time() of the last request, for the shared mark
        self._marked = 0.0  # time.time() this gateway last wrote the mark
        self.scaled_to_zero = 0  # times this gateway scaled the server to zero (for /servers and tests)
        self.source: ReplicaSource = self._source(entry)

    def _source(self, entry: KubernetesServer) -> ReplicaSource:
        if entry.discovery == "dns":
            return _DnsLater(self)
        return EndpointSliceSource(
            self.deployer.cluster,
            lambda: self._namespace,
            lambda: self.deployer.service_name(self.entry),
            manifests.PORT_NAME,
            listed=self._listed,
        )

    @property
    def _namespace(self) -> str:
        override = self.deployer.namespace_override
        return override or self.entry.namespace or self.deployer.cluster.default_namespace

    def _listed(self, replicas: tuple[ReplicaAddress, ...]) -> None:
        if any(r.serving for r in replicas):
            self._serving.set()
            self.not_ready = None  # a pod is ready now: requests wait for none
        elif self._serving.is_set():
            self._serving = anyio.Event()

    # --- what the gateway tells it ---------------------------------------------------------------------

    def request_started(self) -> None:
        self._inflight += 1
        self._last_request = time.monotonic()
        self._last_request_wall = time.time()

    def request_ended(self) -> None:
        self._inflight -= 1
        self._last_request = time.monotonic()
        self._last_request_wall = time.time()

    def configure(self, entry: KubernetesServer) -> None:
        """A reload changed the entry: apply it again at once (a new spec rolls the pods out)."""
        self.entry = entry
        self._applied = False
        self.error, self.retry_at, self._backoff = None, 0.0, BACKOFF
        self._kick.set()

    def removed(self) -> None:
        """The entry left the registry: `aclose` deletes the objects a gateway created for it."""
        self._removed = True

    def hand_over(self, successor: Any) -> None:
        """Nothing to hand over: the objects belong to the cluster, not to this gateway."""

    def describe(self) -> dict[str, Any]:
        entry = self.entry
        return {
            "backend": "kubernetes",
            "project": self.deployer.project,
            "namespace": self._namespace,
            "image": entry.image,
            "chart": entry.chart,
            "discovery": entry.discovery,
            "start": "on_demand" if not entry.starts_on_boot else "on_boot",
            "idle_timeout": entry.idle_timeout,
            "scaled_to_zero": self.scaled_to_zero,
            "error": failed.message if (failed := self.error or self.not_ready) is not None else None,
            "retry_in_s": max(0.0, round(self.retry_at - time.monotonic(), 1)) if failed is not None else None,
        }

    @property
    def retry_after(self) -> int:
        return max(1, round(self.retry_at - time.monotonic()))

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        failing = ""
        while True:
            done, self._round_done = self._round_done, anyio.Event()
            woken, self._woken = self._woken, False
            try:
                await self.reconcile(woken)
                failing = ""
            except DeployError as exc:
                self._failed(exc)
                if exc.message != failing:
                    log.error("server %r: %s (tried again in %g s)", self.entry.id, exc.message, self._backoff)
                failing = exc.message
            except Exception:  # a fault of ours: the gateway's other work must go on
                log.exception("server %r: keeping its Deployment failed; trying again", self.entry.id)
            finally:
                done.set()
            with anyio.move_on_after(RECONCILE_INTERVAL):
                await self._kick.wait()
            self._kick = anyio.Event()

    async def reconcile(self, woken: bool = False) -> None:
        """One round: apply the objects if not yet; scale up for a request that found no pod; write the
        activity mark; scale to zero when every gateway was idle for `idle_timeout`."""
        entry = self.entry
        if time.monotonic() < self.retry_at and not woken:
            return
        if not self._applied:
            if entry.chart is None:
                start = entry.replicas if entry.starts_on_boot else 0
                await self.deployer.apply(entry, replicas_if_created=start, created_by="gateway")
            self._applied = True
        if woken:
            found = await self.deployer.deployment(entry)
            if found is None:
                raise DeployError("its Deployment does not exist (install its chart)", server_id=entry.id)
            if not (found.get("spec") or {}).get("replicas"):
                want = max(1, entry.replicas)
                log.info("server %r: a request found no pod: scaling to %d", entry.id, want)
                await self.deployer.scale(entry, want)
                await self._mark(time.time())
        if self.error is not None:
            self.error, self.retry_at = None, 0.0
        if self.not_ready is None:
            self._backoff = BACKOFF
        if entry.idle_timeout is None:
            return
        now = time.time()
        every = min(MARK_EVERY_MAX, entry.idle_timeout / 4)
        active = self._inflight > 0 or self._last_request_wall > self._marked
        if active and now - self._marked >= every:
            await self._mark(self._last_request_wall if not self._inflight else now)
        elif not self._inflight and time.monotonic() - self._last_request > entry.idle_timeout:
            await self._scale_down_if_idle(now)

    async def _mark(self, when: float) -> None:
        await self.deployer.annotate(self.entry, manifests.LAST_REQUEST, f"{when:.3f}")
        self._marked = time.time()

    async def _scale_down_if_idle(self, now: float) -> None:
        entry = self.entry
        assert entry.idle_timeout is not None
        found = await self.deployer.deployment(entry)
        if found is None or not (found.get("spec") or {}).get("replicas"):
            return
        metadata = found.get("metadata") or {}
        try:
            shared = float((metadata.get("annotations") or {}).get(manifests.LAST_REQUEST) or 0)
        except ValueError:
            shared = 0.0
        if now - shared <= entry.idle_timeout:
            return  # another gateway served a request within idle_timeout
        try:
            await self.deployer.scale(entry, 0, resource_version=metadata.get("resourceVersion"))
        except ConflictError:
            return  # it changed since it was read: maybe another gateway's mark; the next round decides
        self.scaled_to_zero += 1
        log.info(
            "server %r: no request through any gateway for %g s (idle_timeout): scaled to zero",
            entry.id,
            entry.idle_timeout,
        )

    async def wake(self) -> None:
        """A request found no serving pod: scale up once (in the controller's task) and wait for a serving
        endpoint, up to `timeouts.startup` + 5 s. DeployError if the scale failed (at once within the
        backoff of an earlier failure) or no pod was ready in time."""
        self._last_request = time.monotonic()
        self._last_request_wall = time.time()
        failed = self.error or self.not_ready
        if failed is not None and time.monotonic() < self.retry_at:
            raise copy.copy(failed)  # within the backoff of a failure: at once, no new wait
        done = self._round_done
        self._woken = True
        self._kick.set()
        within = self.entry.timeouts.startup + WAKE_MARGIN
        with anyio.move_on_after(within):
            await done.wait()
            if self.error is not None:
                raise copy.copy(self.error)
            await self._serving.wait()
            return
        raise DeployError(f"no pod was ready within {within:g} s (setting: timeouts.startup)", server_id=self.entry.id)

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

    async def watch(self) -> Any:
        controller = self.controller
        service = await controller.deployer.service_name(controller.entry)
        port = container_spec(controller.entry).port if controller.entry.image else controller.entry.port
        assert port is not None
        source = DnsSource(f"{service}.{controller._namespace}.svc", port, listed=controller._listed)
        async for found in source.watch():
            yield found
