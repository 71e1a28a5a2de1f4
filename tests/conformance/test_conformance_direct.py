"""Our conformance fixture server directly (no gateway): the official suite over HTTP, and its stdio entry point."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Literal

import anyio
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning

from support import free_port, running

HERE = Path(__file__).resolve().parent
MIN_SCENARIOS = 30


def _load(name: str) -> ModuleType:
    """Import a module of this directory under a unique name (other test directories may have a `run.py`)."""
    qualified = f"mcpfleet_conformance_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.npm
def test_fixture_passes_every_active_scenario(tmp_path: Path) -> None:
    runner = _load("run")
    port = free_port()
    argv = [sys.executable, str(HERE / "fixture.py"), "http", "--host", "127.0.0.1", "--port", str(port)]
    with running(argv, port) as base_url:
        result = runner.run_suite(f"{base_url}/mcp", tmp_path / "results")
    print(result.summary())
    assert len(result.scenarios) >= MIN_SCENARIOS, result.summary()
    assert result.ok, result.summary()
    assert [scenario.name for scenario in result.failed] == []
    assert result.warnings == 0, result.summary()
    assert result.passed_checks >= len(result.scenarios)


@pytest.mark.parametrize(("mode", "version"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
def test_fixture_over_stdio_serves_both_protocol_generations(mode: Literal["legacy", "auto"], version: str) -> None:
    """The suite speaks HTTP only; this covers the stdio entry point a gateway runs as a backend process."""
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = types.TextContent(type="text", text="sampled")
        return types.CreateMessageResult(role="assistant", content=content, model="test-model")

    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"username": "u", "email": "u@example.com"})

    async def session() -> None:
        server = StdioServerParameters(command=sys.executable, args=[str(HERE / "fixture.py"), "stdio"])
        client = Client(
            server,
            mode=mode,
            logging_callback=on_log,
            log_level="debug",
            sampling_callback=sample,
            elicitation_callback=elicit,
        )
        async with client:
            assert client.protocol_version == version
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"test_simple_text", "test_sampling", "test_elicitation", "json_schema_2020_12_tool"} <= names
            sampled = await client.call_tool("test_sampling", {"prompt": "hello"})
            assert sampled.content == [types.TextContent(type="text", text="LLM response: sampled")]
            elicited = await client.call_tool("test_elicitation", {"message": "who are you?"})
            assert isinstance(elicited.content[0], types.TextContent)
            assert '"username":"u"' in elicited.content[0].text
            await client.call_tool("test_tool_with_logging", {})
            assert (await client.call_tool("test_error_handling", {})).is_error
            text = (await client.read_resource("test://static-text")).contents[0]
            assert isinstance(text, types.TextResourceContents)
            assert text.text == "This is the content of the static text resource."

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)  # logging and sampling are deprecated in 2026-07-28
        anyio.run(session)
    assert logs == ["Tool execution started", "Tool processing data", "Tool execution completed"]
