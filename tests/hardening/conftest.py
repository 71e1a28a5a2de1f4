"""Fixtures of the hardening tests: the gateway of tests/conftest.py with its output kept, so a test can read
what the gateway logged, and the checks every hardening test ends with (the gateway still serves, a real SDK
session still works, nothing it logged is a traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from support import RunningGateway

HERE = Path(__file__).resolve().parent
DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
FAULTY = f"[{sys.executable}, {HERE / 'faulty_server.py'}]"


@dataclass
class LoggedGateway(RunningGateway):
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_unhurt(self, *server_ids: str) -> None:
        """The gateway answers /healthz, an SDK client calls `echo` on each of `server_ids`, and the gateway
        logged no traceback (an exception that reached uvicorn or a task group)."""
        assert httpx2.get(f"{self.url}/healthz", timeout=10).status_code == 200

        async def echo(server_id: str) -> None:
            with anyio.fail_after(30):
                async with Client(self.mcp(server_id), mode="legacy") as client:
                    result = await client.call_tool("echo", {"text": f"still {server_id}"})
                    assert result.content[0].text == f"still {server_id}"  # type: ignore[union-attr]

        for server_id in server_ids:
            anyio.run(echo, server_id)
        output = self.output()
        assert "Traceback" not in output, output[-6000:]


@pytest.fixture
def logged_gateway(gateway: Callable[[str], RunningGateway]) -> Callable[[str], LoggedGateway]:
    """`gw = logged_gateway(registry_yaml)`: the `gateway` fixture's `mcpfleet serve`, with the checks above."""

    def start(registry_text: str) -> LoggedGateway:
        started = gateway(registry_text)
        assert started.log is not None
        return LoggedGateway(started.url, started.registry, started.log)

    return start
