"""The replicas of a `kubernetes` entry: the ready endpoints of its headless Service (Plan Document, section 11).

`EndpointSliceSource` is the set of one Service's ready endpoints (`replica_set`: the union of all its
slices, label `kubernetes.io/service-name`), read from its namespace's `SliceHub`: one list of every
EndpointSlice there, then one watch from the list's `resourceVersion`, shared by all the servers of the
namespace. A watch that ends (`timeoutSeconds`, a cut connection) is opened again from the last version
seen, a 410 Gone lists afresh (`Cluster.follow`); an API server that does not answer keeps the slices last
seen, so the gateway keeps routing by them, and the hub tries again with backoff.

`DnsSource` is the option for a gateway that may not watch: the headless Service's A/AAAA records, every
30 s. It sees no `terminating` state, so a pod going away is noticed only when its record is gone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio

from mcpfleet.deploy.kubernetes.api import KINDS, Cluster
from mcpfleet.errors import DeployError
from mcpfleet.replicas.source import ReplicaAddress

log = logging.getLogger("mcpfleet.kubernetes")

SERVICE_NAME = "kubernetes.io/service-name"  # the label EndpointSlices carry (their Service)
DNS_INTERVAL = 30.0  # seconds between DNS lookups
# getaddrinfo's "no such name" and "no address": a headless Service whose pods are all gone has no record.
_NO_RECORDS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def replica_set(slices: Iterable[Mapping[str, Any]], port_name: str) -> tuple[ReplicaAddress, ...]:
    """The replicas that `slices` (EndpointSlice objects) name, as `http://<address>:<port>` base URLs.

    The port is the slice's port named `port_name` (or its only port when that one has no name); a slice
    without it is skipped. Per endpoint (Kubernetes' EndpointSlice conditions): `serving` (taken from
    `ready` when absent; an absent `ready` counts as ready) and not `terminating` → serving; serving and
    `terminating` → listed with `serving=False`, so its sessions drain and it gets no new ones; not serving
    → left out. Only the first address of an endpoint is used (the API says the others are the same
    endpoint). IPv4 and IPv6 slices are read; FQDN ones are skipped (deprecated). The same address in
    several slices (a slice being replaced) serves if any of them says so."""
    found: dict[str, bool] = {}
    for item in slices:
        if item.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        port = _port(item.get("ports") or [], port_name)
        if port is None:
            continue
        for endpoint in item.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            if not addresses:
                continue
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready")
            serving = conditions.get("serving", True if ready is None else ready)
            if not serving:
                continue
            url = base_url(addresses[0], port)
            found[url] = found.get(url, False) or not conditions.get("terminating", False)
    return tuple(ReplicaAddress(url, serving=serving) for url, serving in sorted(found.items()))


def _port(ports: list[Mapping[str, Any]], name: str) -> int | None:
    for port in ports:
        if port.get("name") == name and port.get("port") is not None:
            return int(port["port"])
    if len(ports) == 1 and not ports[0].get("name") and ports[0].get("port") is not None:
        return int(ports[0]["port"])
    return None


def base_url(address: str, port: int) -> str:
    """`http://10.0.0.5:8080`, or `http://[fd00::5]:8080` for an IPv6 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"http://{address}:{port}"
    return f"http://[{ip}]:{port}" if ip.version == 6 else f"http://{ip}:{port}"


