"""The connection layer's detection order, against real demo servers on 127.0.0.1 and real children."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from mcpfleet.client.connect import connect, http_entry
from mcpfleet.errors import ProtocolError, ServerStartError, ServerUnreachableError
from mcpfleet.registry import parse_registry
from mcpfleet.registry.model import Server

from support import free_port

DEMO = [sys.executable, "-m", "mcpfleet.demo", "stdio"]


def entry(body: str) -> Server:
    return parse_registry(f"servers:\n  s: {body}\n", "test.yaml", environ={}).servers["s"]


async def whoami(server: Server, **options: Any) -> tuple[str, str, dict[str, Any]]:
    async with connect(server, **options) as connection:
        result = await connection.client.call_tool("whoami", {})
        assert result.structured_content is not None
        return connection.transport, connection.protocol_version, result.structured_content


def test_stdio_speaks_the_modern_generation_by_default_and_legacy_on_request() -> None:
    server = entry(f"{{command: {DEMO!r}}}".replace("'", '"'))
    transport, version, who = anyio.run(whoami, server)
    assert (transport, version, who["transport"]) == ("stdio", "2026-07-28", "stdio")
    _, legacy, _ = anyio.run(lambda: whoami(server, mode="legacy"))
    assert legacy == "2025-11-25"


def test_streamable_http_first(demo_http: Callable[[str], str]) -> None:
    url = demo_http("r1")
    transport, _, who = anyio.run(whoami, entry(f"{{endpoint: '{url}'}}"))
    assert (transport, who["replica"]) == ("streamable-http", "r1")


def test_legacy_sse_when_the_mcp_path_answers_404(demo_http: Callable[[str], str]) -> None:
    url = demo_http("r1")
    transport, version, who = anyio.run(whoami, entry(f"{{endpoint: '{url}', path: /not-here}}"))
    assert (transport, who["replica"]) == ("sse", "r1")
    assert version  # negotiated over the legacy transport too


def test_no_fallback_when_transport_is_pinned(demo_http: Callable[[str], str]) -> None:
    url = demo_http("r1")
    with pytest.raises(ProtocolError, match="does not serve Streamable HTTP"):
        anyio.run(whoami, entry(f"{{endpoint: '{url}', path: /not-here, transport: streamable-http}}"))


def test_next_replica_when_the_first_is_unreachable(demo_http: Callable[[str], str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    url = demo_http("second")
    _, _, who = anyio.run(whoami, entry(f"{{endpoints: ['{dead}', '{url}']}}"))
    assert who["replica"] == "second"


def test_stdio_command_when_no_endpoint_answers() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    argv = [*DEMO, "--replica", "fallback"]
    server = entry(f"{{endpoint: '{dead}', command: {argv!r}}}".replace("'", '"'))
    transport, _, who = anyio.run(whoami, server)
    assert (transport, who["replica"]) == ("stdio", "fallback")


def test_unreachable_without_command_names_server_and_url() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachableError, match=f"server 's' is unreachable: {dead}/mcp"):
        anyio.run(whoami, entry(f"{{endpoint: '{dead}'}}"))


def test_failed_detection_names_every_url_and_its_answer(demo_http: Callable[[str], str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    url = demo_http("r1")  # a real MCP server, asked at paths it does not serve
    server = entry(f"{{endpoints: ['{dead}', '{url}'], path: /no-mcp, sse_path: /no-sse}}")
    with pytest.raises(ProtocolError) as caught:
        anyio.run(whoami, server)
    message = str(caught.value)
    assert message.startswith("server 's' answered, but not as an MCP server: "), message
    assert f"{dead}/no-mcp: ConnectError" in message  # the endpoint that did not answer
    assert f"{url}/no-mcp: HTTP 404, no Streamable HTTP here; {url}/no-sse: HTTP 404" in message


def test_stdio_fallback_failure_says_what_the_endpoints_answered() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerStartError) as caught:
        anyio.run(whoami, entry(f"{{endpoint: '{dead}', command: [no-such-mcp-server-xyz]}}"))
    message = str(caught.value)
    assert "'no-such-mcp-server-xyz' was not found" in message
    assert f"after no endpoint answered ({dead}/mcp: ConnectError" in message


def test_child_that_exits_at_once_reports_code_and_stderr() -> None:
    server = entry('{command: [sh, -c, "echo no-config-found >&2; exit 7"]}')
    with pytest.raises(ServerStartError) as caught:
        anyio.run(whoami, server)
    assert "exited with code 7" in str(caught.value) and "no-config-found" in caught.value.stderr_tail


def test_child_that_never_answers_is_stopped_after_the_startup_timeout() -> None:
    server = entry("{command: [sleep, '300'], timeouts: {startup: 0.5}}")
    with pytest.raises(ServerStartError, match=r"did not finish the MCP handshake within 0\.5 s"):
        anyio.run(whoami, server)


def test_gateway_style_entry_points_at_id_prefix() -> None:
    server = http_entry("time", "http://gw:8000/time")
    assert server.mcp_url(server.endpoints[0]) == "http://gw:8000/time/mcp"
    assert server.sse_url(server.endpoints[0]) == "http://gw:8000/time/sse"
