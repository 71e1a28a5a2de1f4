"""Which request headers reach an HTTP server through the gateway, on every client transport.

The server, written with the official SDK, answers its tool `headers` with the headers of the HTTP request
the call arrived in. Every client sends the same set: the harmless and end-to-end ones (passed on by the
passthrough only), a header the entry configures too (the entry's value wins), hop-by-hop headers, and
claims about its own address (never passed on: the gateway sets X-Forwarded-* itself).
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from mcpfleet.client.websocket import websocket_client

from support import RunningGateway, free_port, running

SERVER = """
import base64
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("echo-headers")


@server.tool()
def headers(ctx: Context) -> list[list[str]]:
    '''The headers of the HTTP request this call arrived in, in order, repeated ones repeated.'''
    request = ctx.request_context.request
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.headers.raw]


app = server.streamable_http_app(host="127.0.0.1")
app.router.routes.extend(server.sse_app(host="127.0.0.1").routes)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

ENTRY_HEADERS = "{Authorization: 'Bearer entry-token', X-Entry: from-entry}"
# What every client sends (WebSocket clients: the handshake's headers).
CLIENT_HEADERS = {
    "authorization": "Bearer client-token",  # the entry configures Authorization: replaced
    "x-entry": "from-client",  # likewise, in another case than the entry's
    "x-request-id": "req-42",  # harmless: passed on by the passthrough
    "cookie": "theme=dark",  # end-to-end: passed on by the passthrough
    "x-forwarded-host": "evil.example",  # claims about the client: the gateway's own values only
    "x-forwarded-port": "9999",
    "forwarded": "for=203.0.113.7;host=evil.example;proto=https",
    "x-real-ip": "203.0.113.8",
    "proxy-authorization": "Basic c2VjcmV0",  # hop-by-hop
}
HOP_BY_HOP = {
    "connection": "keep-alive, x-hop",
    "x-hop": "named by Connection",
    "keep-alive": "timeout=5",
    "te": "trailers",
}
NEVER = {"forwarded", "x-real-ip", "x-forwarded-port", "proxy-authorization", "x-hop", "keep-alive", "te", "origin"}


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[str]:
    script = tmp_path / "echo_headers.py"
    script.write_text(SERVER)
    port = free_port()
    with running([sys.executable, str(script), str(port)], port) as url:
        yield url


@pytest.fixture
def gw(gateway: Callable[[str], RunningGateway], echo_server: str) -> RunningGateway:
    return gateway(
        "servers:\n"
        f"  web: {{endpoint: '{echo_server}', headers: {ENTRY_HEADERS}}}\n"
        f"  old: {{url: '{echo_server}/sse', headers: {ENTRY_HEADERS}}}\n"
    )


def client_target(gw: RunningGateway, server_id: str, transport: str, extra: dict[str, str]) -> Any:
    sent = {**CLIENT_HEADERS, **extra}
    if transport == "streamable-http":
        http = httpx2.AsyncClient(headers=[*sent.items(), *HOP_BY_HOP.items(), ("x-dup", "1"), ("x-dup", "2")])
        return streamable_http_client(gw.mcp(server_id), http_client=http)
    if transport == "sse":
        return sse_client(f"{gw.url}/{server_id}/sse", headers={**sent, **HOP_BY_HOP})
    return websocket_client(f"{gw.url.replace('http://', 'ws://')}/{server_id}/ws", headers=list(sent.items()))


def headers_seen(
    gw: RunningGateway, server_id: str, transport: str, extra: dict[str, str] | None = None
) -> dict[str, list[str]]:
    async def run() -> Any:
        async with Client(client_target(gw, server_id, transport, extra or {}), mode="legacy") as client:
            result = await client.call_tool("headers", {})
            return result.structured_content

    seen: dict[str, list[str]] = {}
    for name, value in anyio.run(run)["result"]:
        seen.setdefault(name, []).append(value)
    return seen


@pytest.mark.parametrize("server_id", ["web", "old"])
@pytest.mark.parametrize("transport", ["streamable-http", "sse", "websocket"])
def test_headers_reaching_the_server_on_every_route(
    gw: RunningGateway, echo_server: str, transport: str, server_id: str
) -> None:
    seen = headers_seen(gw, server_id, transport)
    # The entry's headers, never the client's of the same name (whatever the case).
    assert seen["authorization"] == ["Bearer entry-token"]
    assert seen["x-entry"] == ["from-entry"]
    # The gateway's X-Forwarded-*, once each: the client's address, the Host it asked for, its scheme.
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-host"] == [urlsplit(gw.url).netloc]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["host"] == [urlsplit(echo_server).netloc]
    assert not NEVER & set(seen), seen
    if transport == "streamable-http" and server_id == "web":  # the passthrough
        assert seen["x-request-id"] == ["req-42"]
        assert seen["cookie"] == ["theme=dark"]
        assert seen["x-dup"] == ["1", "2"]  # repeated headers stay repeated, in order
        assert seen["user-agent"] == [f"python-httpx2/{httpx2.__version__}"]
        assert len(seen["content-length"]) == 1
        assert "connection" not in seen
    else:  # bridged: the gateway's own connection, which carries nothing else of the client's
        assert not {"x-request-id", "cookie", "x-dup"} & set(seen), seen


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_a_clients_claims_about_its_address_do_not_reach_the_server(gw: RunningGateway, transport: str) -> None:
    seen = headers_seen(gw, "web", transport, {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"})
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]


def test_a_user_and_password_in_the_endpoint_url_reach_the_server_as_basic_credentials(
    gateway: Callable[[str], RunningGateway], echo_server: str
) -> None:
    """RFC 7617 Basic from the URL's userinfo (percent-decoded), as httpx sends it from the CLI; it replaces
    the client's own Authorization (no `gateway.auth`, so the client's would otherwise pass), never beside it."""
    with_userinfo = echo_server.replace("http://", "http://user:p%40ss@") + "/mcp"
    gw = gateway(f"servers:\n  creds: {{endpoints: ['{with_userinfo}']}}\n")
    seen = headers_seen(gw, "creds", "streamable-http")  # the client sends Authorization: Bearer client-token
    assert seen["authorization"] == ["Basic " + base64.b64encode(b"user:p@ss").decode()]
    assert seen["host"] == [urlsplit(echo_server).netloc]
