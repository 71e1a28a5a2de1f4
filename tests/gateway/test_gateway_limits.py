"""`gateway.limits` through a real gateway: request rates per caller and per server (429 + Retry-After), the
session cap per caller, the maximum stream duration on GET streams and WebSockets, and a reload's new limits.

Rates are small (a burst of 3, then 0.5 a second) so that counts hold on a busy machine: a test sends its
requests well within the seconds a refill would take, and asserts counts with room to spare, never speed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mcpfleet.client.websocket import websocket_client

from support import ACCEPT, INIT, RunningGateway, until

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
KEY_A = "alice-key-0123456789abcdef"
KEY_B = "bob-key-0123456789abcdef"
KEYS = f"auth: {{api_keys: [{{name: alice, key: '{KEY_A}'}}, {{name: bob, key: '{KEY_B}'}}]}}"
LIST = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}


def bearer(key: str) -> dict[str, str]:
    return {**ACCEPT, "authorization": f"Bearer {key}"}


def statuses(url: str, headers: dict[str, str], count: int) -> list[httpx2.Response]:
    """`count` requests one after another; each answer (a 429 or whatever the server says)."""
    with httpx2.Client(timeout=30) as client:
        return [client.post(url, json=LIST, headers=headers) for _ in range(count)]


def assert_limited(response: httpx2.Response, setting: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == -32009 and setting in error["message"], error
    assert response.json()["id"] is None  # refused before its body was read


def test_rate_per_principal_refuses_one_caller_and_not_another(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    gw = gateway(
        f"gateway:\n  {KEYS}\n  limits: {{rate_per_principal: {{rps: 0.5, burst: 3}}}}\n"
        f"servers:\n  web: {{endpoint: '{demo_http('a')}'}}\n"
    )
    started = time.monotonic()
    answers = statuses(gw.mcp("web"), bearer(KEY_A), 8)
    elapsed = time.monotonic() - started
    refused = [r for r in answers if r.status_code == 429]
    assert len(answers) - len(refused) <= 3 + 0.5 * elapsed + 1, [r.status_code for r in answers]
    assert refused, "a burst of 8 over 3 + 0.5/s got no 429"
    for response in refused:
        assert_limited(response, "gateway.limits.rate_per_principal")
    # Another key has its own bucket: its burst passes at once.
    assert all(r.status_code != 429 for r in statuses(gw.mcp("web"), bearer(KEY_B), 3))
    # After the wait the answer named, the first caller has a token again.
    time.sleep(int(refused[-1].headers["retry-after"]))
    assert statuses(gw.mcp("web"), bearer(KEY_A), 1)[0].status_code != 429


def test_rate_per_server_counts_every_caller_on_that_server_only(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    url = demo_http("a")
    gw = gateway(
        f"gateway:\n  {KEYS}\n  limits: {{rate_per_server: {{rps: 0.5, burst: 4}}}}\n"
        f"servers:\n  one: {{endpoint: '{url}'}}\n  two: {{endpoint: '{url}'}}\n"
    )
    started = time.monotonic()
    answers = [statuses(gw.mcp("one"), bearer(key), 1)[0] for key in [KEY_A, KEY_B] * 5]
    elapsed = time.monotonic() - started
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert len(answers) - len(refused) <= 4 + 0.5 * elapsed + 1, [r.status_code for r in answers]
    for response in refused:
        assert_limited(response, "gateway.limits.rate_per_server")
    assert all(r.status_code != 429 for r in statuses(gw.mcp("two"), bearer(KEY_A), 4))  # another server


def initialize(client: httpx2.Client, url: str, key: str) -> httpx2.Response:
    return client.post(url, json=INIT, headers=bearer(key))


def test_the_session_cap_refuses_the_next_initialize_until_one_ends(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    """Sessions the gateway holds (a stdio process each) count; an http server's own sessions do not."""
    passthrough = f"{{endpoint: '{demo_http('a')}'}}"
    registry = f"gateway:\n  {KEYS}\n  limits: {{sessions_per_principal: 2}}\nservers:\n  s: {{command: {DEMO}}}\n"
    gw = gateway(registry + f"  web: {passthrough}\n")
    url = gw.mcp("s")
    with httpx2.Client(timeout=30) as client:
        ids = [initialize(client, url, KEY_A).headers["mcp-session-id"] for _ in range(2)]
        refused = initialize(client, url, KEY_A)
        assert refused.status_code == 429, refused.text
        assert "gateway.limits.sessions_per_principal" in refused.json()["error"]["message"]
        assert refused.json()["id"] == 1
        assert "mcp-session-id" in initialize(client, url, KEY_B).headers  # bob holds none
        headers = {**bearer(KEY_A), "mcp-session-id": ids[0], "mcp-protocol-version": "2025-11-25"}
        assert client.delete(url, headers=headers).status_code < 300
        again = initialize(client, url, KEY_A)
        assert again.status_code == 200 and "mcp-session-id" in again.headers
        assert initialize(client, url, KEY_A).status_code == 429
        # The upstream's sessions: the gateway holds nothing for them and cannot see them end.
        opened = [initialize(client, gw.mcp("web"), KEY_A) for _ in range(4)]
        assert all(r.status_code == 200 and "mcp-session-id" in r.headers for r in opened), [r.text for r in opened]


