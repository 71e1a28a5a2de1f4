"""One upstream replica as the balancer tracks it: weight, load, latency, passive health, drain."""

from __future__ import annotations

from dataclasses import dataclass


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
    # Set when the replica left the set (or stopped serving): sessions pinned here are served until then.
    draining_until: float | None = None

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def load(self) -> float:
        """In-flight requests per unit of weight; what least-connections compares."""
        return self.in_flight / self.weight
