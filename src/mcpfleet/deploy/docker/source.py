"""The replicas of a `docker` entry: its running containers, found by their labels (Plan Document, section 11).

Each replica container publishes the entry's `port` on 127.0.0.1; its address is that published port,
never the container's own IP. The set is listed when the watch starts, again on each event of the
server's containers (the engine's event stream, filtered by label, opened from the time of the last list
so nothing between the two is missed), and at least every `relist` seconds. A container that runs but has
not answered yet is listed as not serving until one HTTP request to its MCP path gets an answer below 500
(docker-proxy accepts TCP before the server listens). During a rollout, containers of an older spec serve
only while none of the present spec does; then they drain.

The event stream ends when the engine restarts: the watch lists again and goes on. An engine that does not
answer raises `EngineUnavailableError`; the gateway keeps the last set and watches again after a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import anyio
import httpx2

from mcpfleet.deploy.docker import spec
from mcpfleet.deploy.docker.deployer import DockerDeployer, answers
from mcpfleet.registry.model import DockerServer
from mcpfleet.replicas.source import ReplicaAddress

log = logging.getLogger("mcpfleet.docker")

RELIST = 60.0  # seconds: a full list at least this often, events or not
NOT_READY_RETRY = 0.01  # seconds before probing again a running container that did not answer, doubling up to:
NOT_READY_RETRY_MAX = 0.1
PROBE_TIMEOUT = 1.0  # seconds for one readiness request


class DockerSource:
    """The replica set of one docker HTTP entry. `entry` gives the entry in force (a reload changes it)."""

    def __init__(self, deployer: DockerDeployer, entry: Callable[[], DockerServer], *, relist: float = RELIST) -> None:
        self.deployer = deployer
        self.entry = entry
        self.relist = relist
        self._ready: set[str] = set()  # ids of containers that answered once

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        last: tuple[ReplicaAddress, ...] | None = None
        retry = NOT_READY_RETRY
        async with httpx2.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as client:
            while True:
                since = time.time()
                current, pending = await self._list(client)
                if current != last:
                    yield current
                    last = current
                await self._changed(since, retry if pending else self.relist)
                retry = min(NOT_READY_RETRY_MAX, retry * 2) if pending else NOT_READY_RETRY

    async def _list(self, client: httpx2.AsyncClient) -> tuple[tuple[ReplicaAddress, ...], bool]:
        """The set as it is now, and whether a running container has not answered yet."""
        entry = self.entry()
        replicas = [r for r in await self.deployer.replicas(entry) if r.running and r.address is not None]
        self._ready &= {r.id for r in replicas}
        pending = False
        for replica in replicas:
            if replica.id not in self._ready:
                assert replica.address is not None
                if await answers(client, replica.address + entry.path):
                    self._ready.add(replica.id)
                else:
                    pending = True
        ready = [r for r in replicas if r.id in self._ready]
        fresh = any(r.current for r in ready)
        addresses = tuple(
            ReplicaAddress(r.address, serving=r.current or not fresh) for r in ready if r.address is not None
        )
        return tuple(sorted(addresses, key=lambda a: a.url)), pending

    async def _changed(self, since: float, within: float) -> None:
        """Return at the first event of the server's containers after `since`, or after `within` seconds, or
        when the event stream ends (an engine restart: the caller lists again)."""
        entry = self.entry()
        selector = spec.labels(self.deployer.project, entry.id, "replica")
        with anyio.move_on_after(within):
            events = self.deployer.engine.events(selector, since=since)
            try:
                async for _ in events:
                    return
            finally:
                await events.aclose()