def test_the_session_cap_counts_websocket_connections(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"gateway:\n  limits: {{sessions_per_principal: 1}}\nservers:\n  s: {{command: {DEMO}}}\n")
    ws_url = f"{gw.url.replace('http://', 'ws://')}/s/ws"

    async def main() -> None:
        async with Client(websocket_client(ws_url), mode="legacy") as client:
            assert (await client.call_tool("echo", {"text": "hi"})).content
            with httpx2.Client(timeout=30) as http:
                refused = http.post(gw.mcp("s"), json=INIT, headers=ACCEPT)  # the same caller: 127.0.0.1
                assert refused.status_code == 429, refused.text
        # The connection ended: its slot is back.
        await wait_accepted(gw.mcp("s"))

    anyio.run(main)


async def wait_accepted(url: str) -> None:
    """The gateway ends the closed connection's session soon after the close: poll until it did."""
    async with httpx2.AsyncClient(timeout=30) as http:

        async def accepted() -> bool:
            return (await http.post(url, json=INIT, headers=ACCEPT)).status_code == 200

        await until(accepted)


@pytest.mark.parametrize("kind", ["http", "stdio"])
def test_a_get_stream_ends_after_max_stream_duration_and_the_client_goes_on(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str], kind: str
) -> None:
    entry = f"{{endpoint: '{demo_http('a')}'}}" if kind == "http" else f"{{command: {DEMO}}}"
    gw = gateway(f"gateway:\n  limits: {{max_stream_duration: 2}}\nservers:\n  s: {entry}\n")
    url = gw.mcp("s")

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=60) as http:
            response = await http.post(url, json=INIT, headers=ACCEPT)
            headers = {
                **ACCEPT,
                "mcp-session-id": response.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            with anyio.fail_after(30):  # the gateway ends it after 2 s; a hang would fail here
                async with http.stream("GET", url, headers=headers) as stream:
                    assert stream.status_code == 200
                    async for _ in stream.aiter_bytes():
                        pass  # ends cleanly: no exception from a cut connection
        # The SDK client reconnects its GET stream each time it ends, and its calls go on.
        async with Client(streamable_http_client(url), mode="legacy") as client:
            for n in range(3):
                result: Any = await client.call_tool("echo", {"text": f"call {n}"})
                assert result.content[0].text.endswith(f"call {n}")
                await anyio.sleep(2.5)  # past the stream's duration: the GET stream ended and was opened again

    anyio.run(main)


async def drain(ws: Any) -> None:
    while True:
        await ws.recv()


def test_a_websocket_is_closed_after_max_stream_duration(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"gateway:\n  limits: {{max_stream_duration: 2}}\nservers:\n  s: {{command: {DEMO}}}\n")
    ws_url = f"{gw.url.replace('http://', 'ws://')}/s/ws"

    async def main() -> None:
        with anyio.fail_after(30):
            async with connect(ws_url, subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps(INIT))
                with pytest.raises(ConnectionClosed):
                    await drain(ws)
                assert ws.close_code == 1001
                assert ws.close_reason and "gateway.limits.max_stream_duration" in ws.close_reason
        # A new connection is a new session, and works.
        async with Client(websocket_client(ws_url), mode="legacy") as client:
            assert (await client.call_tool("echo", {"text": "again"})).content

    anyio.run(main)


def test_a_reload_applies_new_limits_from_the_next_request(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    server = f"servers:\n  web: {{endpoint: '{demo_http('a')}'}}\n"
    gw = gateway(server)
    assert all(r.status_code != 429 for r in statuses(gw.mcp("web"), ACCEPT, 6))
    gw.registry.write_text(f"gateway:\n  limits: {{rate_per_principal: {{rps: 0.2, burst: 1}}}}\n{server}")
    assert httpx2.post(f"{gw.url}/admin/reload").status_code == 200
    answers = statuses(gw.mcp("web"), ACCEPT, 3)
    assert answers[0].status_code != 429 and answers[-1].status_code == 429
    assert_limited(answers[-1], "gateway.limits.rate_per_principal")


def test_websocket_requests_over_the_rate_get_errors_on_the_open_socket(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(
        f"gateway:\n  limits: {{rate_per_principal: {{rps: 0.2, burst: 4}}}}\nservers:\n  s: {{command: {DEMO}}}\n"
    )
    ws_url = f"{gw.url.replace('http://', 'ws://')}/s/ws"

    async def main() -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            async with connect(ws_url, subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
                # The handshake took one token; initialize and the notification two more; then calls.
                await ws.send(json.dumps(INIT))
                answers.append(json.loads(await ws.recv()))
                await ws.send('{"jsonrpc": "2.0", "method": "notifications/initialized"}')
                for n in range(10, 14):
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/list"}))
                    answers.append(json.loads(await ws.recv()))
                assert ws.close_code is None  # still open
        return answers

    answers = anyio.run(main)
    assert "result" in answers[0]
    assert [a["id"] for a in answers] == [1, 10, 11, 12, 13]  # each request answered once, in order
    limited = [a for a in answers if "error" in a]
    assert limited and all(a["error"]["code"] == -32009 for a in limited), answers
    assert "gateway.limits.rate_per_principal" in limited[0]["error"]["message"]
    assert limited[0]["error"]["data"]["retryAfter"] >= 1
