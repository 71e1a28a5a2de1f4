"""Prometheus metrics at `/metrics`.

Two kinds, to keep the hot path cheap: what happens per request (requests and their duration, errors by
kind) is counted as it happens; everything that is state (in-flight requests, replica health and
ejections, processes, sessions, reloads) is read from the gateway's own structures only when scraped.
Each gateway has its own registry, so several can live in one process (tests do that).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcpfleet.gateway.recorder import Recorder
from mcpfleet.gateway.status import GatewayView
from mcpfleet.masking import shown_url

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# JSON-RPC codes of the gateway's own errors, as metric labels.
ERROR_KINDS = {
    -32700: "parse_error",
    -32600: "invalid_request",
    -32601: "not_found",
    -32603: "internal_error",  # the gateway cannot check credentials now (no key set), an upstream refused its own
    -32009: "limited",  # gateway.limits: a rate or the session cap
    -32010: "unknown_server",
    -32012: "unreachable",
    -32013: "start_failed",
    -32014: "exited",
    -32015: "timeout",
    -32016: "pool_exhausted",
    -32017: "crash_loop",
    -32018: "entry_failed",
    -32019: "too_large",
}


class Metrics:
    """`view`: reads the gateway's state (status.GatewayView), at each scrape; `ready`: whether `/readyz`
    answers 200 (`mcpfleet_ready`)."""

    def __init__(self, view: Callable[[], GatewayView], ready: Callable[[], bool] = lambda: True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "mcpfleet_requests",
            "Requests handled, per server and HTTP method.",
            ["server", "method"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mcpfleet_request_duration_seconds",
            "Time from the request's arrival to the end of its response, per server.",
            ["server"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mcpfleet_errors",
            "Errors the gateway answered itself, per server and kind.",
            ["server", "kind", "status"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(view, ready))
        self.recent = Recorder()  # the last minutes, for the status page

    def observe(self, server: str, method: str, started: float) -> None:
        now = time.monotonic()
        self.requests.labels(server, method).inc()
        self.duration.labels(server).observe(now - started)
        self.recent.observe(server, now - started, now)

    def error(self, server: str, code: int, status: int, message: str = "", caller: str | None = None) -> None:
        """An error the gateway answered itself (`ErrorBoundary`); `message` is the one the client got,
        `caller` the principal it answered (the status page shows it to that caller only)."""
        self.errors.labels(server, ERROR_KINDS.get(code, str(code)), str(status)).inc()
        self.recent.error(server, code, status, message, caller)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, view: Callable[[], GatewayView], ready: Callable[[], bool]) -> None:
        self.view = view
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        in_flight = GaugeMetricFamily(
            "mcpfleet_replica_in_flight", "Requests in flight per replica.", labels=["server", "replica"]
        )
        healthy = GaugeMetricFamily(
            "mcpfleet_replica_up", "1 unless the replica is ejected.", labels=["server", "replica"]
        )
        draining = GaugeMetricFamily(
            "mcpfleet_replica_draining",
            "1 while the replica left the set and serves only the sessions pinned there (timeouts.drain).",
            labels=["server", "replica"],
        )
        forwarded = CounterMetricFamily(
            "mcpfleet_replica_requests", "Requests sent to each replica.", labels=["server", "replica"]
        )
        failures = CounterMetricFamily(
            "mcpfleet_replica_connect_failures", "Connections to the replica that failed.", labels=["server", "replica"]
        )
        ejections = CounterMetricFamily(
            "mcpfleet_replica_ejections", "Times the replica was ejected.", labels=["server", "replica"]
        )
        processes = GaugeMetricFamily(
            "mcpfleet_processes",
            "Running relayed connections (stdio processes, bridges) per server, and how many have nothing in flight.",
            labels=["server", "kind", "state"],
        )
        starts = CounterMetricFamily(
            "mcpfleet_process_starts", "Processes (and bridges) started per server.", labels=["server", "kind"]
        )
        crashes = CounterMetricFamily(
            "mcpfleet_process_exits_unexpected",
            "Processes (and bridges) that ended without the gateway asking (crashes, kills, lost connections).",
            labels=["server", "kind"],
        )
        waiting = GaugeMetricFamily(
            "mcpfleet_pool_waiting", "New sessions waiting for a slot (pool.max reached).", labels=["server", "kind"]
        )
        warm = GaugeMetricFamily(
            "mcpfleet_pool_warm", "stdio processes started ahead of need and not yet in use.", labels=["server"]
        )
        limit = GaugeMetricFamily("mcpfleet_pool_max", "pool.max of each stdio server.", labels=["server"])
        # A server id can stand twice (the runtime in force and one that drains after a change of type, or a
        # removal and re-addition within the drain): each series is summed over them, so none is repeated.
        sums: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        limits: dict[str, int] = {}
        for server in (*view.servers, *view.draining):
            for replica in server.replicas:
                if replica.state == "unknown":
                    continue
                labels: tuple[str, ...] = (server.id, shown_url(replica.url))  # no password, query or ${VAR} value
                sums["in_flight", labels] += replica.in_flight
                sums["up", labels] = max(sums["up", labels], 0 if replica.state == "ejected" else 1)
                sums["draining", labels] = max(sums["draining", labels], replica.state == "draining")
                sums["requests", labels] += replica.requests
                sums["failures", labels] += replica.failures_total
                sums["ejections", labels] += replica.ejected_total
            for relay in server.relays:
                sums["processes", (server.id, relay.kind, "busy")] += relay.live - relay.idle
                sums["processes", (server.id, relay.kind, "idle")] += relay.idle
                sums["starts", (server.id, relay.kind)] += relay.started_total
                sums["crashes", (server.id, relay.kind)] += relay.crashed_total
                sums["waiting", (server.id, relay.kind)] += relay.waiting
                if relay.kind == "stdio" and server.pool is not None:
                    sums["warm", (server.id,)] += relay.warm
                    if not server.draining:
                        limits[server.id] = server.pool[1]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "in_flight": in_flight,
            "up": healthy,
            "draining": draining,
            "requests": forwarded,
            "failures": failures,
            "ejections": ejections,
            "processes": processes,
            "starts": starts,
            "crashes": crashes,
            "waiting": waiting,
            "warm": warm,
        }
        for (name, labels), value in sums.items():
            families[name].add_metric(list(labels), value)
        for server_id, pool_max in limits.items():
            limit.add_metric([server_id], pool_max)
        sessions = GaugeMetricFamily(
            "mcpfleet_sessions",
            "Sessions held by this gateway process (stdio and "
            "bridged; http sessions are sealed and held by their servers).",
        )
        sessions.add_metric([], view.sessions)
        reloads = CounterMetricFamily("mcpfleet_reloads", "Registry reloads by outcome.", labels=["outcome"])
        for outcome, count in view.reloads.items():
            reloads.add_metric([outcome], count)
        generation = GaugeMetricFamily("mcpfleet_registry_generation", "Registry snapshots loaded so far.")
        generation.add_metric([], view.generation)
        ready = GaugeMetricFamily("mcpfleet_ready", "1 while /readyz answers 200 (0: starting, or shutting down).")
        ready.add_metric([], 1 if self.ready() else 0)
        yield from (
            in_flight,
            healthy,
            draining,
            forwarded,
            failures,
            ejections,
            processes,
            starts,
            crashes,
            waiting,
            warm,
            limit,
            sessions,
            reloads,
            generation,
            ready,
        )
