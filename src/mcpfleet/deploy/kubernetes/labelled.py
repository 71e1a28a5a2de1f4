"""`gateway.discovery: labels`: servers the registry does not list, found as Services labelled for mcpfleet
(Plan Document, section 11). A team adds a server by labelling its Service; the gateway's configuration is not
touched. Off unless the registry turns it on: discovery then adds servers, which it otherwise never does.

A Service is picked up when it carries `mcpfleet.io/server: <id>` (a valid server id), was not made by
mcpfleet itself (`app.kubernetes.io/managed-by` other than `mcpfleet`: those belong to registry entries), in one of
`gateway.discovery_namespaces` (default: the namespace of the kubeconfig context, or the gateway's own in a
cluster). It is served as an `http` entry at `/<id>/mcp` whose replicas are its EndpointSlices' endpoints
(`EndpointSliceSource`, at the Service's port named `mcp`, or its only port), at the path the annotation
`mcpfleet.io/path` gives (default `/mcp`). An id the registry lists is the registry's: the Service is left
alone. The gateway neither scales nor deletes what it discovers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.deploy.kubernetes.api import KINDS, Cluster
from mcpfleet.deploy.kubernetes.source import EndpointSliceSource, SliceHub
from mcpfleet.registry.model import RESERVED_IDS, SERVER_ID, Endpoint, HttpServer

log = logging.getLogger("mcpfleet.kubernetes")

PATH = "mcpfleet.io/path"  # annotation: the MCP path of a labelled Service (default /mcp)


@dataclass(frozen=True)
class Labelled:
    """One discovered server: its entry, and where its replicas come from."""

    entry: HttpServer
    source: EndpointSliceSource
    namespace: str
    service: str


def entry_of(service: Mapping[str, Any], namespace: str) -> tuple[str, HttpServer, str] | None:
    """`(id, entry, port name)` for a labelled Service; None when its id, port or path cannot be served (logged)."""
    metadata = service.get("metadata") or {}
    server_id = (metadata.get("labels") or {}).get(manifests.SERVER, "")
    name = metadata.get("name", "")
    if not SERVER_ID.fullmatch(server_id) or server_id in RESERVED_IDS:
        log.warning(
            "Service %s/%s: label %s=%r is not a usable server id", namespace, name, manifests.SERVER, server_id
        )
        return None
    ports = (service.get("spec") or {}).get("ports") or []
    named = [p for p in ports if p.get("name") == manifests.PORT_NAME] or (ports if len(ports) == 1 else [])
    if not named:
        log.warning("Service %s/%s: no port named %r (nor a single port)", namespace, name, manifests.PORT_NAME)
        return None
    path = (metadata.get("annotations") or {}).get(PATH) or "/mcp"
    try:
        entry = HttpServer(
            id=server_id,
            description=f"discovered: Service {namespace}/{name}",
            endpoints=(Endpoint(url="http://replicas-are-discovered.invalid"),),
            path=path,
            transport="streamable-http",
        )
    except ValueError as exc:
        log.warning("Service %s/%s: %s", namespace, name, exc)
        return None
    return server_id, entry, named[0].get("name") or ""


class LabelledServices:
    """Watches labelled Services in `namespaces` (empty: the default namespace) and tells every discovered
    server by id (`run`)."""

    def __init__(self, cluster: Cluster, namespaces: tuple[str, ...], hubs: Callable[[str], SliceHub]) -> None:
        self.cluster = cluster
        self.hubs = hubs
        self.namespaces = namespaces
        self._found: dict[str, dict[str, Labelled]] = {}  # namespace -> id -> server
        self._changed = anyio.Event()

    async def run(self, found: Callable[[dict[str, Labelled]], None]) -> None:
        """Until cancelled: tell `found` every discovered server by id, first as found, then after each
        change. The API failing is retried per namespace with backoff (1 s doubling to 60 s); the servers
        found stay meanwhile."""
        await self.cluster.client()
        namespaces = self.namespaces or (self.cluster.default_namespace,)
        last: dict[str, tuple[str, HttpServer]] | None = None
        async with anyio.create_task_group() as tg:
            for namespace in namespaces:
                tg.start_soon(self._follow, namespace)
            while True:
                await self._changed.wait()
                self._changed = anyio.Event()
                merged: dict[str, Labelled] = {}
                for namespace in namespaces:
                    for server_id, labelled in self._found.get(namespace, {}).items():
                        merged.setdefault(server_id, labelled)
                shape = {i: (f.service, f.entry) for i, f in merged.items()}
                if shape != last:
                    last = shape
                    found(merged)

    async def _follow(self, namespace: str) -> None:
        backoff = 1.0
        while True:
            try:
                await self._list_and_watch(namespace)
                backoff = 1.0
            except Exception as exc:  # the API failing must not end discovery: the servers found stay
                log.warning("labelled Services in %r: %s (again in %g s)", namespace, exc, backoff)
                await anyio.sleep(backoff)
                backoff = min(60.0, backoff * 2)

    async def _list_and_watch(self, namespace: str) -> None:
        # Services mcpfleet made (managed-by=mcpfleet) belong to registry entries, this gateway's or another's.
        query = {"labelSelector": f"{manifests.SERVER},{manifests.MANAGED_BY}!={manifests.MANAGER}"}
        async for services in self.cluster.follow(KINDS["Service"], namespace, query):
            self._publish(namespace, services)

    def _publish(self, namespace: str, services: Mapping[str, Mapping[str, Any]]) -> None:
        found: dict[str, Labelled] = {}
        before = self._found.get(namespace, {})
        for name, service in sorted(services.items()):
            made = entry_of(service, namespace)
            if made is None:
                continue
            server_id, entry, port_name = made
            if server_id in found:
                log.warning(
                    "Services %s and %s in %r both claim server id %r: the first is used",
                    found[server_id].service,
                    name,
                    namespace,
                    server_id,
                )
                continue
            old = before.get(server_id)
            if old is not None and old.service == name and old.entry == entry:
                found[server_id] = old  # the same source: its watch goes on
                continue
            source = EndpointSliceSource(self.hubs, _named(namespace), _named(name), port_name or manifests.PORT_NAME)
            found[server_id] = Labelled(entry, source, namespace, name)
        self._found[namespace] = found
        self._changed.set()


def _named(name: str) -> Any:
    async def service() -> str:
        return name

    return service
