"""`balancer.strategy: consistent_hash` through a real gateway: the same key (a header's value, or the
client's address) lands on the same replica, across sessions and across a reload that removes another
replica; the SDK's client opens each session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from support import RunningGateway


def registry(urls: list[str], header: str | None = "X-Tenant-Id") -> str:
    endpoints = ", ".join(f"'{url}'" for url in urls)
    hashed = f", hash_header: {header}" if header else ""
    return f"servers:\n  web: {{endpoints: [{endpoints}], balancer: {{strategy: consistent_hash{hashed}}}}}\n"


async def replica_for(url: str, tenant: str) -> str:
    async with (
        httpx2.AsyncClient(headers={"X-Tenant-Id": tenant}) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        result: Any = (await client.call_tool("whoami", {})).structured_content
        return str(result["replica"])


def placements(url: str, tenants: list[str], rounds: int) -> dict[str, set[str]]:
    async def main() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {tenant: set() for tenant in tenants}
        for _ in range(rounds):
            for tenant in tenants:
                seen[tenant].add(await replica_for(url, tenant))
        return seen

    return anyio.run(main)


def test_the_same_key_goes_to_the_same_replica_across_sessions_and_reloads(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    names = ["a", "b", "c", "d"]
    urls = {name: demo_http(name) for name in names}
    gw = gateway(registry(list(urls.values())))
    tenants = [f"tenant-{i}" for i in range(16)]
    seen = placements(gw.mcp("web"), tenants, rounds=2)
    assert all(len(replicas) == 1 for replicas in seen.values()), seen  # every session of a tenant: one replica
    before = {tenant: next(iter(replicas)) for tenant, replicas in seen.items()}
    assert len(set(before.values())) >= 3, before  # and the tenants spread over the replicas

    gw.registry.write_text(registry([urls[n] for n in names if n != "d"]))  # d leaves
    assert httpx2.post(f"{gw.url}/admin/reload").status_code == 200
    after = {tenant: next(iter(replicas)) for tenant, replicas in placements(gw.mcp("web"), tenants, 1).items()}
    moved = {tenant for tenant in tenants if after[tenant] != before[tenant]}
    assert moved == {tenant for tenant in tenants if before[tenant] == "d"}, (before, after)  # only d's tenants


def test_without_a_header_the_clients_address_is_the_key(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    urls = [demo_http(name) for name in ("a", "b", "c")]
    gw = gateway(registry(urls, header=None))
    seen = placements(gw.mcp("web"), [f"ignored-{i}" for i in range(6)], rounds=1)
    assert len(set().union(*seen.values())) == 1, seen  # every session from 127.0.0.1: one replica
