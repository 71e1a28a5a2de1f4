"""Which replica gets new work: membership, passive health, and the strategy of `balancer.strategy`.

Pure bookkeeping, no I/O: replicas report in-flight counts and latencies here; passive health (ejection
after consecutive failures, for a backoff that doubles per ejection) lives here too, so a strategy never
picks an ejected replica while a healthy one remains. Only new sessions and stateless (2026-07-28)
requests are balanced; traffic that belongs to a session stays on its replica.

The replica set changes in place (`update`, fed by a replica source: Envoy's EDS): a replica that joins
takes new work at once; one that leaves or stops serving **drains**: it takes no new work, and `replica(url)`
still finds it for the sessions pinned there until `timeouts.drain` passes. One that stays keeps its health
and latency state, with its new weight.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mcpfleet.gateway.balancer import strategy as strategies
from mcpfleet.gateway.balancer.replica import Replica
from mcpfleet.replicas.source import ReplicaAddress

EWMA_WEIGHT = 0.2  # share of the newest latency sample in the moving average


@dataclass
class Balancer:
    strategy: strategies.Strategy
    replicas: list[Replica]  # serving: these take new work
    failures_to_eject: int = 3
    backoff: float = 5.0
    max_backoff: float = 300.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    draining: dict[str, Replica] = field(default_factory=dict)  # by URL

    @classmethod
    def create(
        cls, strategy: str, endpoints: Sequence[tuple[str, int]], *, rng: random.Random | None = None, **options: object
    ) -> Balancer:
        rng = rng or random.Random()
        balancer = cls(strategies.create(strategy, rng), [Replica(url, w) for url, w in endpoints], rng=rng, **options)  # type: ignore[arg-type]
        balancer.strategy.reset(balancer.replicas)
        return balancer

    # --- configuration ----------------------------------------------------------------------------------

    def configure(self, strategy: str, *, failures_to_eject: int, backoff: float, max_backoff: float) -> None:
        """New settings from a reload; replicas and their state stay."""
        if strategy != self.strategy.name:
            self.strategy = strategies.create(strategy, self.rng)
            self.strategy.reset(self.replicas)
        self.failures_to_eject = failures_to_eject
        self.backoff = backoff
        self.max_backoff = max_backoff

    def update(self, addresses: Sequence[ReplicaAddress], drain: float, gone: float | None = None) -> None:
        """Make the serving set `addresses` (those with `serving` set). Replicas that leave it drain for
        `drain` seconds (`gone`, when given, for those no longer listed at all: a pod or container that is
        gone has nothing left to drain to); a draining one that comes back serves again with its state. The
        strategy starts afresh only when members or weights changed (a source that resends the same set moves
        nothing). Drains that ended are collected by `expire_drains`."""
        now = self.clock()
        listed = {a.url for a in addresses}
        wanted = {a.url: a for a in addresses if a.serving}
        before = [(r.url, r.weight) for r in self.replicas]
        current = {r.url: r for r in self.replicas}
        serving: list[Replica] = []
        for url, address in wanted.items():
            replica = current.get(url) or self.draining.pop(url, None) or Replica(url, address.weight)
            replica.weight = address.weight
            replica.draining_until = None
            serving.append(replica)
        for replica in self.replicas:
            if replica.url not in wanted:
                replica.draining_until = now + drain
                self.draining[replica.url] = replica
        for replica in self.draining.values():  # a shorter drain (a reload lowered it) applies to those under way
            if replica.draining_until is not None:
                left = gone if gone is not None and replica.url not in listed else drain
                replica.draining_until = min(replica.draining_until, now + left)
        self.replicas = serving
        if [(r.url, r.weight) for r in serving] != before:
            self.strategy.reset(serving)

    def expire_drains(self) -> list[Replica]:
        """Drop draining replicas whose `timeouts.drain` passed; returns them."""
        now = self.clock()
        ended = [r for r in self.draining.values() if r.draining_until is not None and r.draining_until <= now]
        for replica in ended:
            del self.draining[replica.url]
        return ended

    # --- picking ------------------------------------------------------------------------------------

    def candidates(self, key: str | None = None) -> list[Replica]:
        """Serving replicas in the order to try them: the strategy's pick first, then the rest (for connect
        retries). `key`: the request's routing key, for `consistent_hash`. Empty when none serves."""
        if not self.replicas:
            return []
        now = self.clock()
        healthy = [r for r in self.replicas if r.available(now)]
        pool = healthy or self.replicas  # all ejected: try them anyway rather than fail without trying
        if len(pool) == 1:
            return pool
        return self.strategy.rank(pool, key)

    def pick(self, key: str | None = None) -> Replica:
        """The replica for new work. Raises LookupError when none serves."""
        ranked = self.candidates(key)
        if not ranked:
            raise LookupError("no replica serves")
        return ranked[0]

    def replica(self, url: str) -> Replica | None:
        """The replica at `url` for work pinned there (a session, a `requestState`): serving, or draining
        and still within its drain; None once it is gone."""
        for replica in self.replicas:
            if replica.url == url:
                return replica
        draining = self.draining.get(url)
        if draining is None or draining.draining_until is None or draining.draining_until > self.clock():
            return draining
        return None

    # --- reports ------------------------------------------------------------------------------------

    def started(self, replica: Replica) -> None:
        replica.in_flight += 1
        replica.requests += 1

    def finished(self, replica: Replica, seconds: float | None) -> None:
        """A request ended after `seconds`; None for a stream whose length says nothing about the replica's
        speed (a GET stream, a listen stream), which leaves the latency average alone."""
        replica.in_flight -= 1
        if seconds is None:
            return
        replica.latency = (
            seconds if replica.latency == 0 else (1 - EWMA_WEIGHT) * replica.latency + EWMA_WEIGHT * seconds
        )

    def succeeded(self, replica: Replica) -> None:
        replica.failures = 0
        replica.ejections = 0

    def failed(self, replica: Replica) -> bool:
        """A connection to the replica failed (refused, or not made in time); True if it is now ejected."""
        replica.failures += 1
        replica.failures_total += 1
        if replica.failures < self.failures_to_eject:
            return False
        replica.failures = 0
        replica.ejections += 1
        replica.ejected_total += 1
        replica.ejected_until = self.clock() + min(self.max_backoff, self.backoff * 2 ** (replica.ejections - 1))
        return True

    def probed(self, replica: Replica, healthy: bool, hold: float) -> None:
        """An active health check's verdict: down keeps the replica out for `hold` seconds (until the next
        probe); up brings an ejected replica back at once."""
        if healthy:
            if replica.ejected_until > self.clock():
                replica.ejected_until = 0.0
            replica.failures = 0
            replica.ejections = 0
        else:
            if replica.ejected_until <= self.clock():
                replica.ejected_total += 1
            replica.ejected_until = max(replica.ejected_until, self.clock() + hold)
