"""Messages over 1 MiB on every route, and the one size limit (`gateway.max_message_bytes`) on all of them.

Client transports (Streamable HTTP, legacy HTTP+SSE, WebSocket) by backends (a Streamable HTTP server that
answers with event streams, the same answering JSON, a legacy-SSE-only server, a stdio process), all one
SDK server whose tool `blob` returns exactly `size` characters of a numbered pattern, so that a lost,
repeated or reordered piece shows.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from mcpfleet.client.transport import session_message
from mcpfleet.client.websocket import websocket_client

from support import ACCEPT, INIT, RunningGateway, free_port, running

SERVER = """
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("blobs")


@server.tool(structured_output=False)
def blob(size: int) -> str:
    '''Exactly `size` characters: "000000000,000000001,..." cut at `size`.'''
    return "".join(f"{i:09d}," for i in range(size // 10 + 1))[:size]


if sys.argv[1] == "stdio":
    server.run("stdio")
else:
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1", json_response=sys.argv[3:] == ["--json"])
    app.router.routes.extend(server.sse_app(host="127.0.0.1").routes)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""

KiB, MiB = 1024, 1024 * 1024
BACKENDS = ("streamed", "json", "legacy", "stdio")
CLIENTS = ("streamable-http", "sse", "websocket")


def pattern(size: int) -> str:
    return "".join(f"{i:09d}," for i in range(size // 10 + 1))[:size]


def check_text(text: str, size: int) -> None:
    """Exactly the pattern; a short message when not (pytest would print a diff of megabytes)."""
    expected = pattern(size)
    if text != expected:
        first = next((i for i, (a, b) in enumerate(zip(text, expected, strict=False)) if a != b), min(len(text), size))
        pytest.fail(f"{len(text)} characters arrived, {size} expected; first difference at {first}")


@pytest.fixture
def fleet(tmp_path: Path, gateway: Callable[[str], RunningGateway]) -> Iterator[Callable[[str], RunningGateway]]:
    """`fleet(gateway_settings)`: the blob server over HTTP (event streams and JSON) and a gateway with an
    entry per backend."""
    script = tmp_path / "blobs.py"
    script.write_text(SERVER)
    with contextlib.ExitStack() as stack:
        urls = []
        for extra in ([], ["--json"]):
            port = free_port()
            urls.append(stack.enter_context(running([sys.executable, str(script), "http", str(port), *extra], port)))
        streamed, json_answers = urls

        def start(settings: str = "{}") -> RunningGateway:
            return gateway(
                f"gateway: {settings}\n"
                "servers:\n"
                f"  streamed: {{endpoint: '{streamed}'}}\n"
                f"  json: {{endpoint: '{json_answers}'}}\n"
                f"  legacy: {{url: '{streamed}/sse'}}\n"
                f"  stdio: {{command: [{sys.executable}, '{script}', stdio]}}\n"
            )

        yield start


@contextlib.asynccontextmanager
async def legacy_sse(url: str) -> AsyncIterator[TransportStreams]:
    """The SDK's Client over legacy HTTP+SSE without a bound on events. The SDK's own `sse_client` cannot
    receive an event over 1 MiB (its limit is fixed), so it cannot be the client of these tests."""
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(60, read=300)) as http,
        http.stream("GET", url, headers={"accept": "text/event-stream"}) as response,
    ):
        events = httpx2.EventSource(response, max_event_size=None).__aiter__()
        first = await events.__anext__()
        assert first.event == "endpoint", first
        endpoint = urljoin(url, first.data)
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

        async def from_server() -> None:
            async with read_writer:
                async for event in events:
                    if event.event == "message" and event.data:
                        await read_writer.send(session_message(event.data))

        async def to_server() -> None:
            async with write_reader:
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    sent = await http.post(endpoint, content=data, headers={"content-type": "application/json"})
                    sent.raise_for_status()

        async with anyio.create_task_group() as tg:
            tg.start_soon(from_server)
            tg.start_soon(to_server)
            try:
                yield read_stream, write_stream
            finally:
                tg.cancel_scope.cancel()


def client_target(gw: RunningGateway, server_id: str, transport: str) -> Any:
    if transport == "streamable-http":
        return streamable_http_client(gw.mcp(server_id), max_sse_event_size=None)
    if transport == "sse":
        return legacy_sse(f"{gw.url}/{server_id}/sse")
    return websocket_client(f"{gw.url.replace('http://', 'ws://')}/{server_id}/ws", max_size=32 * MiB)


async def blob(client: Client, size: int) -> str:
    result = await client.call_tool("blob", {"size": size})
    assert not result.is_error, result
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


@pytest.mark.timeout(600)
@pytest.mark.parametrize("transport", CLIENTS)
def test_large_answers_arrive_whole_on_every_route(fleet: Callable[[str], RunningGateway], transport: str) -> None:
    gw = fleet("{}")

    async def run() -> None:
        for server_id in BACKENDS:
            async with Client(client_target(gw, server_id, transport), mode="legacy") as client:
                for size in (64 * KiB, 3 * MiB // 2, 10 * MiB):
                    try:
                        check_text(await blob(client, size), size)
                    except BaseException as exc:
                        exc.add_note(f"backend {server_id}, {size} characters")
                        raise

    anyio.run(run)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("transport", "mode"),
    [
        pytest.param("streamable-http", "legacy"),
        pytest.param("streamable-http", "auto"),  # 2026-07-28 where the route supports it
        pytest.param("sse", "legacy"),
        pytest.param("websocket", "legacy"),
    ],
)
def test_an_answer_over_the_limit_fails_that_request_only(
    fleet: Callable[[str], RunningGateway], transport: str, mode: str, backend: str
) -> None:
    gw = fleet(f"{{max_message_bytes: {2 * MiB}}}")

    async def run() -> None:
        async with Client(client_target(gw, backend, transport), mode=mode) as client:
            check_text(await blob(client, MiB), MiB)
            for _ in range(2):
                with pytest.raises(MCPError) as caught:
                    await blob(client, 3 * MiB)
                assert caught.value.code == -32019
                assert f"limit of {2 * MiB} bytes (setting: gateway.max_message_bytes)" in caught.value.message
                check_text(await blob(client, 1000), 1000)  # the same session goes on

    anyio.run(run)


@pytest.mark.timeout(600)
def test_a_legacy_sse_server_is_not_taken_for_a_crashing_process(fleet: Callable[[str], RunningGateway]) -> None:
    """Answers over the limit (the default, 16 MiB) from a legacy SSE server, session after session, never
    end the connection to it: no crash loop (-32017), and `/servers` reports none."""
    gw = fleet("{}")
    over = 17 * MiB

    async def run() -> None:
        for _ in range(4):  # three quick ends in a row made a crash loop
            async with Client(streamable_http_client(gw.mcp("legacy")), mode="legacy") as client:
                with pytest.raises(MCPError) as caught:
                    await blob(client, over)
                assert caught.value.code == -32019 and "gateway.max_message_bytes" in caught.value.message
                check_text(await blob(client, 100), 100)
        async with Client(websocket_client(f"{gw.url.replace('http://', 'ws://')}/legacy/ws")) as client:
            check_text(await blob(client, 100), 100)

    anyio.run(run)
    with httpx2.Client() as http:
        status = http.get(f"{gw.url}/servers").json()
    legacy = next(server for server in status["servers"] if server["id"] == "legacy")
    assert legacy["health"] != "crash_loop" and "crash_loop" not in legacy, legacy


def test_a_legacy_sse_server_that_is_down_is_unreachable_not_crashing(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  down: {{url: 'http://127.0.0.1:{free_port()}/sse'}}\n")
    with httpx2.Client(timeout=30) as http:
        for _ in range(4):  # three quick ends in a row made a crash loop
            answer = http.post(gw.mcp("down"), json=INIT, headers=ACCEPT)
            assert answer.status_code == 502, answer.text
            error = answer.json()["error"]
            assert error["code"] == -32012 and "server 'down' is unreachable" in error["message"], error
        stream = http.get(f"{gw.url}/down/sse", headers={"accept": "text/event-stream"})
        assert stream.status_code == 502 and stream.json()["error"]["code"] == -32012
