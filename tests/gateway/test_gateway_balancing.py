"""Load balancing across HTTP replicas, counted at the replicas themselves (the demo server's /stats)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import httpx2

from support import ACCEPT, INIT, RunningGateway, rpc_messages


async def initialize(client: httpx2.AsyncClient, url: str) -> str:
    response = await client.post(url, json=INIT, headers=ACCEPT)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await client.post(url, json=note, headers={**ACCEPT, "mcp-session-id": session})
    return session


async def tool(
    client: httpx2.AsyncClient, url: str, session: str, name: str, arguments: dict[str, Any], rid: int = 2
) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = await client.post(url, json=body, headers={**ACCEPT, "mcp-session-id": session}, timeout=60)
    assert response.status_code == 200, response.text
    return rpc_messages(response)[-1]


def initialize_counts(replicas: dict[str, str]) -> dict[str, int]:
    return {name: httpx2.get(f"{url}/stats").json()["initialize"] for name, url in replicas.items()}


def registry(replicas: dict[str, str], strategy: str) -> str:
    endpoints = ", ".join(f"'{url}'" for url in replicas.values())
    return f"servers:\n  web: {{endpoints: [{endpoints}], balancer: {{strategy: {strategy}}}}}\n"


async def run_bounded(count: int, concurrency: int, job: Callable[[int], Any]) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int) -> None:
        async with limiter:
            await job(index)

    with anyio.fail_after(300):
        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(one, index)


def test_round_robin_spreads_3000_new_sessions_evenly(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    replicas = {name: demo_http(name) for name in ("a", "b", "c")}
    gw = gateway(registry(replicas, "round_robin"))

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:

            async def job(_: int) -> None:
                response = await client.post(gw.mcp("web"), json=INIT, headers=ACCEPT)
                assert response.status_code == 200

            await run_bounded(3000, 16, job)

    anyio.run(main)
    counts = initialize_counts(replicas)
    assert sum(counts.values()) == 3000
    assert all(abs(n - 1000) <= 50 for n in counts.values()), counts


def test_every_call_stays_on_its_sessions_replica(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    replicas = {name: demo_http(name) for name in ("a", "b", "c")}
    gw = gateway(registry(replicas, "p2c"))
    wrong: list[tuple[str, str]] = []
    homes: Counter[str] = Counter()

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:

            async def session_job(_: int) -> None:
                session = await initialize(client, gw.mcp("web"))
                home = None
                for call in range(20):
                    answer = await tool(client, gw.mcp("web"), session, "whoami", {}, rid=call + 2)
                    replica = answer["result"]["structuredContent"]["replica"]
                    home = home or replica
                    if replica != home:
                        wrong.append((home, replica))
                assert home is not None
                homes[home] += 1

            await run_bounded(200, 16, session_job)

    anyio.run(main)
    assert wrong == []
    assert sum(homes.values()) == 200 and len(homes) == 3  # spread, yet each session pinned


def test_least_connections_and_p2c_avoid_the_busy_replica(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    replicas = {name: demo_http(name) for name in ("a", "b", "c")}
    for strategy in ("least_connections", "p2c"):
        gw = gateway(registry(replicas, strategy))

        async def main(gw: RunningGateway = gw) -> tuple[str, dict[str, int], dict[str, int]]:
            async with httpx2.AsyncClient(timeout=60) as client:
                # Find sessions on one replica and keep it busy with slow calls.
                busy, slow_sessions = None, []
                while len(slow_sessions) < 4:
                    session = await initialize(client, gw.mcp("web"))
                    who = (await tool(client, gw.mcp("web"), session, "whoami", {}))["result"]["structuredContent"]
                    busy = busy or who["replica"]
                    if who["replica"] == busy:
                        slow_sessions.append(session)
                before = initialize_counts(replicas)
                async with anyio.create_task_group() as tg:
                    for session in slow_sessions:
                        tg.start_soon(tool, client, gw.mcp("web"), session, "sleep", {"seconds": 4})
                    await anyio.sleep(0.5)
                    for _ in range(30):
                        await initialize(client, gw.mcp("web"))
                return busy, before, initialize_counts(replicas)

        busy, before, after = anyio.run(main)
        new = {name: after[name] - before[name] for name in replicas}
        assert sum(new.values()) == 30
        assert new[busy] <= 3, (strategy, busy, new)  # the busy replica gets almost none of the new work
