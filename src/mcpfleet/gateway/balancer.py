"""Which replica gets new work: the strategies of the registry's `balancer.strategy`, with weights.

Pure bookkeeping, no I/O: replicas report in-flight counts and latencies here; passive health (ejection
after consecutive failures, for a backoff that doubles per ejection) lives here too, so a strategy never
picks an ejected replica while a healthy one remains. Only new sessions and stateless (2026-07-28)
requests are balanced; traffic that belongs to a session stays on its replica.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EWMA_WEIGHT = 0.2  # share of the newest latency sample in the moving average
LATENCY_FLOOR = 0.010  # seconds: the cost of a request to an idle replica, in p2c's comparison


@dataclass(eq=False)
class Replica:
    url: str
    weight: int = 1
    in_flight: int = 0
    latency: float = 0.0  # moving average of seconds per request, 0 until measured
    failures: int = 0  # consecutive
    ejections: int = 0  # consecutive ejections, for the backoff
    ejected_until: float = 0.0
    requests: int = 0
    ejected_total: int = 0
    failures_total: int = 0

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def load(self) -> float:
        """In-flight requests per unit of weight; what least-connections compares."""
        return self.in_flight / self.weight


@dataclass
class Balancer:
    strategy: str
    replicas: list[Replica]
    failures_to_eject: int = 3
    backoff: float = 5.0
    max_backoff: float = 300.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _wheel: itertools.cycle[Replica] | None = None

    @classmethod
    def create(cls, strategy: str, endpoints: Sequence[tuple[str, int]], **options: object) -> Balancer:
        return cls(strategy, [Replica(url, weight) for url, weight in endpoints], **options)  # type: ignore[arg-type]

    # --- picking ------------------------------------------------------------------------------------

    def candidates(self) -> list[Replica]:
        """Replicas in the order to try them: the strategy's pick first, then the rest (for connect retries)."""
        now = self.clock()
        healthy = [r for r in self.replicas if r.available(now)]
        pool = healthy or self.replicas  # all ejected: try them anyway rather than fail without trying
        first = self._pick(pool)
        return [first, *[r for r in pool if r is not first]]

    def pick(self) -> Replica:
        return self.candidates()[0]

    def _pick(self, pool: list[Replica]) -> Replica:
        if len(pool) == 1:
            return pool[0]
        if self.strategy == "least_connections":
            lowest = min(r.load() for r in pool)
            return self._round_robin([r for r in pool if r.load() == lowest])  # ties in turn, not at random
        if self.strategy == "p2c":
            a, b = self.rng.sample(pool, 2)
            return a if self._cost(a) <= self._cost(b) else b
        if self.strategy == "random":
            return self.rng.choices(pool, weights=[r.weight for r in pool])[0]
        return self._round_robin(pool)

    def _round_robin(self, pool: list[Replica]) -> Replica:
        # Smooth weighted round robin over every replica; ejected ones are skipped when met.
        if self._wheel is None:
            self._wheel = itertools.cycle(_smooth_order(self.replicas))
        allowed = {id(r) for r in pool}
        for _ in range(sum(r.weight for r in self.replicas)):
            replica = next(self._wheel)
            if id(replica) in allowed:
                return replica
        return pool[0]

    @staticmethod
    def _cost(replica: Replica) -> float:
        # Power of two choices: in-flight work scaled by how slow the replica has been answering (Linkerd's
        # peak-EWMA idea). The floor keeps millisecond noise between fast replicas from outweighing a
        # difference in in-flight requests.
        return (replica.in_flight + 1) * (replica.latency + LATENCY_FLOOR) / replica.weight

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

    def replica(self, url: str) -> Replica | None:
        return next((r for r in self.replicas if r.url == url), None)


def _smooth_order(replicas: Sequence[Replica]) -> list[Replica]:
    """One cycle of smooth weighted round robin (nginx's): weights 5,1,1 give a a b a c a a, not a a a a a b c."""
    current = [0] * len(replicas)
    total = sum(r.weight for r in replicas)
    order = []
    for _ in range(total):
        for index, replica in enumerate(replicas):
            current[index] += replica.weight
        best = max(range(len(replicas)), key=lambda i: current[i])
        current[best] -= total
        order.append(replicas[best])
    return order
