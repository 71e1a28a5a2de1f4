"""The one read-only view of the gateway's state: `/servers` renders it as JSON, `/metrics` as Prometheus
gauges and counters. Both read this view and nothing else, so neither reaches into balancers or pools.

`read(...)` takes the registry in force and the live runtimes and returns plain frozen values, made only
when asked (a scrape, a status request): the hot path pays nothing for it. Units: seconds and counts;
`latency_s` is the moving average of a replica's request time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mcpfleet import __version__
from mcpfleet.gateway.balancer import Replica
from mcpfleet.gateway.deployments import served_form
from mcpfleet.gateway.runtime import ServerRuntime
from mcpfleet.gateway.session import SessionTable
from mcpfleet.gateway.upstream.relay import RelayUpstream
from mcpfleet.masking import masked, shown_url
from mcpfleet.registry import Registry
from mcpfleet.registry.model import DockerServer, Endpoint, HttpServer, Server, StdioServer

ReplicaState = Literal["ok", "ejected", "draining", "unknown"]


@dataclass(frozen=True)
class ReplicaView:
    url: str  # as configured or discovered (may carry credentials: render it with shown_url)
    weight: int
    state: ReplicaState
    in_flight: int = 0
    requests: int = 0
    latency_s: float = 0.0
    ejected_for_s: float = 0.0
    drain_left_s: float = 0.0
    failures_total: int = 0
    ejected_total: int = 0


@dataclass(frozen=True)
class RelayView:
    """The relayed connections of one kind: `stdio` processes (those of earlier configurations that still
    drain included) or `bridge` connections to HTTP replicas."""

    kind: Literal["stdio", "bridge"]
    live: int
    idle: int
    warm: int
    starting: int
    waiting: int
    draining: int  # live ones that belong to an earlier configuration
    started_total: int
    crashed_total: int
    crash_loop: tuple[int, str] | None  # (quick exits, last exit) while new sessions are refused


@dataclass(frozen=True)
class ServerView:
    id: str
    type: str
    description: str
    replicas: tuple[ReplicaView, ...]
    relays: tuple[RelayView, ...]
    sessions: int
    target: str | None
    command: tuple[str, ...] | None
    pool: tuple[int, int] | None  # (pool.min, pool.max) of an entry with a command
    draining: bool = False  # left the registry; serving its open sessions until they end
    deployment: Mapping[str, Any] | None = None  # a docker entry's: image, the last failed start, ...


@dataclass(frozen=True)
class GatewayView:
    version: str
    pid: int
    instance: str
    generation: int
    registry: str
    last_reload_error: tuple[str, ...]
    reloads: Mapping[str, int]
    servers: tuple[ServerView, ...]
    draining: tuple[ServerView, ...]  # servers that left the registry, still serving their open sessions
    failed: Mapping[str, str]
    sessions: int

    def relay(self, server: ServerView, kind: str) -> RelayView | None:
        return next((r for r in server.relays if r.kind == kind), None)


def read(
    snapshot: Registry,
    runtimes: Mapping[str, ServerRuntime],
    draining: Mapping[str, Sequence[ServerRuntime]],
    sessions: SessionTable,
    *,
    generation: int,
    reloads: Mapping[str, int],
    last_reload_error: Sequence[str],
) -> GatewayView:
    now = time.monotonic()
    servers = [_server(server_id, runtimes.get(server_id), sessions, now, snapshot) for server_id in snapshot.servers]
    leaving = [
        _server(server_id, runtime, sessions, now, None) for server_id, left in draining.items() for runtime in left
    ]
    return GatewayView(
        version=__version__,
        pid=os.getpid(),
        instance=sessions.instance,
        generation=generation,
        registry=snapshot.source,
        last_reload_error=tuple(last_reload_error),
        reloads=dict(reloads),
        servers=tuple(servers),
        draining=tuple(leaving),
        failed=dict(snapshot.failed),
        sessions=len(sessions),
    )


def _server(
    server_id: str, runtime: ServerRuntime | None, sessions: SessionTable, now: float, snapshot: Registry | None
) -> ServerView:
    entry = snapshot.servers[server_id] if snapshot is not None else runtime.server if runtime else None
    assert entry is not None
    # A docker entry shows as what it is served as (http replicas, or stdio processes that are containers).
    server = runtime.server if runtime is not None else served_form(entry)
    replicas: tuple[ReplicaView, ...] = ()
    target = None
    if isinstance(server, HttpServer):
        if runtime is not None and runtime.balancer is not None:
            balancer = runtime.balancer
            live = [*balancer.replicas, *balancer.draining.values()]
            replicas = tuple(_replica(r, now) for r in live)
        else:
            replicas = tuple(ReplicaView(e.url, e.weight, "unknown") for e in server.endpoints)
        target = ", ".join(shown_url(server.mcp_url(Endpoint(url=r.url, weight=r.weight))) for r in replicas)
    command = None
    pool = None
    relays: list[RelayView] = []
    if isinstance(server, StdioServer | HttpServer) and server.command:
        command = tuple(server.command)  # its `${VAR}` values are masked with the whole document (`as_json`)
        pool = (server.pool.min, server.pool.max)
        if isinstance(server, StdioServer):
            target = " ".join(server.command)
    if runtime is not None:
        stdio = [r for r in (runtime.stdio, *runtime.draining_relays) if r is not None]
        if stdio:
            relays.append(_relays("stdio", stdio, runtime.stdio, now))
        if runtime.bridge is not None:
            relays.append(_relays("bridge", [runtime.bridge], runtime.bridge, now))
    return ServerView(
        id=server_id,
        type=entry.type,
        description=entry.description,
        replicas=replicas,
        relays=tuple(relays),
        sessions=len(sessions.of_server(server_id)) if runtime is None else _sessions_of(runtime, sessions),
        target=target,
        command=command,
        pool=pool,
        draining=snapshot is None,
        deployment=_deployment(entry, runtime),
    )


def _deployment(entry: Server, runtime: ServerRuntime | None) -> Mapping[str, Any] | None:
    """A docker entry's deployment: its controller's account (HTTP replicas), or its image (stdio)."""
    if runtime is not None and runtime.deployment is not None:
        return runtime.deployment.describe()
    if isinstance(entry, DockerServer):
        return {"backend": "docker", "image": entry.image, "pull": entry.pull}
    return None


def _sessions_of(runtime: ServerRuntime, sessions: SessionTable) -> int:
    """Sessions this gateway process holds for the runtime (sealed http sessions are held upstream)."""
    return sum(1 for s in sessions.of_server(runtime.server.id) if runtime.owns(s))


def _replica(replica: Replica, now: float) -> ReplicaView:
    ejected = replica.ejected_until > now
    state: ReplicaState = "draining" if replica.draining_until is not None else "ejected" if ejected else "ok"
    return ReplicaView(
        url=replica.url,
        weight=replica.weight,
        state=state,
        in_flight=replica.in_flight,
        requests=replica.requests,
        latency_s=replica.latency,
        ejected_for_s=replica.ejected_until - now if ejected else 0.0,
        drain_left_s=max(0.0, replica.draining_until - now) if replica.draining_until is not None else 0.0,
        failures_total=replica.failures_total,
        ejected_total=replica.ejected_total,
    )


def _relays(
    kind: Literal["stdio", "bridge"], relays: Iterable[RelayUpstream], current: RelayUpstream | None, now: float
) -> RelayView:
    relays = list(relays)
    live = sum(len(r.live) for r in relays)
    idle = sum(1 for r in relays for link in r.live if link.idle)
    crash_loop = None
    if current is not None and current.crash_loop_until > now:
        crash_loop = (current.quick_exits, current.last_exit)
    return RelayView(
        kind=kind,
        live=live,
        idle=idle,
        warm=current.warm_count if current is not None else 0,
        starting=sum(r.admission.starting for r in relays),
        waiting=current.waiting if current is not None else 0,
        draining=sum(len(r.live) for r in relays if r is not current),
        started_total=sum(r.started_total for r in relays),
        crashed_total=sum(r.crashed_total for r in relays),
        crash_loop=crash_loop,
    )


def as_json(view: GatewayView) -> dict[str, Any]:
    """The `/servers` document (and the status page's), every string in it masked (`masking.masked`)."""
    servers = [_server_json(view, server) for server in view.servers]
    for server_id, error in view.failed.items():
        servers.append({"id": server_id, "health": "failed", "error": error, "sessions": 0})
    document = {
        "version": view.version,
        "pid": view.pid,
        "instance": view.instance,
        "generation": view.generation,
        "registry": view.registry,
        "last_reload_error": list(view.last_reload_error) or None,
        "reloads": dict(view.reloads),
        "servers": servers,
    }
    if view.draining:
        document["draining"] = [_server_json(view, server) for server in view.draining]
    masked_document: dict[str, Any] = masked(document)  # every field, one added later too (masking.py)
    return masked_document


def _server_json(view: GatewayView, server: ServerView) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": server.id, "type": server.type, "description": server.description}
    if server.type in ("http", "kubernetes") or (server.type == "docker" and server.command is None):
        entry["replicas"] = [_replica_json(r) for r in server.replicas]
        entry["target"] = server.target
    if server.deployment is not None:
        entry["deployment"] = dict(server.deployment)
    if server.command is not None:
        entry["command"] = list(server.command)
        if server.type in ("stdio", "docker"):
            entry["target"] = server.target
        stdio = view.relay(server, "stdio")
        assert server.pool is not None
        entry["processes"] = {  # (bridged HTTP connections are not counted here)
            "live": stdio.live if stdio else 0,
            "warm": stdio.warm if stdio else 0,
            "starting": stdio.starting if stdio else 0,
            "waiting": stdio.waiting if stdio else 0,
            "draining": stdio.draining if stdio else 0,
            "min": server.pool[0],
            "max": server.pool[1],
        }
        if stdio is not None and stdio.crash_loop is not None:
            entry["health"] = "crash_loop"
            entry["crash_loop"] = {"quick_exits": stdio.crash_loop[0], "last_exit": stdio.crash_loop[1]}
    entry["sessions"] = server.sessions
    if server.draining:
        entry["health"] = "draining"
    entry.setdefault("health", "unknown")
    return entry


def _replica_json(replica: ReplicaView) -> dict[str, Any]:
    shown: dict[str, Any] = {"url": shown_url(replica.url), "weight": replica.weight, "health": replica.state}
    if replica.state != "unknown":
        shown |= {
            "in_flight": replica.in_flight,
            "requests": replica.requests,
            "latency_ms": round(replica.latency_s * 1000, 2),
            "ejected_for_s": round(replica.ejected_for_s, 1),
        }
        if replica.state == "draining":
            shown["drain_left_s"] = round(replica.drain_left_s, 1)
    return shown
