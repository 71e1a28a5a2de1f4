"""Connections that outlive their handshake keep no rights the settings in force would not give
(`gateway/policy/handshake.py`; docs/security.md, "Long-lived connections").

A WebSocket is authenticated and authorized once, at its handshake. After a reload that revokes its API key,
replaces the key's value, narrows its tools or takes its server away, the next message it sends closes it
(1008, the reason naming the setting); a reload that changes nothing it holds leaves it working; a JWT
caller's socket ends once the token's `exp` has passed. A legacy SSE session whose opener's grant a reload
changed ends at its next POST (403), and its SDK client sees the stream end. All with the official SDK
client against a real gateway (in process, to read its log records) in front of the stdio demo server.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED

from mcpfleet.client.websocket import websocket_client
from mcpfleet.gateway.app import Gateway
from mcpfleet.registry import load_registry

from authserver import AuthServer
from support import ACCEPT, free_port, serving_in_process

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
CI_KEY = "ci-key-0123456789abcdef"
OPS_KEY = "ops-key-0123456789abcdef"
TIMEOUT = 30


def registry(*, ci_key: str | None = CI_KEY, ci_rule: str = "servers: [local]", extra: str = "") -> str:
    keys = f"      - {{name: ops, key: {OPS_KEY}}}\n"
    rules = "    - {principals: ['key:ops'], servers: ['*']}\n"
    if ci_key is not None:
        keys += f"      - {{name: ci, key: {ci_key}}}\n"
        rules += f"    - {{principals: ['key:ci'], {ci_rule}}}\n"
    return f"gateway:\n  auth:\n    api_keys:\n{keys}  access:\n{rules}servers:\n  local: {{command: {DEMO}}}\n{extra}"


CHANGES = {
    "the key removed": (registry(ci_key=None), "gateway.auth"),
    "the key's value replaced": (registry(ci_key="another-ci-key-0123456789"), "gateway.auth"),
    "its tools narrowed": (registry(ci_rule="servers: [local], tools: [echo]"), "gateway.access"),
    "its server taken away": (registry(ci_rule="servers: [other]"), "gateway.access"),
    "nothing it holds changed": (registry(extra=f"  other: {{command: {DEMO}}}\n"), None),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_websocket_ends_when_a_reload_takes_what_its_handshake_was_given(
    change: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text, setting = CHANGES[change]
    path = tmp_path / "registry.yaml"
    path.write_text(registry())

    async def run() -> None:
        async with (
            Gateway(load_registry(path), registry_path=path) as gateway,
            serving_in_process(gateway) as url,
        ):
            ws = f"{url.replace('http://', 'ws://')}/local/ws"
            async with Client(websocket_client(ws, headers=[("authorization", f"Bearer {CI_KEY}")])) as client:
                assert (await client.call_tool("echo", {"text": "before"})).content[0].text == "before"  # type: ignore[union-attr]
                path.write_text(text)
                assert await gateway.reload(), gateway.reload_error
                if setting is None:
                    assert (await client.call_tool("echo", {"text": "after"})).content[0].text == "after"  # type: ignore[union-attr]
                    return
                with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as failed:
                    await client.call_tool("echo", {"text": "after"})
                assert failed.value.code == CONNECTION_CLOSED, failed.value
        closed = [r.getMessage() for r in caplog.records if "WebSocket of key:ci closed" in r.getMessage()]
        assert (closed == []) is (setting is None), closed
        if setting is not None:
            assert f"({setting} changed)" in closed[0] or f"({setting})" in closed[0], closed
            # The client (the SDK sees only "Connection closed") logs the close code and the reason.
            told = [r.getMessage() for r in caplog.records if r.name == "mcpfleet.client"]
            assert any("closed the WebSocket: 1008" in m and setting in m for m in told), told

    with caplog.at_level(logging.INFO, logger="mcpfleet.gateway"):
        anyio.run(run)


def test_a_websocket_of_a_jwt_caller_ends_when_its_token_expires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = AuthServer(free_port())
    path = tmp_path / "registry.yaml"
    path.write_text(
        f"gateway:\n  auth:\n    jwt: {{issuer: '{auth.issuer}', leeway: 0}}\nservers:\n  local: {{command: {DEMO}}}\n"
    )

    async def run() -> None:
        async with (
            auth.serving(),
            Gateway(load_registry(path), registry_path=path) as gateway,
            serving_in_process(gateway) as url,
        ):
            expires = int(time.time()) + 6
            token = auth.mint(f"{url}/local/mcp", exp=expires)
            ws = f"{url.replace('http://', 'ws://')}/local/ws"
            async with Client(websocket_client(ws, headers=[("authorization", f"Bearer {token}")])) as client:
                assert (await client.call_tool("echo", {"text": "fresh"})).content[0].text == "fresh"  # type: ignore[union-attr]
                await anyio.sleep(max(0.0, expires - time.time()) + 0.5)  # the token's own clock, not a sync
                with anyio.fail_after(TIMEOUT), pytest.raises(MCPError) as failed:
                    await client.call_tool("echo", {"text": "stale"})
                assert failed.value.code == CONNECTION_CLOSED, failed.value
        closed = [r.getMessage() for r in caplog.records if "WebSocket of sub:alice closed" in r.getMessage()]
        assert closed and "the token expired" in closed[0], closed

    with caplog.at_level(logging.INFO, logger="mcpfleet.gateway"):
        anyio.run(run)


def test_a_legacy_sse_session_ends_when_a_reload_changes_its_openers_grant(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(registry())
    ci = {"authorization": f"Bearer {CI_KEY}"}

    async def run() -> None:
        async with (
            Gateway(load_registry(path), registry_path=path) as gateway,
            serving_in_process(gateway) as url,
            httpx2.AsyncClient(timeout=TIMEOUT, headers=ci) as http,
        ):
            sessions: list[str] = []
            stream = sse_client(f"{url}/local/sse", headers=ci, on_session_created=sessions.append)
            async with Client(stream) as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
                assert "stats" in listed
                path.write_text(registry(ci_rule="servers: [local], tools: [echo]"))
                assert await gateway.reload(), gateway.reload_error
                call = {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"name": "stats"}}
                (session,) = sessions
                posted = await http.post(f"{url}/local/messages/?session_id={session}", json=call, headers=ACCEPT)
                assert posted.status_code == 403, posted.text
                assert "gateway.access" in posted.json()["error"]["message"]
                # The session is over: its id is unknown from now on, and a new session gets the new grant.
                again = await http.post(f"{url}/local/messages/?session_id={session}", json=call, headers=ACCEPT)
                assert again.status_code == 404, again.text
            async with Client(sse_client(f"{url}/local/sse", headers=ci)) as client:
                assert {tool.name for tool in (await client.list_tools()).tools} == {"echo"}

    anyio.run(run)
