"""The replicas of a `kubernetes` entry: the ready endpoints of its headless Service (Plan Document, section 11).

`EndpointSliceSource` lists the Service's EndpointSlices (`discovery.k8s.io/v1`, label
`kubernetes.io/service-name`), then watches them from the list's `resourceVersion`; a watch that ends
(`timeoutSeconds`, a cut connection) is opened again from the last version seen, and a 410 Gone (the version
is too old) lists afresh. The replica set is the union of all the Service's slices (`replica_set`), so a
change to any slice yields the whole set again. An API server that does not answer fails the watch: the
gateway keeps routing to the set it has and watches again after its backoff.

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


class EndpointSliceSource:
    """The replica set of one Service: `namespace`, and `service()` its name (a callable: a `chart` entry's
    Service is found by its labels once the chart is installed). `listed` is told each set, for the
    controller that waits for a ready pod after scaling up."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: Callable[[], Awaitable[str]],
        service: Callable[[], Any],
        port_name: str,
        *,
        listed: Callable[[tuple[ReplicaAddress, ...]], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self.listed = listed

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        last: tuple[ReplicaAddress, ...] | None = None
        selector = {"labelSelector": f"{SERVICE_NAME}={await self.service()}"}
        async for slices in self.cluster.follow(KINDS["EndpointSlice"], await self.namespace(), selector):
            current = replica_set(slices.values(), self.port_name)
            if current != last:
                last = current
                self._tell(current)
                yield current

    def _tell(self, current: tuple[ReplicaAddress, ...]) -> None:
        if self.listed is not None:
            self.listed(current)


class DnsSource:
    """The replica set from a headless Service's DNS name (`<service>.<namespace>.svc`): every A and AAAA
    record, at `port`, looked up every `interval` seconds. A lookup that fails keeps the last set."""

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

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        last: tuple[ReplicaAddress, ...] | None = None
        while True:
            try:
                infos = await anyio.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                if exc.errno not in _NO_RECORDS:
                    log.warning("DNS lookup of %s failed (%s): keeping %d replica(s)", self.host, exc, len(last or ()))
                    await anyio.sleep(self.interval)
                    continue
                infos = []  # the name has no record: a headless Service with no ready pod (scaled to zero)
            except OSError as exc:
                log.warning("DNS lookup of %s failed (%s): keeping %d replica(s)", self.host, exc, len(last or ()))
                await anyio.sleep(self.interval)
                continue
            urls = sorted({base_url(str(info[4][0]), self.port) for info in infos})
            current = tuple(ReplicaAddress(url) for url in urls)
            if current != last:
                last = current
                if self.listed is not None:
                    self.listed(current)
                yield current
            await anyio.sleep(self.interval)
