"""Sources that need no watching: the registry's own endpoints, and an in-memory one for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import anyio

from mcpfleet.replicas.source import ReplicaAddress


class StaticSource:
    """The replica set the registry entry lists (`endpoints`). A reload that changes them makes a new source."""

    def __init__(self, addresses: Iterable[ReplicaAddress]) -> None:
        self.addresses = tuple(addresses)

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        yield self.addresses


class MemorySource:
    """A replica set set by hand (`publish`), as a discovery source would: for tests and embedding."""

    def __init__(self, addresses: Iterable[ReplicaAddress] = ()) -> None:
        self._current = tuple(addresses)
        self._changed = anyio.Event()

    def publish(self, addresses: Iterable[ReplicaAddress]) -> None:
        self._current = tuple(addresses)
        self._changed.set()
        self._changed = anyio.Event()

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        while True:
            changed = self._changed
            yield self._current
            await changed.wait()
