"""Every client transport in front of every backend: Streamable HTTP, legacy HTTP+SSE and WebSocket clients;
stdio, Streamable HTTP and legacy-SSE-only servers. Server-to-client requests reach the right client."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client

from mcpfleet.client.websocket import websocket_client

from support import RunningGateway

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
FIXTURE = Path(__file__).resolve().parents[1] / "conformance" / "fixture.py"


def target(gw: RunningGateway, server_id: str, transport: str) -> Any:
    if transport == "streamable-http":
        return gw.mcp(server_id)
    if transport == "sse":
        return sse_client(f"{gw.url}/{server_id}/sse")
    return websocket_client(f"{gw.url.replace('http://', 'ws://')}/{server_id}/ws")


async def exercise(server: Any, mode: str) -> dict[str, Any]:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(server, mode=mode) as client:
        echo = await client.call_tool("echo", {"text": "across transports"})
        await client.call_tool("countdown", {"start": 2, "interval": 0}, progress_callback=on_progress)
        who = await client.call_tool("whoami", {})
        return {"echo": echo.content[0].text, "progress": progress, "who": who.structured_content}  # type: ignore[union-attr]


@pytest.mark.parametrize("client_transport", ["streamable-http", "sse", "websocket"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_client_transport_by_backend(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str], client_transport: str, mode: str
) -> None:
    web = demo_http("web")
    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\n  web: {{endpoint: '{web}'}}\n  old: {{url: '{web}/sse'}}\n")
    for server_id, expected in (("local", "stdio"), ("web", "http"), ("old", "http")):
        seen = anyio.run(exercise, target(gw, server_id, client_transport), mode)
        assert seen["echo"] == "across transports", (server_id, seen)
        assert seen["progress"] == [1.0, 2.0], (server_id, seen)
        assert seen["who"]["transport"] == expected


@pytest.mark.parametrize("client_transport", ["streamable-http", "sse", "websocket"])
def test_server_to_client_requests_reach_the_client(
    gateway: Callable[[str], RunningGateway], client_transport: str
) -> None:
    gw = gateway(f"servers:\n  fixture: {{command: [{sys.executable}, '{FIXTURE}', stdio]}}\n")

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled via {client_transport}"),
            model="test-model",
        )

    async def run() -> str:
        async with Client(target(gw, "fixture", client_transport), mode="legacy", sampling_callback=sampling) as c:
            result = await c.call_tool("test_sampling", {"prompt": "hello"})
            return " ".join(getattr(block, "text", "") for block in result.content)

    assert f"sampled via {client_transport}" in anyio.run(run)


def test_websocket_needs_the_mcp_subprotocol(gateway: Callable[[str], RunningGateway]) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\n")

    async def without_subprotocol() -> int:
        try:
            async with connect(f"{gw.url.replace('http://', 'ws://')}/local/ws"):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert anyio.run(without_subprotocol) == 400  # the handshake is answered with the gateway's own status
