"""The seat every replica source plugs into (Plan Document section 11).

A source watches something outside the gateway (the registry file, Docker's containers, a Service's
EndpointSlices) and yields the **whole** replica set of one server whenever it changes. Each set replaces
the one before: an address that joins takes new work at once; one that leaves, or stays but is not
`serving` (Kubernetes' endpoint condition of that name: a pod that is terminating or not ready), drains:
sessions pinned to it continue until `timeouts.drain` passes, and it takes no new session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ReplicaAddress:
    """One replica as a source sees it. `url`: its base URL (scheme, host, port; the entry's `path` is
    appended); `weight`: its share of new work (>= 1); `serving`: False to drain it while it stays listed."""

    url: str
    weight: int = 1
    serving: bool = True

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"replica {self.url}: weight must be 1 or more, not {self.weight}")


class ReplicaSource(Protocol):
    """Yields the replica set of one server, first as it is now, then after each change.

    `watch()` runs until cancelled or until the source has nothing more to say (a static source ends after
    its one set); the consumer keeps the last set it received. Errors while watching are the source's to
    retry (with backoff, logged); it raises only when it cannot go on at all.
    """

    def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]: ...
