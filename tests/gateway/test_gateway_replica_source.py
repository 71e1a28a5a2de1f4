"""A server whose replicas come from a source (as the Docker and Kubernetes backends will feed them): an
in-process gateway on 127.0.0.1, fed by a `MemorySource`, in front of real demo HTTP replicas, used by the
SDK's client. Replicas join, leave and drain while sessions stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client

from mcpfleet.client.websocket import websocket_client
from mcpfleet.gateway.app import Gateway
from mcpfleet.registry import parse_registry
from mcpfleet.replicas import MemorySource, ReplicaAddress, ReplicaSource

from support import free_port, until


@asynccontextmanager
async def gateway_fed_by(source: ReplicaSource, registry: str) -> AsyncIterator[str]:
    """Serve a Gateway whose server `web` takes its replicas from `source`; yields its /web/mcp URL."""
    port = free_port()
    async with Gateway(parse_registry(registry, "test.yaml", environ={}), replica_sources={"web": source}) as app:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            await until(lambda: _started(server))
            try:
                yield f"http://127.0.0.1:{port}/web/mcp"
            finally:
                server.should_exit = True


async def _started(server: uvicorn.Server) -> bool:
    return server.started


async def applied(url: str, expected: dict[str, str]) -> None:
    """Wait until the gateway shows each replica URL in `expected` with that health (the set was applied)."""

    async def check() -> bool:
        async with httpx2.AsyncClient() as http:
            shown = (await http.get(url.replace("/web/mcp", "/servers"))).json()["servers"][0]["replicas"]
        states = {replica["url"]: replica["health"] for replica in shown}
        return all(
            states.get(u) == health or (health == "serving" and states.get(u) in ("ok", "unknown"))
            for u, health in expected.items()
        )

    assert await until(check, within=30)


async def whoami(client: Client) -> str:
    result: Any = (await client.call_tool("whoami", {})).structured_content
    return str(result["replica"])


async def first_error(client: Client, within: float = 30) -> Exception:
    """Call `whoami` until a call fails (bounded); the error."""
    with anyio.fail_after(within):
        while True:
            try:
                await whoami(client)
            except Exception as exc:
                return exc
            await anyio.sleep(0.2)


async def new_session_replicas(url: str, count: int) -> set[str]:
    seen = set()
    for _ in range(count):
        async with Client(url, mode="legacy") as client:
            seen.add(await whoami(client))
    return seen


def test_replicas_join_and_leave_while_sessions_continue(demo_http: Callable[[str], str]) -> None:
    urls = {name: demo_http(name) for name in ("a", "b", "c")}
    source = MemorySource([ReplicaAddress(urls["a"])])
    registry = f"servers:\n  web: {{endpoint: '{urls['a']}', timeouts: {{drain: 600}}}}\n"

    async def main() -> None:
        async with gateway_fed_by(source, registry) as url, Client(url, mode="legacy") as on_a:
            assert await whoami(on_a) == "a"

            source.publish([ReplicaAddress(urls["a"]), ReplicaAddress(urls["b"])])  # b joins
            assert await until(lambda: _has(url, "b"), within=30)

            source.publish([ReplicaAddress(urls["b"]), ReplicaAddress(urls["c"], weight=2)])  # a leaves, c joins
            await applied(url, {urls["a"]: "draining", urls["c"]: "serving"})
            assert await new_session_replicas(url, 9) <= {"b", "c"}  # no new session on a
            for _ in range(3):
                assert await whoami(on_a) == "a"  # the session pinned on a continues there (draining)

            source.publish([ReplicaAddress(urls["b"]), ReplicaAddress(urls["c"], serving=False)])  # c not ready
            await applied(url, {urls["c"]: "draining"})
            assert await new_session_replicas(url, 4) == {"b"}
            assert await whoami(on_a) == "a"

    anyio.run(main)


async def _has(url: str, replica: str) -> bool:
    return replica in await new_session_replicas(url, 2)


def test_sessions_on_a_replica_that_left_end_when_the_drain_passes(demo_http: Callable[[str], str]) -> None:
    urls = {name: demo_http(name) for name in ("a", "b")}
    source = MemorySource([ReplicaAddress(urls["a"])])
    registry = f"servers:\n  web: {{endpoint: '{urls['a']}', timeouts: {{drain: 5}}}}\n"

    async def main() -> None:
        async with gateway_fed_by(source, registry) as url, Client(url, mode="legacy") as on_a:
            assert await whoami(on_a) == "a"
            source.publish([ReplicaAddress(urls["b"])])
            await applied(url, {urls["a"]: "draining"})
            assert await whoami(on_a) == "a"  # within the drain
            await anyio.sleep(5.5)
            with pytest.raises(Exception, match=r"(?i)session"):
                await whoami(on_a)  # the drain passed: 404, the client must initialize again
            async with Client(url, mode="legacy") as again:
                assert await whoami(again) == "b"

    anyio.run(main)


def test_a_websocket_session_bridged_to_a_replica_that_left_ends_when_the_drain_passes(
    demo_http: Callable[[str], str],
) -> None:
    urls = {name: demo_http(name) for name in ("a", "b")}
    source = MemorySource([ReplicaAddress(urls["a"])])
    registry = f"servers:\n  web: {{endpoint: '{urls['a']}', timeouts: {{drain: 5}}}}\n"

    async def main() -> None:
        async with gateway_fed_by(source, registry) as url:
            ws = url.replace("http://", "ws://").replace("/web/mcp", "/web/ws")
            async with Client(websocket_client(ws), mode="legacy") as on_a:
                assert await whoami(on_a) == "a"
                source.publish([ReplicaAddress(urls["b"])])
                await applied(url, {urls["a"]: "draining"})
                assert await whoami(on_a) == "a"  # within the drain: the bridged connection stays
                # The drain passes: the gateway closes the bridged connection, and with it the WebSocket.
                assert "connection closed" in str(await first_error(on_a)).lower()
            async with Client(websocket_client(ws), mode="legacy") as again:
                assert await whoami(again) == "b"

    anyio.run(main)


class FlakySource:
    """A source that yields a set, fails, and yields the next set when watched again."""

    def __init__(self, *sets: list[ReplicaAddress]) -> None:
        self.sets = list(sets)
        self.watches = 0

    async def watch(self) -> AsyncIterator[tuple[ReplicaAddress, ...]]:
        self.watches += 1
        yield tuple(self.sets[min(self.watches, len(self.sets)) - 1])
        raise ConnectionError("the discovery API went away")


def test_a_failing_source_keeps_its_last_set_and_is_watched_again(demo_http: Callable[[str], str]) -> None:
    urls = {name: demo_http(name) for name in ("a", "b")}
    source = FlakySource([ReplicaAddress(urls["a"])], [ReplicaAddress(urls["b"])])
    registry = f"servers:\n  web: {{endpoint: '{urls['a']}'}}\n"

    async def main() -> None:
        async with gateway_fed_by(source, registry) as url:  # the gateway outlives the source's failure
            assert await until(lambda: _sees(source, 2), within=30)  # watched again after its backoff
            await applied(url, {urls["b"]: "serving", urls["a"]: "draining"})
            async with Client(url, mode="legacy") as client:
                assert await whoami(client) == "b"

    anyio.run(main)


async def _sees(source: FlakySource, watches: int) -> bool:
    return source.watches >= watches
