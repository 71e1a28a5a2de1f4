"""A replica dies mid-run and comes back: new sessions keep working, its sessions get 404, it rejoins."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from support import ACCEPT, INIT, RunningGateway, demo_argv, free_port, running, wait_for
from test_gateway_balancing import initialize, tool


def test_killed_replica_is_ejected_and_rejoins_after_restart(gateway: Callable[[str], RunningGateway]) -> None:
    steady, flaky = free_port(), free_port()
    with running(demo_argv(steady, "steady"), steady) as steady_url:
        flaky_url = f"http://127.0.0.1:{flaky}"
        registry = (
            f"servers:\n  web: {{endpoints: ['{steady_url}', '{flaky_url}'],"
            " health: {failures_to_eject: 1, ejection_backoff: 1, max_ejection_backoff: 1}}\n"
        )
        with running(demo_argv(flaky, "flaky"), flaky):
            gw = gateway(registry)
            pinned = anyio.run(sessions_on, gw, "flaky")
        # The flaky replica is gone now; its session is lost with it.
        gone = httpx2.post(
            gw.mcp("web"),
            json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
            headers={**ACCEPT, "mcp-session-id": pinned},
        )
        assert gone.status_code == 404
        # No new session fails, even before the ejection: nothing was sent, so the next replica is tried.
        replicas = anyio.run(new_sessions, gw, 20)
        assert replicas == {"steady"}
        status = httpx2.get(f"{gw.url}/servers").json()["servers"][0]["replicas"]
        assert {r["url"]: r["health"] for r in status}[flaky_url] == "ejected"
        # Restarted, it gets traffic again once the backoff is over.
        with running(demo_argv(flaky, "flaky"), flaky):
            time.sleep(1.2)
            assert "flaky" in anyio.run(new_sessions, gw, 20)


async def sessions_on(gw: RunningGateway, wanted: str) -> str:
    """A session whose replica is `wanted` (round robin reaches it within a few tries)."""
    async with httpx2.AsyncClient(timeout=30) as client:
        for _ in range(10):
            session = await initialize(client, gw.mcp("web"))
            who = await tool(client, gw.mcp("web"), session, "whoami", {})
            if who["result"]["structuredContent"]["replica"] == wanted:
                return session
    raise AssertionError(f"no session landed on {wanted}")


async def new_sessions(gw: RunningGateway, count: int) -> set[str]:
    seen: set[str] = set()
    async with httpx2.AsyncClient(timeout=30) as client:
        for _ in range(count):
            response = await client.post(gw.mcp("web"), json=INIT, headers=ACCEPT)
            assert response.status_code == 200, response.text
            session = response.headers["mcp-session-id"]
            who = await tool(client, gw.mcp("web"), session, "whoami", {})
            seen.add(who["result"]["structuredContent"]["replica"])
    return seen


def test_active_health_checks_find_a_dead_replica_without_traffic(gateway: Callable[[str], RunningGateway]) -> None:
    steady, flaky = free_port(), free_port()
    flaky_url = f"http://127.0.0.1:{flaky}"

    def health() -> str:
        replicas = httpx2.get(f"{gw.url}/servers").json()["servers"][0]["replicas"]
        return str({r["url"]: r["health"] for r in replicas}[flaky_url])

    with running(demo_argv(steady, "steady"), steady) as steady_url:
        registry = (
            f"servers:\n  web: {{endpoints: ['{steady_url}', '{flaky_url}'],"
            " health: {active: true, interval: 0.3, timeout: 1}}\n"
        )
        with running(demo_argv(flaky, "flaky"), flaky):
            gw = gateway(registry)
            wait_for(lambda: health() == "ok")
        wait_for(lambda: health() == "ejected")  # no request was sent: the probe found it
        assert anyio.run(new_sessions, gw, 6) == {"steady"}
        with running(demo_argv(flaky, "flaky"), flaky):
            wait_for(lambda: health() == "ok")
            assert "flaky" in anyio.run(new_sessions, gw, 6)


def test_an_sdk_client_whose_replica_dies_starts_again_on_another(gateway: Callable[[str], RunningGateway]) -> None:
    """The official client sees the lost session as an error (404 with a JSON-RPC body, 'Session not
    found'); connecting again initializes a session on a replica that is alive."""
    steady, flaky = free_port(), free_port()
    with running(demo_argv(steady, "steady"), steady) as steady_url:
        flaky_url = f"http://127.0.0.1:{flaky}"
        gw = gateway(f"servers:\n  web: {{endpoints: ['{steady_url}', '{flaky_url}']}}\n")

        async def main() -> tuple[str, str]:
            async with contextlib.AsyncExitStack() as stack:
                with running(demo_argv(flaky, "flaky"), flaky):
                    for _ in range(10):  # round robin: a client on the flaky replica within a few tries
                        client = await stack.enter_async_context(Client(gw.mcp("web"), mode="legacy"))
                        if (await replica_of(client)) == "flaky":
                            break
                    else:
                        raise AssertionError("no session landed on the flaky replica")
                # The flaky replica has exited with the session it held.
                with pytest.raises(MCPError) as lost:
                    await client.call_tool("echo", {"text": "still there?"})
                async with Client(gw.mcp("web"), mode="legacy") as again:
                    return str(lost.value), await replica_of(again)

        lost, replica = anyio.run(main)
        assert "Session not found" in lost
        assert replica == "steady"


async def replica_of(client: Client) -> str:
    identity = await client.call_tool("whoami", {})
    assert identity.structured_content is not None
    return str(identity.structured_content["replica"])
