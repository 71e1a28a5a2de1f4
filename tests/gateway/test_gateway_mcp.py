"""MCP through the gateway with the official SDK client: stdio and HTTP backends, both protocol generations."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from mcp import Client

from support import RunningGateway, free_port

DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


async def exercise(url: str, mode: str) -> dict[str, Any]:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(url, mode=mode) as client:
        tools = await client.list_tools()
        echo = await client.call_tool("echo", {"text": "through the gateway"})
        count = await client.call_tool("countdown", {"start": 3, "interval": 0}, progress_callback=on_progress)
        who = await client.call_tool("whoami", {})
        failed = await client.call_tool("fail", {"message": "expected failure"})
        resource = await client.read_resource("demo://greeting/gw")
        return {
            "version": client.protocol_version,
            "tools": {t.name for t in tools.tools},
            "echo": echo.content[0].text,  # type: ignore[union-attr]
            "count": count.content[0].text,  # type: ignore[union-attr]
            "progress": progress,
            "who": who.structured_content,
            "failed": (failed.is_error, failed.content[0].text),  # type: ignore[union-attr]
            "resource": resource.contents[0].text,  # type: ignore[union-attr]
        }


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
def test_stdio_and_http_backends_both_generations(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str], mode: str, version: str
) -> None:
    web = demo_http("web-1")
    gw = gateway(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n  web: {{endpoint: '{web}'}}\n")
    for server_id, transport in (("local", "stdio"), ("web", "http")):
        seen = anyio.run(exercise, gw.mcp(server_id), mode)
        assert seen["version"] == version
        assert {"echo", "countdown", "whoami"} <= seen["tools"]
        assert seen["echo"] == "through the gateway"
        assert seen["count"] == "counted down from 3" and seen["progress"] == [1.0, 2.0, 3.0]
        assert seen["who"]["transport"] == transport
        assert seen["failed"] == (True, "Error executing tool fail: expected failure")
        assert seen["resource"] == "Hello, gw!"


def test_http_entry_falls_back_to_its_command_when_the_endpoint_is_down(
    gateway: Callable[[str], RunningGateway],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    argv = f"[{sys.executable}, -m, mcpfleet.demo, stdio, --replica, fallback]"
    gw = gateway(f"servers:\n  both: {{endpoint: '{dead}', command: {argv}}}\n")
    seen = anyio.run(exercise, gw.mcp("both"), "legacy")
    assert seen["who"]["replica"] == "fallback"


def test_each_session_gets_its_own_process(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")

    async def pids() -> set[int]:
        found: set[int] = set()

        async def one() -> None:
            async with Client(gw.mcp("local"), mode="legacy") as client:
                who = await client.call_tool("whoami", {})
                assert who.structured_content is not None
                found.add(who.structured_content["pid"])

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        return found

    assert len(anyio.run(pids)) == 4


def test_cli_works_through_the_gateway_unchanged(gateway: Callable[[str], RunningGateway]) -> None:
    from support import run_cli

    gw = gateway(f"servers:\n  local: {{command: {DEMO_STDIO}, description: through the gateway}}\n")
    listed = run_cli("servers", "--gateway", gw.url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(s["id"], s["type"], s["description"]) for s in json.loads(listed.stdout)] == [
        ("local", "stdio", "through the gateway")
    ]
    tools = run_cli("tools", "local", "--gateway", gw.url, "--json")
    assert "whoami" in {t["name"] for t in json.loads(tools.stdout)}
    called = run_cli("call", "local", "echo", "--arg", "text=via gateway", "--gateway", gw.url)
    assert (called.returncode, called.stdout.strip()) == (0, "via gateway")
    failed = run_cli("call", "local", "fail", "--gateway", gw.url)
    assert failed.returncode == 1
    unknown = run_cli("tools", "nope", "--gateway", gw.url)
    assert unknown.returncode == 3 and "unknown server 'nope'" in unknown.stderr
