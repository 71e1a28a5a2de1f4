"""Two gateway processes that share a session key serve each other's sessions (no shared store)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio
import httpx2

from support import ACCEPT, INIT, RunningGateway
from test_gateway_balancing import initialize, run_bounded, tool

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def shared_registry(replicas: list[str], key: str) -> str:
    endpoints = ", ".join(f"'{url}'" for url in replicas)
    return (
        f"servers:\n  web: {{endpoints: [{endpoints}]}}\n  local: {{command: {DEMO}}}\n"
        f"gateway: {{session_keys: ['{key}', 'retired-key-0123456789abcdef0123456789ab']}}\n"
    )


def test_sessions_alternate_between_two_gateways_and_stay_on_their_replica(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    replicas = [demo_http(name) for name in ("a", "b", "c")]
    first = gateway(shared_registry(replicas, "fleet-secret-1-0123456789abcdef0123456789"))
    second = gateway(shared_registry(replicas, "fleet-secret-1-0123456789abcdef0123456789"))
    wrong: list[tuple[str, str]] = []

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:

            async def session_job(index: int) -> None:
                gateways = (first, second) if index % 2 else (second, first)
                session = await initialize(client, gateways[0].mcp("web"))
                home = None
                for call in range(20):
                    url = gateways[call % 2].mcp("web")
                    answer = await tool(client, url, session, "whoami", {}, rid=call + 2)
                    replica = answer["result"]["structuredContent"]["replica"]
                    home = home or replica
                    if replica != home:
                        wrong.append((home, replica))

            await run_bounded(200, 16, session_job)

    anyio.run(main)
    assert wrong == []


def test_foreign_forged_and_stdio_sessions_on_the_wrong_gateway_get_404(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    replicas = [demo_http("a")]
    first = gateway(shared_registry(replicas, "fleet-secret-1-0123456789abcdef0123456789"))
    second = gateway(shared_registry(replicas, "fleet-secret-1-0123456789abcdef0123456789"))
    stranger = gateway(shared_registry(replicas, "another-fleet-0123456789abcdef0123456789"))

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:
            web = await initialize(client, first.mcp("web"))
            body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
            foreign = await client.post(stranger.mcp("web"), json=body, headers={**ACCEPT, "mcp-session-id": web})
            assert foreign.status_code == 404  # another fleet's key cannot open it
            forged = web[:-6] + ("AAAAAA" if not web.endswith("AAAAAA") else "BBBBBB")
            tampered = await client.post(first.mcp("web"), json=body, headers={**ACCEPT, "mcp-session-id": forged})
            assert tampered.status_code == 404

            local = await client.post(first.mcp("local"), json=INIT, headers=ACCEPT)
            token = local.headers["mcp-session-id"]
            elsewhere = await client.post(second.mcp("local"), json=body, headers={**ACCEPT, "mcp-session-id": token})
            assert elsewhere.status_code == 404
            message = elsewhere.json()["error"]["message"]
            assert "held by gateway instance" in message and "must reach the gateway process that started it" in message

    anyio.run(main)
