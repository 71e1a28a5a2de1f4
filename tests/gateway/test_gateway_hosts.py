"""Host and Origin checks on a running gateway, on every route: look-alike names are refused, real loopback
spellings and listed names still get a session and a working tool call.

Refused requests are written on raw sockets, so the Host and Origin arrive exactly as written (no client
normalizes them); accepted ones go through httpx2 and websockets with the Host set explicitly.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from websockets.asyncio.client import connect

from support import ACCEPT, INIT, RunningGateway, free_port, rpc_messages, running

DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
TIMEOUT = 60.0
ACAO = "access-control-allow-origin"

# {port} is the gateway's port. Each of these is refused on a loopback bind with no settings.
BAD_HOSTS = [
    "127.0.0.1.example.net:{port}",
    "127.0.0.1.example.net",
    "127.example.net",
    "127.example.net:{port}",
    "localhost.example.net:{port}",
    "LOCALHOST.EXAMPLE.NET:{port}",
    "evil-localhost:{port}",
    "foo.localhost:{port}",
    "example.net.127.0.0.1",
    "localhost.:{port}",
    "127.0.0.1.:{port}",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:http",
    "localhost:",
    "user@127.0.0.1:{port}",
    "127.0.0.1@evil.example",
    "::1",
    "[::1",
    "[::2]:{port}",
    "[::]:{port}",
    "[::1%25lo]:{port}",
    "2130706433:{port}",
    "0x7f.0.0.1:{port}",
    "127.1:{port}",
    "0177.0.0.1:{port}",
    "0.0.0.0:{port}",
    "10.0.0.1:{port}",
    "evil.example",
    "",
]
BAD_ORIGINS = [
    "null",
    "https://127.0.0.1.example.net",
    "http://127.0.0.1.example.net:3000",
    "http://127.example.net",
    "http://localhost.example.net:3000",
    "http://evil-localhost:3000",
    "http://foo.localhost:3000",
    "http://localhost.:3000",
    "http://2130706433",
    "http://0x7f.0.0.1",
    "http://127.1",
    "http://user@localhost:3000",
    "http://localhost:3000/path",
    "localhost:3000",
    "127.0.0.1",
    "file://",
    "ftp://localhost",
    "http://[::2]:3000",
    "http://0.0.0.0:3000",
    "https://evil.example",
]
GOOD_HOSTS = [
    "127.0.0.1:{port}",
    "127.0.0.1",
    "localhost:{port}",
    "LocalHost:{port}",
    "[::1]:{port}",
    "[0:0:0:0:0:0:0:1]:{port}",
    "[::ffff:127.0.0.1]:{port}",
    "127.0.0.2:{port}",
]
GOOD_ORIGINS = [None, "http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:3000"]

# (method, path, extra headers, body): every route the gateway answers itself or forwards.
ROUTES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/local/mcp", ACCEPT, json.dumps(INIT).encode()),
    ("GET", "/local/mcp", {"accept": "text/event-stream"}, b""),
    ("DELETE", "/local/mcp", {"mcp-session-id": "x"}, b""),
    ("GET", "/local/sse", {"accept": "text/event-stream"}, b""),
    ("POST", "/local/messages/?session_id=00", {"content-type": "application/json"}, json.dumps(INIT).encode()),
    ("POST", "/admin/reload", {}, b""),
    ("GET", "/servers", {}, b""),
    ("GET", "/healthz", {}, b""),
    ("OPTIONS", "/local/mcp", {"access-control-request-method": "POST"}, b""),
]


def port_of(gw: RunningGateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def raw_request(
    port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, headers sent exactly as given; status, headers, body."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if method == "GET" and b"\r\n\r\n" in reply and b" 200 " in reply.split(b"\r\n", 1)[0]:
                break  # an accepted event stream does not end by itself
    head, _, payload = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, payload


def refusals(port: int, host: str, origin: str | None, expected_status: int) -> list[str]:
    """Send every route with this Host and Origin; what did not come back as the expected refusal."""
    problems = []
    for method, path, extra, body in ROUTES:
        headers = [("Host", host), *extra.items()]
        if origin is not None:
            headers.append(("Origin", origin))
        status, fields, payload = raw_request(port, method, path, headers, body)
        where = f"{method} {path} Host={host!r} Origin={origin!r}"
        if status != expected_status:
            problems.append(f"{where}: {status} {payload[:200]!r}")
            continue
        error = json.loads(payload)
        prefix = f"Host {host!r}" if expected_status == 421 else f"Origin {origin!r}"
        if error["jsonrpc"] != "2.0" or error["id"] is not None or error["error"]["code"] != -32600:
            problems.append(f"{where}: not a JSON-RPC error: {error}")
        elif not error["error"]["message"].startswith(prefix):
            problems.append(f"{where}: message {error['error']['message']!r}")
        if ACAO in fields:
            problems.append(f"{where}: CORS header on a refusal: {fields[ACAO]!r}")
    return problems


def websocket_handshake(port: int, host: str, origin: str | None) -> tuple[int, bytes]:
    """A raw WebSocket upgrade to /local/ws with subprotocol mcp; the status and body of the answer."""
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "mcp"),
    ]
    if origin is not None:
        headers.append(("Origin", origin))
    lines = ["GET /local/ws HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
        head, _, rest = reply.partition(b"\r\n\r\n")
        status = int(head.split(b"\r\n", 1)[0].split()[1])
        if status != 101:
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            while len(rest) < length and (chunk := sock.recv(65536)):
                rest += chunk
        return status, rest


def session_and_call(client: httpx2.Client, url: str, host: str, origin: str | None) -> None:
    """initialize, initialized, tools/call echo, DELETE, all with this Host and Origin; CORS only with an Origin."""
    base = {**ACCEPT, "host": host} | ({"origin": origin} if origin else {})
    answer = client.post(url, json=INIT, headers=base)
    assert answer.status_code == 200, (host, origin, answer.text)
    assert answer.headers.get(ACAO) == origin, (host, origin)
    session = answer.headers["mcp-session-id"]
    base["mcp-session-id"] = session
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert client.post(url, json=note, headers=base).status_code == 202
    text = f"via {host} from {origin}"
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}
    result = rpc_messages(client.post(url, json=call, headers=base))[-1]["result"]
    assert result["content"][0]["text"] == text, (host, origin, result)
    assert client.delete(url, headers=base).status_code == 200


@pytest.fixture
def loopback_gateway(gateway: Callable[[str], RunningGateway]) -> RunningGateway:
    return gateway(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")


def test_look_alike_hosts_are_refused_on_every_route(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    problems = []
    for pattern in BAD_HOSTS:
        for origin in (None, "http://localhost:3000"):  # a good Origin does not rescue a bad Host, nor add CORS
            problems += refusals(port, pattern.format(port=port), origin, 421)
    assert not problems, "\n".join(problems)


def test_foreign_origins_are_refused_on_every_route(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    problems = []
    for origin in BAD_ORIGINS:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            problems += refusals(port, host, origin, 403)
    assert not problems, "\n".join(problems)


def test_loopback_spellings_get_a_session_and_a_tool_call(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    with httpx2.Client(timeout=TIMEOUT) as client:
        for index, pattern in enumerate(GOOD_HOSTS):
            host = pattern.format(port=port)
            origin = GOOD_ORIGINS[index % len(GOOD_ORIGINS)]
            session_and_call(client, loopback_gateway.mcp("local"), host, origin)
            for good_origin in GOOD_ORIGINS[1:]:
                headers = {"host": host, "origin": good_origin}
                servers = client.get(f"{loopback_gateway.url}/servers", headers=headers)
                assert servers.status_code == 200 and servers.headers[ACAO] == good_origin, (host, good_origin)
                preflight = client.options(
                    loopback_gateway.mcp("local"), headers={**headers, "access-control-request-method": "POST"}
                )
                assert preflight.status_code == 204 and preflight.headers[ACAO] == good_origin, (host, good_origin)
            reload = client.post(f"{loopback_gateway.url}/admin/reload", headers={"host": host})
            assert reload.status_code == 200 and reload.json()["reloaded"] is True


def test_legacy_sse_with_a_loopback_name(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    headers = {"host": f"localhost:{port}", "origin": "http://localhost:3000"}
    with (
        httpx2.Client(timeout=TIMEOUT) as client,
        client.stream("GET", f"{loopback_gateway.url}/local/sse", headers=headers) as stream,
    ):
        assert stream.status_code == 200 and stream.headers[ACAO] == "http://localhost:3000"
        events = sse_data(stream.iter_lines())
        endpoint = next(events)
        assert endpoint.startswith("/local/messages/?session_id="), endpoint
        posted = client.post(f"{loopback_gateway.url}{endpoint}", json=INIT, headers=headers)
        assert posted.status_code == 202 and posted.headers[ACAO] == "http://localhost:3000"
        answer = json.loads(next(events))
        assert answer["id"] == 1 and "serverInfo" in answer["result"]


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: ") and line[6:].strip():
            yield line[6:]


def test_websocket_upgrades_check_host_and_origin(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    problems = []
    for pattern in BAD_HOSTS:
        status, _ = websocket_handshake(port, pattern.format(port=port), None)
        if status == 101:
            problems.append(f"Host {pattern!r} upgraded")
    for origin in BAD_ORIGINS:
        status, _ = websocket_handshake(port, f"127.0.0.1:{port}", origin)
        if status == 101:
            problems.append(f"Origin {origin!r} upgraded")
    assert not problems, "\n".join(problems)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        for origin in GOOD_ORIGINS:
            assert websocket_handshake(port, host, origin)[0] == 101, (host, origin)

    async def echo_over_websocket(authority: str, origin: str) -> str:
        async with connect(
            f"ws://{authority}/local/ws",
            host="127.0.0.1",  # the socket goes to the gateway; the URL's authority becomes the Host header
            port=port,
            origin=origin,
            subprotocols=["mcp"],
            open_timeout=TIMEOUT,
        ) as ws:
            await ws.send(json.dumps(INIT))
            assert json.loads(await ws.recv())["id"] == 1
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            call = {"name": "echo", "arguments": {"text": authority}}
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}))
            text: str = json.loads(await ws.recv())["result"]["content"][0]["text"]
            return text

    for authority, origin in ((f"localhost:{port}", "http://localhost:3000"), (f"[::1]:{port}", "http://[::1]:5173")):
        assert anyio.run(echo_over_websocket, authority, origin) == authority


def test_refused_websocket_upgrades_get_the_http_status_and_error_body(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    status, body = websocket_handshake(port, "127.0.0.1.example.net", None)
    assert status == 421
    assert json.loads(body)["error"]["message"].startswith("Host '127.0.0.1.example.net'")
    status, body = websocket_handshake(port, f"127.0.0.1:{port}", "https://127.0.0.1.example.net")
    assert status == 403 and json.loads(body)["error"]["code"] == -32600


def test_two_hosts_or_two_origins_are_refused(loopback_gateway: RunningGateway) -> None:
    port = port_of(loopback_gateway)
    two_hosts = [("Host", f"127.0.0.1:{port}"), ("Host", "evil.example")]
    assert raw_request(port, "GET", "/servers", two_hosts)[0] == 421
    two_origins = [
        ("Host", f"127.0.0.1:{port}"),
        ("Origin", "http://localhost:3000"),
        ("Origin", "https://evil.example"),
    ]
    assert raw_request(port, "GET", "/servers", two_origins)[0] == 403


def test_listed_hosts_and_origins(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(
        f"servers:\n  local: {{command: {DEMO_STDIO}}}\n"
        "gateway:\n"
        "  allowed_hosts: ['MCP.Example.com', 'api.example.com:8443']\n"
        "  allowed_origins: ['https://app.example.com']\n"
    )
    port = port_of(gw)
    with httpx2.Client(timeout=TIMEOUT) as client:
        session_and_call(client, gw.mcp("local"), f"mcp.example.com:{port}", "https://app.example.com")
        session_and_call(client, gw.mcp("local"), "API.example.com:8443", "http://localhost:3000")
        for host in ("MCP.EXAMPLE.COM", f"mcp.example.com:{port}", "api.example.com:8443", f"127.0.0.1:{port}"):
            assert client.get(f"{gw.url}/servers", headers={"host": host}).status_code == 200, host
        preflight = client.options(
            gw.mcp("local"),
            headers={"origin": "https://app.example.com:443", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 204 and preflight.headers[ACAO] == "https://app.example.com:443"
    problems = []
    for host in (
        f"api.example.com:{port}",
        "api.example.com",
        f"mcp.example.com.evil.net:{port}",
        "evil.mcp.example.com",
        "mcp.example.com.",
        f"mcp-example.com:{port}",
    ):
        problems += refusals(port, host, None, 421)
    for origin in (
        "https://app.example.com.evil.net",
        "https://evil.app.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com/path",
        "null",
    ):
        problems += refusals(port, f"mcp.example.com:{port}", origin, 403)
    assert not problems, "\n".join(problems)


# A gateway with the policy of a non-loopback bind (0.0.0.0) that still listens on 127.0.0.1 only.
PUBLIC_BIND = """
import sys
import anyio
import uvicorn
from mcpfleet.gateway.app import Gateway
from mcpfleet.registry import load_registry

