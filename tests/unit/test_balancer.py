"""Balancing strategies and passive ejection, with a fake clock and a seeded random source."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mcpfleet.gateway.balancer import Balancer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(strategy: str, weights: tuple[int, ...] = (1, 1, 1), **options: object) -> Balancer:
    endpoints = [(f"http://r{i}", w) for i, w in enumerate(weights)]
    return Balancer.create(strategy, endpoints, rng=random.Random(7), **options)


@pytest.mark.parametrize(
    ("strategy", "tolerance"), [("round_robin", 50), ("least_connections", 50), ("random", 100), ("p2c", 100)]
)
def test_spread_of_3000_new_sessions(strategy: str, tolerance: int) -> None:
    # Deterministic strategies within 5 % of a third; the randomized ones within 10 % (about 4 sigma).
    balancer = make(strategy)
    counts: Counter[str] = Counter()
    for _ in range(3000):
        replica = balancer.pick()
        balancer.started(replica)
        counts[replica.url] += 1
        balancer.finished(replica, 0.01)
    assert all(abs(n - 1000) <= tolerance for n in counts.values()), counts


def test_weights_are_honoured_and_interleaved() -> None:
    balancer = make("round_robin", (5, 1, 1))
    first_cycle = [balancer.pick().url for _ in range(7)]
    assert Counter(first_cycle) == {"http://r0": 5, "http://r1": 1, "http://r2": 1}
    assert first_cycle[:2] != ["http://r0", "http://r0"] or first_cycle[2] != "http://r0"  # not 5 in a row
    randomized = make("random", (3, 1))
    counts = Counter(randomized.pick().url for _ in range(4000))
    assert 2800 <= counts["http://r0"] <= 3200


@pytest.mark.parametrize("strategy", ["least_connections", "p2c"])
def test_busy_replicas_get_less_new_work(strategy: str) -> None:
    balancer = make(strategy)
    slow, idle_a, idle_b = balancer.replicas
    for _ in range(10):
        balancer.started(slow)  # ten slow calls still running there
    slow.latency = 2.0
    idle_a.latency = idle_b.latency = 0.01
    picks = Counter(balancer.pick().url for _ in range(300))
    assert picks[slow.url] <= 30, picks  # p2c only picks it when it draws the slow one twice... never


def test_ejection_backoff_and_recovery() -> None:
    clock = Clock()
    balancer = make("round_robin", failures_to_eject=2, backoff=5.0, max_backoff=12.0, clock=clock)
    down = balancer.replicas[0]
    assert balancer.failed(down) is False and balancer.failed(down) is True
    assert all(balancer.pick() is not down for _ in range(20))
    clock.now += 5.1
    assert down in {balancer.pick() for _ in range(6)}  # back after the backoff
    balancer.failed(down)
    assert balancer.failed(down) is True  # second ejection in a row: 10 s
    clock.now += 9.0
    assert all(balancer.pick() is not down for _ in range(20))
    clock.now += 1.5
    balancer.failed(down)
    balancer.failed(down)  # third: capped at 12 s
    assert down.ejected_until - clock.now == pytest.approx(12.0)
    balancer.succeeded(down)
    assert down.ejections == 0 and down.failures == 0


def test_all_ejected_still_tries_rather_than_failing_unseen() -> None:
    balancer = make("least_connections", failures_to_eject=1)
    for replica in balancer.replicas:
        balancer.failed(replica)
    assert len(balancer.candidates()) == 3


def test_candidates_put_the_pick_first_then_every_other_replica() -> None:
    balancer = make("round_robin")
    order = balancer.candidates()
    assert len(order) == 3 and len({r.url for r in order}) == 3


def test_a_long_stream_does_not_make_its_replica_look_slow() -> None:
    balancer = make("p2c")
    replica = balancer.replicas[0]
    balancer.started(replica)
    balancer.finished(replica, 0.004)
    balancer.started(replica)  # a GET stream held for ten minutes
    balancer.finished(replica, None)
    assert replica.latency == 0.004 and replica.in_flight == 0
    balancer.started(replica)
    balancer.finished(replica, 0.014)
    assert replica.latency == pytest.approx(0.8 * 0.004 + 0.2 * 0.014)
