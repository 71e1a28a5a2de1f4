"""The registry that the reload measurements rewrite, one kind of change at a time: used by
tests/gateway/test_gateway_reload_live.py and bench/reload.py alike (no pytest here).

`web` is an http entry over demo HTTP replicas, `local` a stdio entry running demo processes; each field of
`Layout` is what one kind of change changes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

STRATEGIES = ("round_robin", "least_connections", "p2c", "random", "consistent_hash")
# One cycle of the measurement: every kind of change, the strategy three times so that two cycles go through
# all five strategies and back to the first.
CYCLE = ("replicas", "strategy", "weights", "timeouts", "strategy", "health", "pool", "strategy", "env", "args")
KINDS = ("replicas", "strategy", "weights", "timeouts", "health", "pool", "env", "args")


def yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


@dataclass(frozen=True)
class Layout:
    urls: tuple[str, ...]
    python: str = sys.executable  # runs the demo stdio server
    replicas: int = 0  # the first `replicas` of `urls` are in the registry; 0 = all
    weight: int = 1  # of the first replica
    strategy: str = STRATEGIES[0]
    first_byte: int = 300  # timeouts, both entries
    failures_to_eject: int = 3  # health, both entries
    pool: tuple[int, int] = (0, 16)  # local's pool.min, pool.max
    mark: int = 1  # local's env MARK
    tag: int = 1  # local's args: --replica tag-N

    @property
    def demo(self) -> list[str]:
        return [self.python, "-m", "mcpfleet.demo", "stdio"]

    def changed(self, kind: str) -> Layout:
        """This layout with one change of `kind` (each kind goes back and forth)."""
        every = len(self.urls)
        if kind == "replicas":  # one replica leaves, then comes back
            return replace(self, replicas=every - 1 if self.replicas in (0, every) else every)
        if kind == "weights":
            return replace(self, weight=3 - self.weight)
        if kind == "strategy":
            return replace(self, strategy=STRATEGIES[(STRATEGIES.index(self.strategy) + 1) % len(STRATEGIES)])
        if kind == "timeouts":
            return replace(self, first_byte=420 - self.first_byte)  # 300 <-> 120
        if kind == "health":
            return replace(self, failures_to_eject=8 - self.failures_to_eject)  # 3 <-> 5
        if kind == "pool":
            # max below the sessions open: lowering it ends no session, it only holds back new processes
            return replace(self, pool=(1, 2) if self.pool == (0, 16) else (0, 16))
        if kind == "env":
            return replace(self, mark=self.mark + 1)
        if kind == "args":
            return replace(self, tag=self.tag + 1)
        raise ValueError(kind)

    def render(self) -> str:
        urls = self.urls[: self.replicas or len(self.urls)]
        weights = [self.weight] + [1] * (len(urls) - 1)
        endpoints = ", ".join(f"{{url: '{url}', weight: {w}}}" for url, w in zip(urls, weights, strict=True))
        shared = f"timeouts: {{first_byte: {self.first_byte}}}, health: {{failures_to_eject: {self.failures_to_eject}}}"
        return (
            "servers:\n"
            f"  web: {{endpoints: [{endpoints}], balancer: {{strategy: {self.strategy}}}, {shared}}}\n"
            f"  local: {{command: {yaml_list(self.demo)}, args: [--replica, tag-{self.tag}],"
            f" env: {{MARK: '{self.mark}'}}, pool: {{min: {self.pool[0]}, max: {self.pool[1]}}}, {shared}}}\n"
        )