async def main() -> None:
    async with Gateway(load_registry(sys.argv[1]), registry_path=sys.argv[1], host="0.0.0.0") as app:
        config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[2]), lifespan="off", log_level="warning")
        await uvicorn.Server(config).serve()

anyio.run(main)
"""


@pytest.fixture
def public_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    registry = tmp_path / "public.yaml"
    # Off loopback a gateway asks for credentials unless told not to (docs/security.md): the Host rules are the
    # same either way, so this one serves anonymous callers.
    registry.write_text(f"gateway: {{auth: {{anonymous: true}}}}\nservers:\n  local: {{command: {DEMO_STDIO}}}\n")
    port = free_port()
    with running([sys.executable, "-c", PUBLIC_BIND, str(registry), str(port)], port) as url:
        yield RunningGateway(url, registry)


def test_a_public_bind_takes_ip_literals_and_listed_names_only(public_gateway: RunningGateway) -> None:
    gw = public_gateway
    port = port_of(gw)
    with httpx2.Client(timeout=TIMEOUT) as client:
        session_and_call(client, gw.mcp("local"), f"10.1.2.3:{port}", None)
        for host in (f"[2001:db8::1]:{port}", f"127.0.0.1:{port}", f"localhost:{port}", "192.168.1.10"):
            assert client.get(f"{gw.url}/servers", headers={"host": host}).status_code == 200, host
    problems = []
    for host in (f"pod-10-1-2-3.anything:{port}", f"10.1.2.3.nip.io:{port}", "127.0.0.1.example.net", "10.1"):
        problems += refusals(port, host, None, 421)
    # Loopback origins are a loopback bind's convenience: here every browser origin must be listed.
    problems += refusals(port, f"10.1.2.3:{port}", "http://localhost:3000", 403)
    assert not problems, "\n".join(problems)
    # Listing a name lets it in, from the next request after a reload.
    gw.registry.write_text(
        gw.registry.read_text().replace("gateway: {", "gateway: {allowed_hosts: ['pod-10-1-2-3.anything'], ")
    )
    with httpx2.Client(timeout=TIMEOUT) as client:
        assert client.post(f"{gw.url}/admin/reload").json()["reloaded"] is True
        session_and_call(client, gw.mcp("local"), f"pod-10-1-2-3.anything:{port}", None)
    assert refusals(port, f"10.1.2.3.nip.io:{port}", None, 421) == []
