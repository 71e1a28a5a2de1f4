"""`gateway.trusted_proxies` through a real gateway: the client's address and scheme a trusted proxy names
reach the server (`X-Forwarded-For`, `-Proto`), the URLs the gateway advertises, the per-client limits and
`consistent_hash`; from a peer that is not trusted they change nothing; `/admin/reload` never answers a
proxied request; malformed headers never get a 5xx. The test client plays the proxy: its TCP peer is
127.0.0.1, which the registry trusts or not.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcpfleet.client.websocket import websocket_client

from support import ACCEPT, RunningGateway, free_port, running
from test_gateway_headers import SERVER

TRUSTED = "gateway:\n  trusted_proxies: ['127.0.0.1', '::1']\n"
NOT_TRUSTED = "gateway:\n  trusted_proxies: ['10.0.0.0/8']\n"


@pytest.fixture
def echo(tmp_path: Any) -> Iterator[str]:
    """The SDK server of test_gateway_headers.py: its tool `headers` answers with its request's headers."""
    script = tmp_path / "echo_headers.py"
    script.write_text(SERVER)
    port = free_port()

    with running([sys.executable, str(script), str(port)], port) as url:
        yield url


def headers_seen(gw: RunningGateway, transport: str, sent: dict[str, str]) -> dict[str, list[str]]:
    async def run() -> Any:
        if transport == "websocket":
            target = websocket_client(f"{gw.url.replace('http://', 'ws://')}/web/ws", headers=list(sent.items()))
        else:
            target = streamable_http_client(gw.mcp("web"), http_client=httpx2.AsyncClient(headers=sent))
        async with Client(target, mode="legacy") as client:
            return (await client.call_tool("headers", {})).structured_content

    seen: dict[str, list[str]] = {}
    for name, value in anyio.run(run)["result"]:
        seen.setdefault(name, []).append(value)
    return seen


@pytest.mark.parametrize("transport", ["streamable-http", "websocket"])
@pytest.mark.parametrize(
    ("sent", "client"),
    [
        ({"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}, "203.0.113.7"),
        ({"x-forwarded-for": "198.51.100.1, 203.0.113.7, 127.0.0.1", "x-forwarded-proto": "https"}, "203.0.113.7"),
        ({"forwarded": 'for="[2001:db8::7]:4711";proto=https', "x-forwarded-for": "192.0.2.1"}, "2001:db8::7"),
    ],
)
def test_a_trusted_proxys_client_reaches_the_server(
    gateway: Callable[[str], RunningGateway], echo: str, transport: str, sent: dict[str, str], client: str
) -> None:
    gw = gateway(f"{TRUSTED}servers:\n  web: {{endpoint: '{echo}'}}\n")
    seen = headers_seen(gw, transport, sent)
    assert seen["x-forwarded-for"] == [client]
    assert seen["x-forwarded-proto"] == ["https"]
    assert "forwarded" not in seen


def test_the_urls_the_gateway_advertises_follow_the_proxys_scheme(
    gateway: Callable[[str], RunningGateway], echo: str
) -> None:
    registry = f"servers:\n  web: {{endpoint: '{echo}'}}\n"
    behind = gateway(TRUSTED + registry)
    index = httpx2.get(behind.url + "/", headers={"x-forwarded-proto": "https"}).json()
    assert index["servers"][0]["mcp"].startswith("https://") and index["servers"][0]["ws"].startswith("wss://")
    direct = gateway(NOT_TRUSTED + registry)
    index = httpx2.get(direct.url + "/", headers={"x-forwarded-proto": "https"}).json()
    assert index["servers"][0]["mcp"].startswith("http://")


def test_headers_from_a_peer_that_is_not_trusted_change_nothing(
    gateway: Callable[[str], RunningGateway], echo: str
) -> None:
    gw = gateway(f"{NOT_TRUSTED}servers:\n  web: {{endpoint: '{echo}'}}\n")
    seen = headers_seen(gw, "streamable-http", {"x-forwarded-for": "203.0.113.7", "forwarded": "for=192.0.2.9"})
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]


def test_anonymous_clients_behind_a_proxy_are_limited_each_by_its_address(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    gw = gateway(
        f"{TRUSTED}  limits: {{rate_per_principal: {{rps: 0.2, burst: 2}}}}\n"
        f"servers:\n  web: {{endpoint: '{demo_http('a')}'}}\n"
    )
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with httpx2.Client(timeout=30) as http:

        def post(address: str) -> int:
            return http.post(gw.mcp("web"), json=body, headers={**ACCEPT, "x-forwarded-for": address}).status_code

        first = [post("203.0.113.1") for _ in range(4)]
        assert 429 in first, first
        assert all(post("203.0.113.2") != 429 for _ in range(2))  # another client behind the same proxy


def test_consistent_hash_follows_the_forwarded_address(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    urls = ", ".join(f"'{demo_http(name)}'" for name in "ab")
    gw = gateway(f"{TRUSTED}servers:\n  web: {{endpoints: [{urls}], balancer: {{strategy: consistent_hash}}}}\n")

    async def replica_for(address: str) -> str:
        async with (
            httpx2.AsyncClient(headers={"x-forwarded-for": address}) as http,
            Client(streamable_http_client(gw.mcp("web"), http_client=http), mode="legacy") as client,
        ):
            result: Any = (await client.call_tool("whoami", {})).structured_content
            return str(result["replica"])

    async def main() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for _ in range(2):
            for n in range(12):
                address = f"198.51.100.{n + 1}"
                seen.setdefault(address, set()).add(await replica_for(address))
        return seen

    seen = anyio.run(main)
    assert all(len(replicas) == 1 for replicas in seen.values()), seen  # one client, one replica
    assert len(set().union(*seen.values())) == 2, seen  # and the clients spread (all on one: 2^-11)


def test_admin_reload_answers_the_loopback_peer_never_a_proxied_request(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(f"{TRUSTED}servers: {{}}\n")
    for headers in [{"x-forwarded-for": "127.0.0.1"}, {"forwarded": "for=127.0.0.1"}]:
        refused = httpx2.post(f"{gw.url}/admin/reload", headers=headers)
        assert refused.status_code == 403 and "loopback" in refused.json()["error"]["message"]
    assert httpx2.post(f"{gw.url}/admin/reload").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        [("forwarded", 'for="'), ("x-forwarded-proto", "https, , gopher")],
        [("forwarded", "for=[::1;proto=https"), ("x-forwarded-for", "1.2.3.4")],
        [("x-forwarded-for", ",,,, ,"), ("x-forwarded-for", "not an address")],
        [("x-forwarded-for", "[::1]:99999999999999999999999"), ("forwarded", ";;;=;")],
        [("forwarded", "for=" + "9" * 5000)],
    ],
)
def test_malformed_forwarding_headers_never_get_a_5xx(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str], headers: list[tuple[str, str]]
) -> None:
    gw = gateway(f"{TRUSTED}servers:\n  web: {{endpoint: '{demo_http('a')}'}}\n")
    with httpx2.Client(timeout=30) as http:
        for path in ["/", "/web/mcp", "/servers"]:
            response = http.post(gw.url + path, json={}, headers=[*ACCEPT.items(), *headers])
            assert response.status_code < 500, (path, response.text)
