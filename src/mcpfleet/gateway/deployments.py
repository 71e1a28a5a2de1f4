"""How the gateway serves `docker` and `kubernetes` entries (Plan Document, sections 12.2 and 12.4).

A docker entry is served exactly like the entry it becomes once its containers run:

- with a `port`, like an `http` entry whose replicas come from a replica source (`DockerSource`: the
  containers' ports published on 127.0.0.1) and whose replicas a `ReplicaController` starts, replaces,
  scales to zero and back (`served_form` gives that http entry; its `endpoints` are never read);
- without one, like a `stdio` entry whose processes are containers (`ContainerProcess`), pooled by the same
  pool as local processes: session and shared modes, `pool.min`, caps, recycling, crash loops.

A kubernetes entry is served like an `http` entry whose replicas are the ready endpoints of its headless
Service, kept by a `ScaleController` (objects applied, scale to zero and back shared by the gateway replicas).

`Deployments` holds the one engine connection and the one API connection the gateway uses, made on first
use; a backend that does not answer fails only its entries' requests (503 with the reason), never the rest.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable

import anyio

from mcpfleet.deploy.docker import spec
from mcpfleet.deploy.docker.attach import ContainerProcess, owner_id
from mcpfleet.deploy.docker.controller import ReplicaController
from mcpfleet.deploy.docker.deployer import DockerDeployer
from mcpfleet.deploy.docker.engine import Engine
from mcpfleet.deploy.kubernetes.api import Cluster
from mcpfleet.deploy.kubernetes.controller import ScaleController
from mcpfleet.deploy.kubernetes.deployer import KubernetesDeployer
from mcpfleet.deploy.kubernetes.source import SliceHub
from mcpfleet.gateway.upstream.backend import Backend, ProcessBackend
from mcpfleet.registry.model import DockerServer, Endpoint, HttpServer, KubernetesServer, Server, StdioServer

log = logging.getLogger("mcpfleet.docker")


def backend(entry: Server | None) -> str | None:
    """`docker` or `kubernetes` for an entry whose replicas a backend runs; None for the others."""
    if isinstance(entry, DockerServer | KubernetesServer):
        return entry.type
    return None


def deployed(entry: Server | None) -> bool:
    """A backend starts and stops this entry's HTTP replicas (a `ReplicaController` or `ScaleController`
    keeps them): a docker entry with a port, or any kubernetes entry (stdio ones run behind the adapter)."""
    return isinstance(entry, KubernetesServer) or (isinstance(entry, DockerServer) and not entry.stdio)


def served_form(entry: Server) -> Server:
    """The http or stdio entry a docker or kubernetes entry is served as; any other entry as it is. A
    kubernetes entry is always HTTP: its pods serve MCP themselves, or through `mcpfleet adapter`."""
    if isinstance(entry, KubernetesServer):
        return HttpServer(
            id=entry.id,
            description=entry.description,
            timeouts=entry.timeouts,
            health=entry.health,
            endpoints=(Endpoint(url="http://replicas-are-discovered.invalid"),),
            path=entry.path,
            transport="streamable-http",
            balancer=entry.balancer,
        )
    if not isinstance(entry, DockerServer):
        return entry
    common = {
        "id": entry.id,
        "description": entry.description,
        "timeouts": entry.timeouts,
        "health": entry.health,
    }
    if entry.stdio:
        # What /servers shows; a reload that changes the container spec makes a new runtime (app.py).
        argv = (f"docker:{entry.image}", *(entry.command or ()), *(entry.args or ()))
        return StdioServer(
            **common,
            command=argv,
            env=entry.env,
            secret_env=entry.secret_env,
            stateless=entry.stateless,
            pool=entry.pool,
        )
    return HttpServer(
        **common,
        # A placeholder that routes nowhere: the replicas are discovered.
        endpoints=(Endpoint(url=f"http://replicas-are-discovered.invalid:{entry.port}"),),
        path=entry.path,
        transport="streamable-http",
        balancer=entry.balancer,
    )


class Deployments:
    """The gateway's deployment backends: one Docker engine connection and one Kubernetes API connection,
    each made on first use; a controller per deployed entry."""

    def __init__(self, *, project: str | None = None, address: str | None = None) -> None:
        self.engine = Engine(address)
        self.deployer = DockerDeployer(self.engine, spec.project_name(project))
        self.cluster = Cluster()
        self.kubernetes = KubernetesDeployer(self.cluster, self.deployer.project)
        self._hubs: dict[str, SliceHub] = {}
        self._start, self._starting = anyio.create_memory_object_stream[SliceHub](math.inf)

    def controller(self, entry: DockerServer | KubernetesServer) -> ReplicaController | ScaleController:
        if isinstance(entry, KubernetesServer):
            return ScaleController(self.kubernetes, entry, self.slice_hub)
        return ReplicaController(self.deployer, entry)

    def slice_hub(self, namespace: str) -> SliceHub:
        """The one watch of `namespace`'s EndpointSlices that every kubernetes server there shares; started
        by `run` on first use."""
        hub = self._hubs.get(namespace)
        if hub is None:
            hub = self._hubs[namespace] = SliceHub(self.cluster, namespace)
            self._start.send_nowait(hub)
        return hub

    async def run(self) -> None:
        """Run the shared watches (`slice_hub`) until cancelled: a task of the gateway's group."""
        async with anyio.create_task_group() as tg, self._starting:
            async for hub in self._starting:
                tg.start_soon(hub.run)

    def containers(self, entry: DockerServer, current: Callable[[], Server | None]) -> Callable[[int], Backend]:
        """How a docker stdio entry's processes start: each a container (`ContainerProcess`) of the entry in
        force when it starts (`current()`, so a reload's new timeouts reach new containers; `entry` once the
        server left the registry), labelled with this gateway as its owner."""
        owner = owner_id()

        def start(max_message_bytes: int) -> Backend:
            now = current()
            docker = now if isinstance(now, DockerServer) and now.stdio else entry
            process = ContainerProcess(
                self.engine, docker, project=self.deployer.project, owner=owner, max_line=max_message_bytes
            )
            return ProcessBackend.of(process)

        return start

    async def collect_orphans(self) -> None:
        """Remove the stdio containers of this project that a gateway or CLI process of this host attached to
        and that is gone (it crashed, so it never removed them): their `mcpfleet.owner` is `<host>:<pid>`."""
        host = socket.gethostname()
        found = await self.engine.containers(spec.labels(self.deployer.project, role="session"))
        orphans = []
        for summary in found:
            owner_host, _, pid = ((summary.get("Labels") or {}).get(spec.OWNER) or "").rpartition(":")
            if owner_host == host and pid.isdigit() and not _alive(int(pid)):
                orphans.append(summary["Id"])
        if orphans:
            log.info("removing %d stdio container(s) left by processes that are gone", len(orphans))
            await self.deployer.remove_all(orphans, 0)

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.cluster.aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
