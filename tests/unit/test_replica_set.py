"""Replica sets that change at run time: joiners take work at once, leavers drain, weights change in place,
and consistent hashing moves only about 1/N of the keys when a replica joins or leaves."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mcpfleet.gateway.balancer import Balancer
from mcpfleet.replicas import ReplicaAddress

STRATEGIES = ["round_robin", "least_connections", "p2c", "random", "consistent_hash"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def addresses(*names: str, weights: dict[str, int] | None = None) -> list[ReplicaAddress]:
    return [ReplicaAddress(f"http://{n}", (weights or {}).get(n, 1)) for n in names]


def make(strategy: str, *names: str, clock: Clock | None = None) -> Balancer:
    options: dict[str, object] = {"clock": clock} if clock is not None else {}
    return Balancer.create(strategy, [(f"http://{n}", 1) for n in names], rng=random.Random(3), **options)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_replica_that_joins_takes_new_work_at_once(strategy: str) -> None:
    balancer = make(strategy, "a", "b")
    for _ in range(5):
        balancer.pick(key="warm-up")  # strategy state (the round-robin wheel) exists before the change
    balancer.update(addresses("a", "b", "c"), drain=60)
    picks = Counter(balancer.pick(key=f"user-{i}").url for i in range(600))
    assert set(picks) == {"http://a", "http://b", "http://c"}
    assert picks["http://c"] >= 100, picks  # a fair share, not a trickle


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_replica_that_leaves_drains(strategy: str) -> None:
    clock = Clock()
    balancer = make(strategy, "a", "b", "c", clock=clock)
    leaving = balancer.replica("http://c")
    assert leaving is not None
    leaving.latency = 0.5  # state it had
    balancer.update(addresses("a", "b"), drain=30)
    assert all(balancer.pick(key=f"k{i}").url != "http://c" for i in range(300))  # no new work there
    assert balancer.replica("http://c") is leaving  # sessions pinned there still find it
    clock.now += 29
    assert balancer.expire_drains() == []
    assert balancer.replica("http://c") is leaving
    clock.now += 2
    assert balancer.replica("http://c") is None  # the drain passed: the session gets 404
    assert balancer.expire_drains() == [leaving]
    assert balancer.draining == {}


def test_a_replica_that_is_not_serving_drains_and_comes_back_with_its_state() -> None:
    clock = Clock()
    balancer = make("least_connections", "a", "b", clock=clock)
    b = balancer.replica("http://b")
    assert b is not None
    b.requests = 42
    balancer.update([ReplicaAddress("http://a"), ReplicaAddress("http://b", serving=False)], drain=30)
    assert [r.url for r in balancer.candidates()] == ["http://a"]
    balancer.update(addresses("a", "b"), drain=30)
    assert balancer.replica("http://b") is b and b.requests == 42 and b.draining_until is None
    assert {balancer.pick().url for _ in range(10)} == {"http://a", "http://b"}


def test_replicas_that_stay_keep_their_state_and_take_new_weights() -> None:
    balancer = make("round_robin", "a", "b")
    a = balancer.replica("http://a")
    assert a is not None
    a.in_flight, a.latency, a.failures = 3, 0.2, 1
    balancer.update(addresses("a", "b", weights={"a": 3}), drain=30)
    assert balancer.replica("http://a") is a
    assert (a.in_flight, a.latency, a.failures, a.weight) == (3, 0.2, 1, 3)
    picks = Counter(balancer.pick().url for _ in range(400))
    assert picks == {"http://a": 300, "http://b": 100}


def test_the_strategy_changes_in_place() -> None:
    balancer = make("round_robin", "a", "b")
    a = balancer.replica("http://a")
    balancer.configure("least_connections", failures_to_eject=1, backoff=1, max_backoff=2)
    assert balancer.strategy.name == "least_connections" and balancer.replica("http://a") is a
    assert a is not None
    balancer.started(a)
    assert {balancer.pick().url for _ in range(10)} == {"http://b"}


def test_no_replica_serving_is_an_empty_candidate_list() -> None:
    balancer = make("round_robin", "a")
    balancer.update([], drain=5)
    assert balancer.candidates() == []
    with pytest.raises(LookupError):
        balancer.pick()


def owners(balancer: Balancer, keys: list[str]) -> dict[str, str]:
    return {key: balancer.pick(key=key).url for key in keys}


def test_consistent_hash_keeps_a_key_on_its_replica() -> None:
    balancer = make("consistent_hash", *"abcde")
    keys = [f"user-{i}" for i in range(2000)]
    first = owners(balancer, keys)
    assert owners(balancer, keys) == first
    other = make("consistent_hash", *"abcde")  # another gateway process: the same choice, no shared state
    assert owners(other, keys) == first
    spread = Counter(first.values())
    assert all(300 <= n <= 500 for n in spread.values()), spread  # about 400 each


@pytest.mark.parametrize("replicas", [4, 10])
def test_consistent_hash_moves_about_one_nth_of_the_keys(replicas: int) -> None:
    names = [f"r{i}" for i in range(replicas)]
    balancer = make("consistent_hash", *names)
    keys = [f"10.0.{i // 250}.{i % 250}" for i in range(10_000)]
    before = owners(balancer, keys)

    balancer.update(addresses(*names, "new"), drain=30)  # one joins
    after_join = owners(balancer, keys)
    moved = [k for k in keys if after_join[k] != before[k]]
    assert all(after_join[k] == "http://new" for k in moved)  # keys only move to the joiner
    share = len(moved) / len(keys)
    assert abs(share - 1 / (replicas + 1)) < 0.25 / (replicas + 1), share

    balancer.update(addresses(*names), drain=30)  # it leaves again: everything goes back
    assert owners(balancer, keys) == before

    balancer.update(addresses(*names[1:]), drain=30)  # one of the first leaves
    after_leave = owners(balancer, keys)
    moved = [k for k in keys if after_leave[k] != before[k]]
    assert {before[k] for k in moved} == {"http://r0"}  # only the leaver's keys move
    assert abs(len(moved) / len(keys) - 1 / replicas) < 0.25 / replicas


def test_consistent_hash_honours_weights_and_skips_ejected_replicas() -> None:
    clock = Clock()
    balancer = make("consistent_hash", "a", "b", clock=clock)
    balancer.update(addresses("a", "b", weights={"a": 3}), drain=30)
    keys = [f"k{i}" for i in range(4000)]
    spread = Counter(owners(balancer, keys).values())
    assert 2800 <= spread["http://a"] <= 3200, spread
    before = owners(balancer, keys)
    b = balancer.replica("http://b")
    assert b is not None
    for _ in range(balancer.failures_to_eject):
        balancer.failed(b)
    during = owners(balancer, keys)
    assert set(during.values()) == {"http://a"}
    clock.now += 3600  # the ejection ends: b's keys come back to it
    assert owners(balancer, keys) == before


def test_consistent_hash_without_a_key_falls_back_to_round_robin() -> None:
    balancer = make("consistent_hash", "a", "b")
    assert [balancer.pick().url for _ in range(4)] == ["http://a", "http://b", "http://a", "http://b"]


def test_a_lower_drain_shortens_the_drains_under_way_and_a_higher_one_does_not_lengthen_them() -> None:
    clock = Clock()
    balancer = make("round_robin", "a", "b", "c", clock=clock)
    balancer.update(addresses("a", "b"), drain=600)  # c drains for 10 minutes
    balancer.update(addresses("a", "b"), drain=3)  # a reload lowers timeouts.drain
    clock.now += 4
    assert balancer.replica("http://c") is None
    balancer.update(addresses("a"), drain=3)  # b drains for 3 s
    balancer.update(addresses("a"), drain=600)  # raised again: b's drain stays 3 s
    clock.now += 4
    assert balancer.replica("http://b") is None


def test_a_terminating_replica_drains_while_listed_and_goes_when_it_is_no_longer_listed() -> None:
    """A backend's replicas (`gone=0`): listed but not serving (a terminating pod) drains for `drain`; no longer
    listed (the pod is gone) goes at once, rather than being kept for `timeouts.drain`."""
    clock = Clock()
    balancer = make("round_robin", "a", "b", clock=clock)
    terminating = [ReplicaAddress("http://a"), ReplicaAddress("http://b", serving=False)]
    balancer.update(terminating, drain=600, gone=0)
    clock.now += 1
    balancer.expire_drains()
    assert balancer.replica("http://b") is not None  # still listed: its sessions are served
    assert [r.url for r in balancer.candidates()] == ["http://a"]  # but it gets no new ones
    balancer.update(addresses("a"), drain=600, gone=0)  # the pod is gone from the slice
    assert [r.url for r in balancer.expire_drains()] == ["http://b"]
