"""The authentication seat on a running gateway: an in-memory `Authenticator` plugged into `Gateway`, served
by uvicorn, called with httpx2, the MCP SDK client and a WebSocket client.

Without the right `Authorization` a request gets 401 with a JSON-RPC error body and a `WWW-Authenticate`
challenge, before it reaches a server; with it, a session opens and a tool answers. Probes stay open.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mcpfleet.gateway.app import Gateway
from mcpfleet.gateway.asgi import Scope, header
from mcpfleet.gateway.policy import Identity, unauthorized
from mcpfleet.registry import load_registry

from support import ACCEPT, INIT, serving_in_process

TOKEN = "s3cret"
CHALLENGE = 'Bearer realm="mcpfleet"'


class Tokens:
    """Bearer tokens known in memory; records the subjects it let in."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.admitted: list[str] = []

    async def authenticate(self, scope: Scope) -> Identity:
        scheme, _, token = (header(scope, b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise unauthorized("this gateway needs a valid bearer token (Authorization: Bearer <token>)", CHALLENGE)
        self.admitted.append(self.tokens[token])
        return Identity(self.tokens[token])


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, tokens: Tokens) -> AsyncIterator[str]:
    """A Gateway with `tokens` as its authenticator, on uvicorn on a free port, until the block ends."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"servers:\n  local: {{command: [{sys.executable}, -m, mcpfleet.demo, stdio]}}\n")
    async with (
        Gateway(load_registry(registry), registry_path=registry, authenticator=tokens) as app,
        serving_in_process(app) as url,
    ):
        yield url


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}"])
def test_a_request_without_the_right_token_gets_401_and_a_challenge(tmp_path: Path, authorization: str | None) -> None:
    async def run() -> None:
        tokens = Tokens({TOKEN: "alice"})
        async with serving(tmp_path, tokens) as url, httpx2.AsyncClient(timeout=30) as http:
            headers = ACCEPT | ({"authorization": authorization} if authorization else {})
            answer = await http.post(f"{url}/local/mcp", json=INIT, headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == CHALLENGE
            body = answer.json()
            assert body["jsonrpc"] == "2.0" and body["id"] is None and body["error"]["code"] == -32600
            assert "bearer token" in body["error"]["message"]
            assert "mcp-session-id" not in answer.headers and tokens.admitted == []
            for path in ("/servers", "/metrics", "/"):
                assert (await http.get(f"{url}{path}", headers=headers)).status_code == 401, path
            metrics = await http.get(f"{url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
            assert 'mcpfleet_errors_total{kind="invalid_request",server="-",status="401"} 4.0' in metrics.text

    anyio.run(run)


def test_the_right_token_reaches_the_server_through_the_sdk_client(tmp_path: Path) -> None:
    async def run() -> None:
        tokens = Tokens({TOKEN: "alice"})
        async with (
            serving(tmp_path, tokens) as url,
            httpx2.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as http,
        ):
            async with Client(streamable_http_client(f"{url}/local/mcp", http_client=http), mode="legacy") as client:
                result = await client.call_tool("echo", {"text": "through the seat"})
                assert result.content[0].text == "through the seat"  # type: ignore[union-attr]
            assert len(tokens.admitted) >= 3 and set(tokens.admitted) == {"alice"}  # every request of the session

    anyio.run(run)


def test_probes_answer_without_a_token(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path, Tokens({})) as url, httpx2.AsyncClient(timeout=30) as http:
            assert (await http.get(f"{url}/healthz")).json() == {"status": "ok"}
            assert (await http.get(f"{url}/readyz")).json() == {"ready": True}
            # A preflight from an allowed origin is answered before authentication: a browser sends no token.
            preflight = await http.options(
                f"{url}/local/mcp",
                headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
            )
            assert preflight.status_code == 204

    anyio.run(run)


def test_a_websocket_handshake_needs_the_token_too(tmp_path: Path) -> None:
    async def run() -> None:
        tokens = Tokens({TOKEN: "alice"})
        async with serving(tmp_path, tokens) as url:
            ws_url = f"{url.replace('http://', 'ws://')}/local/ws"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url, subprotocols=["mcp"], open_timeout=30):
                    pass
            assert refused.value.response.status_code == 401
            assert refused.value.response.headers["www-authenticate"] == CHALLENGE
            bearer = {"authorization": f"Bearer {TOKEN}"}
            async with connect(ws_url, subprotocols=["mcp"], additional_headers=bearer, open_timeout=30) as ws:
                assert ws.subprotocol == "mcp"
            assert tokens.admitted == ["alice"]

    anyio.run(run)
