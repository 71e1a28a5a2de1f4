"""The strategies of `balancer.strategy`: each ranks the replicas that may take new work.

One interface, `rank(pool, key) -> replicas in the order to try them`: the first is the pick, the rest are
the connect-retry order. `key` is the request's routing key (a header's value or the client's address,
`balancer.hash_header`); only `consistent_hash` reads it. `reset(replicas)` is called when the replica set
or a weight changes. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from typing import Protocol

from mcpfleet.gateway.balancer.replica import Replica

LATENCY_FLOOR = 0.010  # seconds: the cost of a request to an idle replica, in p2c's comparison


class Strategy(Protocol):
    name: str

    def rank(self, pool: list[Replica], key: str | None) -> list[Replica]: ...

    def reset(self, replicas: Sequence[Replica]) -> None: ...


def _first(chosen: Replica, pool: list[Replica]) -> list[Replica]:
    return [chosen, *[r for r in pool if r is not chosen]]


class RoundRobin:
    """Smooth weighted round robin over every replica (nginx's); replicas outside the pool are skipped."""

    name = "round_robin"

    def __init__(self) -> None:
        self._replicas: Sequence[Replica] = ()
        self._wheel: itertools.cycle[Replica] | None = None

    def reset(self, replicas: Sequence[Replica]) -> None:
        self._replicas = list(replicas)
        self._wheel = None  # rebuilt at the next pick, with the new members and weights

    def next_of(self, pool: list[Replica]) -> Replica:
        if self._wheel is None:
            self._wheel = itertools.cycle(smooth_order(self._replicas))
        allowed = {id(r) for r in pool}
        for _ in range(sum(r.weight for r in self._replicas)):
            replica = next(self._wheel)
            if id(replica) in allowed:
                return replica
        return pool[0]

    def rank(self, pool: list[Replica], key: str | None) -> list[Replica]:
        return _first(self.next_of(pool), pool)


class LeastConnections(RoundRobin):
    """Fewest in-flight requests per unit of weight; ties in turn, not at random."""

    name = "least_connections"

    def rank(self, pool: list[Replica], key: str | None) -> list[Replica]:
        lowest = min(r.load() for r in pool)
        return _first(self.next_of([r for r in pool if r.load() == lowest]), pool)


class _Randomized:
    """A strategy that keeps no state about the replicas, only a random source (seeded in tests)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def reset(self, replicas: Sequence[Replica]) -> None:
        pass


class PowerOfTwo(_Randomized):
    """Two replicas drawn at random, the cheaper taken: in-flight work scaled by how slow the replica has been
    answering (Linkerd's peak-EWMA idea). The floor keeps millisecond noise between fast replicas from
    outweighing a difference in in-flight requests."""

    name = "p2c"

    def rank(self, pool: list[Replica], key: str | None) -> list[Replica]:
        a, b = self.rng.sample(pool, 2)
        return _first(a if self.cost(a) <= self.cost(b) else b, pool)

    @staticmethod
    def cost(replica: Replica) -> float:
        return (replica.in_flight + 1) * (replica.latency + LATENCY_FLOOR) / replica.weight


class Random(_Randomized):
    name = "random"

    def rank(self, pool: list[Replica], key: str | None) -> list[Replica]:
        return _first(self.rng.choices(pool, weights=[r.weight for r in pool])[0], pool)


class ConsistentHash:
    """Weighted rendezvous hashing (highest random weight): each replica scores `weight / -ln(u)`, `u` a
    uniform number drawn from the hash of (key, replica URL); the highest score takes the key. A replica
    that joins takes about weight/total of the keys, from every other replica alike; one that leaves gives
    up only its own keys; the order holds on every gateway process (no per-process seed). Without a key
    (none configured and no client address), round robin."""

    name = "consistent_hash"

    def __init__(self) -> None:
        self._fallback = RoundRobin()

    def reset(self, replicas: Sequence[Replica]) -> None:
        self._fallback.reset(replicas)

    def rank(self, pool: list[Replica], key: str | None) -> list[Replica]:
        if key is None:
            return self._fallback.rank(pool, None)
        return sorted(pool, key=lambda replica: score(key, replica), reverse=True)


def score(key: str, replica: Replica) -> float:
    digest = hashlib.blake2b(f"{key}\0{replica.url}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64  # in (0, 1), never 0 or 1
    return replica.weight / -math.log(u)


def create(name: str, rng: random.Random) -> Strategy:
    """The strategy named by `balancer.strategy`."""
    if name == "least_connections":
        return LeastConnections()
    if name == "p2c":
        return PowerOfTwo(rng)
    if name == "random":
        return Random(rng)
    if name == "consistent_hash":
        return ConsistentHash()
    return RoundRobin()


def smooth_order(replicas: Sequence[Replica]) -> list[Replica]:
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