class SliceHub:
    """Every EndpointSlice of one namespace, from one list-and-watch shared by the sources of all the servers
    there (`run`, in the gateway's task group). A watch per server would hold an API connection each: the
    client's pool (100) would be taken by 100 servers' watches and every other call would wait.

    The API failing keeps the slices last seen (the gateway routes by them); the watch starts again after a
    backoff (1 s doubling to 60 s) and lists afresh."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self._by_service: dict[str, list[Mapping[str, Any]]] = {}
        self.listed = False  # a first list arrived
        self._changed = anyio.Event()

    def of(self, service: str) -> list[Mapping[str, Any]]:
        """The slices of `service` (their `kubernetes.io/service-name` label)."""
        return self._by_service.get(service, [])

    def changed(self) -> anyio.Event:
        """Set at the next change (take it before reading, so no change between is missed)."""
        return self._changed

    async def run(self) -> None:
        backoff = 1.0
        failing = ""
        while True:
            try:
                selector = {"labelSelector": SERVICE_NAME}
                async for found in self.cluster.follow(KINDS["EndpointSlice"], self.namespace, selector):
                    # Grouped once per change: every server of the namespace reads its own slices after it.
                    grouped: dict[str, list[Mapping[str, Any]]] = {}
                    for item in found.values():
                        service = ((item.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME, "")
                        grouped.setdefault(service, []).append(item)
                    self._by_service, self.listed = grouped, True
                    backoff, failing = 1.0, ""
                    self._changed.set()
                    self._changed = anyio.Event()
            except DeployError as exc:
                if exc.message != failing:
                    log.warning("EndpointSlices in %r: %s (again in %g s)", self.namespace, exc.message, backoff)
                failing = exc.message
                await anyio.sleep(backoff)
                backoff = min(60.0, backoff * 2)


class EndpointSliceSource:
    """The replica set of one Service: `namespace()` and `service()` (async: a `chart` entry's Service is found
    by its labels) name it, `hubs(namespace)` gives the namespace's shared `SliceHub`. `listed` is told each
    set, for the controller that waits for a ready pod after scaling up."""

    def __init__(
        self,
        hubs: Callable[[str], SliceHub],
        namespace: Callable[[], Awaitable[str]],
        service: Callable[[], Awaitable[str]],
        port_name: str,
        *,
        listed: Callable[[tuple[ReplicaAddress, ...]], None] | None = None,
    ) -> None:
        self.hubs = hubs
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self.listed = listed

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        hub = self.hubs(await self.namespace())
        name = await self.service()
        last: tuple[ReplicaAddress, ...] | None = None
        while True:
            changed = hub.changed()
            if hub.listed:
                current = replica_set(hub.of(name), self.port_name)
                if current != last:
                    last = current
                    self._tell(current)
                    yield current
            await changed.wait()

    def _tell(self, current: tuple[ReplicaAddress, ...]) -> None:
        if self.listed is not None:
            self.listed(current)


class DnsSource:
    """The replica set from a headless Service's DNS name (`<service>.<namespace>.svc`): every A and AAAA
    record, at `port`, looked up every `interval` seconds, and every second while there is none (a cold start
    is seen within a second of its pod turning ready) or at once when told (`refresh`). A name with no record
    is an empty set (a headless Service with no ready pod), said once in the log in case the name cannot be
    resolved from where the gateway runs; a lookup that fails otherwise keeps the last set."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        interval: float = DNS_INTERVAL,
        listed: Callable[[tuple[ReplicaAddress, ...]], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.interval = interval
        self.listed = listed
        self._refresh = anyio.Event()

    def refresh(self) -> None:
        """Look the name up again now (a scale-up was asked for)."""
        self._refresh.set()

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        last: tuple[ReplicaAddress, ...] | None = None
        told_empty = False
        while True:
            try:
                infos = await anyio.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                if not (isinstance(exc, socket.gaierror) and exc.errno in _NO_RECORDS):
                    log.warning("DNS lookup of %s failed (%s): keeping %d replica(s)", self.host, exc, len(last or ()))
                    await self._pause(self.interval)
                    continue
                infos = []
                if not told_empty:
                    log.warning(
                        "DNS name %s has no record: no ready pod, or the name does not resolve from here (the gateway"
                        " must run in the cluster for discovery: dns)",
                        self.host,
                    )
                    told_empty = True
            if infos:
                told_empty = False
            urls = sorted({base_url(str(info[4][0]), self.port) for info in infos})
            current = tuple(ReplicaAddress(url) for url in urls)
            if current != last:
                last = current
                if self.listed is not None:
                    self.listed(current)
                yield current
            await self._pause(self.interval if current else min(1.0, self.interval))

    async def _pause(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._refresh.wait()
        self._refresh = anyio.Event()
