"""Reloads while clients call: no request is lost, and no session ends: sessions on a replica that left the
registry drain there (`timeouts.drain`), and a stdio pool's new sizes apply to the live pool."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable

import anyio
import httpx2

from support import ACCEPT, INIT, RunningGateway, rpc_messages

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def registry(replicas: list[str], strategy: str) -> str:
    endpoints = ", ".join(f"'{url}'" for url in replicas)
    return f"servers:\n  web: {{endpoints: [{endpoints}], balancer: {{strategy: {strategy}}}}}\n"


def call_through_reloads(
    gw: RunningGateway, server_id: str, registries: list[str], workers: int, pause: float
) -> tuple[Counter[str], list[str]]:
    """`workers` clients call echo in sessions of their own while the registry cycles through
    `registries` (8 reloads): what happened, and what went wrong. A reload comes at least `pause` seconds
    after the one before, and only once every worker has had an answer since it, so each round carries
    traffic however slowly the machine starts processes (the outcome, not the speed, is what is tested)."""
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    stop = anyio.Event()
    answered: set[int] = set()  # workers with an answer since the last reload
    url = gw.mcp(server_id)

    async def client_loop(client: httpx2.AsyncClient, worker: int) -> None:
        session = None
        rid = 0
        while not stop.is_set():
            if session is None:
                response = await client.post(url, json=INIT, headers=ACCEPT)
                if response.status_code != 200:
                    bad.append(f"initialize: {response.status_code} {response.text[:200]}")
                    return
                session = response.headers["mcp-session-id"]
                outcomes["initialize"] += 1
                continue
            rid += 1
            body = {
                "jsonrpc": "2.0",
                "id": rid,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": f"{worker}-{rid}"}},
            }
            response = await client.post(url, json=body, headers={**ACCEPT, "mcp-session-id": session})
            if response.status_code == 404:
                outcomes["404"] += 1  # its replica or pool left the registry: initialize again
                session = None
                continue
            if response.status_code != 200:
                bad.append(f"call: {response.status_code} {response.text[:200]}")
                return
            answer = rpc_messages(response)[-1]
            if answer.get("result", {}).get("content", [{}])[0].get("text") != f"{worker}-{rid}":
                bad.append(f"wrong answer: {answer}")
                return
            outcomes["ok"] += 1
            answered.add(worker)

    async def reloader() -> None:
        async with httpx2.AsyncClient(timeout=30) as admin:
            for round_ in range(1, 9):
                await anyio.sleep(pause)
                while len(answered) < workers and not bad:  # noqa: ASYNC110 - workers add to a set
                    await anyio.sleep(0.05)
                answered.clear()
                gw.registry.write_text(registries[round_ % len(registries)])
                answer = await admin.post(f"{gw.url}/admin/reload")
                assert answer.status_code == 200, answer.text
        stop.set()

    async def main() -> None:
        with anyio.fail_after(600):
            async with httpx2.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
                for worker in range(workers):
                    tg.start_soon(client_loop, client, worker)
                tg.start_soon(reloader)

    anyio.run(main)
    print(dict(outcomes))
    return outcomes, bad


def test_reloads_under_load_lose_no_request(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    a, b, c = (demo_http(name) for name in ("a", "b", "c"))
    layouts = [([a, b, c], "round_robin"), ([a, b], "least_connections"), ([b, c], "p2c"), ([a, c], "random")]
    registries = [registry(*layout) for layout in layouts]
    gw = gateway(registries[0])
    outcomes, bad = call_through_reloads(gw, "web", registries, workers=8, pause=0.4)
    assert bad == []
    assert outcomes["ok"] >= 8 * 8, outcomes  # every worker had answers in every round
    # Sessions sitting on a replica that was removed kept going there (it drains): none had to start again.
    assert outcomes["404"] == 0 and outcomes["initialize"] == 8, outcomes


def test_pool_changes_under_load_lose_no_request(gateway: Callable[[str], RunningGateway]) -> None:
    """Changing a stdio server's pool settings applies to the live pool: every session keeps its process."""
    pools = ["{max: 8}", "{min: 2, max: 6}", "{min: 1, max: 8, idle_timeout: 30}", "{max: 5, acquire_timeout: 20}"]
    registries = [f"servers:\n  local: {{command: {DEMO}, pool: {pool}}}\n" for pool in pools]
    gw = gateway(registries[0])
    outcomes, bad = call_through_reloads(gw, "local", registries, workers=4, pause=1.5)
    assert bad == []
    assert outcomes["ok"] >= 4 * 8, outcomes  # every worker had answers in every round
    assert outcomes["404"] == 0 and outcomes["initialize"] == 4, outcomes  # no session was ended by a reload
