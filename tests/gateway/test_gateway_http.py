"""The gateway's HTTP contract, request by request: sessions, errors, security checks."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from support import ACCEPT, INIT, RunningGateway, free_port, rpc_messages

DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def open_session(client: httpx2.Client, url: str) -> str:
    response = client.post(url, json=INIT, headers=ACCEPT)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert client.post(url, json=note, headers={**ACCEPT, "mcp-session-id": session}).status_code == 202
    return session


def call(
    client: httpx2.Client, url: str, session: str, name: str, arguments: dict[str, Any], rid: Any = 2, **extra: str
) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    return client.post(url, json=body, headers={**ACCEPT, "mcp-session-id": session, **extra}, timeout=30)


@pytest.fixture
def stdio_gateway(gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]) -> RunningGateway:
    web = demo_http("web")
    return gateway(
        f"servers:\n  local: {{command: {DEMO_STDIO}}}\n  web: {{endpoint: '{web}'}}\n"
        f"  down: {{endpoint: 'http://127.0.0.1:{free_port()}'}}\n"
        "gateway: {max_message_bytes: 4096, session_idle_timeout: 2}\n"
    )


def test_session_ids_are_the_gateways_and_ids_keep_their_json_type(stdio_gateway: RunningGateway) -> None:
    with httpx2.Client() as client:
        for server_id in ("local", "web"):
            url = stdio_gateway.mcp(server_id)
            session = open_session(client, url)
            assert len(session) >= 40  # 256 random bits, url-safe
            for rid in ("req-7", 7):
                answer = rpc_messages(call(client, url, session, "echo", {"text": "x"}, rid=rid))[-1]
                assert answer["id"] == rid and type(answer["id"]) is type(rid)
            assert client.delete(url, headers={"mcp-session-id": session}).status_code == 200
            gone = call(client, url, session, "echo", {"text": "x"})
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == -32600


def test_unknown_and_forged_sessions_get_404(stdio_gateway: RunningGateway) -> None:
    with httpx2.Client() as client:
        for server_id in ("local", "web"):
            response = call(client, stdio_gateway.mcp(server_id), "not-a-session-we-issued", "echo", {"text": "x"})
            assert response.status_code == 404
            assert "initialize again" in response.json()["error"]["message"]
        # A session id is bound to its server: it does not open another one.
        session = open_session(client, stdio_gateway.mcp("local"))
        assert call(client, stdio_gateway.mcp("web"), session, "echo", {"text": "x"}).status_code == 404


def test_idle_sessions_expire(stdio_gateway: RunningGateway) -> None:
    with httpx2.Client() as client:
        session = open_session(client, stdio_gateway.mcp("local"))
        time.sleep(2 * 2 + 5.5)  # idle timeout 2 s, reaper period at most 5 s
        assert call(client, stdio_gateway.mcp("local"), session, "echo", {"text": "x"}).status_code == 404
        status = client.get(f"{stdio_gateway.url}/servers").json()
        assert next(s for s in status["servers"] if s["id"] == "local")["processes"]["live"] == 0


def test_crashed_process_fails_its_pending_call_at_once(stdio_gateway: RunningGateway) -> None:
    with httpx2.Client() as client:
        url = stdio_gateway.mcp("local")
        session = open_session(client, url)
        started = time.monotonic()
        answer = rpc_messages(call(client, url, session, "crash", {"code": 9}, rid="c1"))[-1]
        assert time.monotonic() - started < 10
        assert answer["id"] == "c1" and answer["error"]["code"] == -32014
        assert "exit code 9" in answer["error"]["message"]
        assert call(client, url, session, "echo", {"text": "x"}).status_code == 404


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code", "text"),
    [
        ("/nope/mcp", {}, 404, -32010, "unknown server 'nope'; servers here: down, local, web"),
        ("/down/mcp", {"json": INIT}, 502, -32012, "server 'down' is unreachable"),
        ("/local/mcp", {"content": b"{not json"}, 400, -32700, "not valid JSON"),
        (
            "/local/mcp",
            {"content": b"x" * 5000},
            413,
            -32600,
            "exceeds 4096 bytes (setting: gateway.max_message_bytes)",
        ),
        ("/local/mcp", {"json": INIT, "headers": {"accept": "text/plain"}}, 406, -32600, "must accept"),
        (
            "/local/mcp",
            {"json": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}},
            400,
            -32600,
            "Mcp-Session-Id header is required",
        ),
        ("/local/other", {}, 404, -32601, "serves only /local/mcp, /local/sse and /local/ws"),
    ],
)
def test_errors_are_json_rpc_bodies_with_the_right_status(
    stdio_gateway: RunningGateway, path: str, kwargs: dict[str, Any], status: int, code: int, text: str
) -> None:
    headers = {**ACCEPT, **kwargs.pop("headers", {})}
    with httpx2.Client() as client:
        response = client.post(stdio_gateway.url + path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and text in error["message"]


@pytest.mark.parametrize(
    ("raw_path", "text"),
    [
        ("/local/../web/mcp", "'.' and '..' segments"),
        ("/web/%2e%2e/local/mcp", "'.' and '..' segments"),
        ("/web/%2E./x", "'.' and '..' segments"),
        ("/local%2Fmcp", "encoded separators"),
        ("/web/a%5c..%5cb", "encoded separators"),
        ("/web//etc/passwd", "empty segments"),
    ],
)
def test_paths_cannot_escape_their_server(stdio_gateway: RunningGateway, raw_path: str, text: str) -> None:
    # Sent over a raw socket: HTTP clients normalize dot segments before they leave.
    port = int(stdio_gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert text in json.loads(body)["error"]["message"]


def test_absolute_form_targets_never_choose_the_backend(stdio_gateway: RunningGateway) -> None:
    # `GET http://evil.example/web/mcp` names another host; the gateway routes by path only, so the request
    # reaches the `web` server's MCP endpoint (which refuses it: no Accept header), never evil.example.
    port = int(stdio_gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET http://evil.example/web/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, _ = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 406 Not Acceptable"), head


def test_dns_rebinding_checks(stdio_gateway: RunningGateway) -> None:
    with httpx2.Client() as client:
        foreign_host = client.post(stdio_gateway.mcp("local"), json=INIT, headers={**ACCEPT, "host": "evil.example"})
        assert foreign_host.status_code == 421
        foreign_origin = client.post(
            stdio_gateway.mcp("local"), json=INIT, headers={**ACCEPT, "origin": "https://evil.example"}
        )
        assert foreign_origin.status_code == 403 and "gateway.allowed_origins" in foreign_origin.text
        local_origin = client.post(
            stdio_gateway.mcp("local"), json=INIT, headers={**ACCEPT, "origin": "http://localhost:3000"}
        )
        assert local_origin.status_code == 200


def test_other_paths_of_http_servers_are_forwarded(stdio_gateway: RunningGateway) -> None:
    # The demo backend's own 404 page (plain text), not a gateway error: the path reached the backend.
    with httpx2.Client() as client:
        response = client.get(f"{stdio_gateway.url}/web/not/a/gateway/path?x=1")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Not Found"


def test_status_endpoints(stdio_gateway: RunningGateway) -> None:
    with httpx2.Client() as client:
        assert client.get(f"{stdio_gateway.url}/healthz").json() == {"status": "ok"}
        assert client.get(f"{stdio_gateway.url}/readyz").json() == {"ready": True}
        status = client.get(f"{stdio_gateway.url}/servers").json()
        assert [s["id"] for s in status["servers"]] == ["local", "web", "down"]
        assert status["last_reload_error"] is None


def test_cors_for_allowed_origins_only(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(
        f"servers:\n  local: {{command: {DEMO_STDIO}}}\ngateway: {{allowed_origins: ['https://app.example']}}\n"
    )
    with httpx2.Client() as client:
        preflight = client.options(
            gw.mcp("local"),
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, mcp-session-id, mcp-param-region, x-evil",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight.headers["access-control-allow-headers"] == "content-type, mcp-session-id, mcp-param-region"
        answer = client.post(gw.mcp("local"), json=INIT, headers={**ACCEPT, "origin": "https://app.example"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "mcp-session-id" in answer.headers["access-control-expose-headers"]
        refused = client.post(gw.mcp("local"), json=INIT, headers={**ACCEPT, "origin": "https://other.example"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        # Origins come from the registry in force: a reload changes them.
        gw.registry.write_text(gw.registry.read_text().replace("https://app.example", "https://other.example"))
        assert client.post(f"{gw.url}/admin/reload").status_code == 200
        assert (
            client.post(gw.mcp("local"), json=INIT, headers={**ACCEPT, "origin": "https://other.example"}).status_code
            == 200
        )
        assert (
            client.post(gw.mcp("local"), json=INIT, headers={**ACCEPT, "origin": "https://app.example"}).status_code
            == 403
        )


def test_missing_command_is_a_502_naming_it(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway("servers:\n  ghost: {command: [no-such-mcp-server-here]}\n")
    response = httpx2.post(gw.mcp("ghost"), json=INIT, headers=ACCEPT)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == -32013 and "no-such-mcp-server-here" in error["message"]
    again = httpx2.post(gw.mcp("ghost"), json=INIT, headers=ACCEPT)  # the slot was given back exactly once
    assert again.status_code == 502


def test_the_shared_2026_process_yields_its_slot_to_sessions(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  one: {{command: {DEMO_STDIO}, pool: {{max: 1, acquire_timeout: 5}}}}\n")
    modern = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": "x"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    with httpx2.Client() as client:
        answer = rpc_messages(client.post(gw.mcp("one"), json=modern, headers=headers))[-1]
        assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == "x"
        session = open_session(client, gw.mcp("one"))  # the idle shared process is reclaimed for it
        assert (
            rpc_messages(call(client, gw.mcp("one"), session, "echo", {"text": "y"}))[-1]["result"]["isError"] is False
        )


def test_a_crash_loop_makes_new_sessions_fail_fast(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway("servers:\n  broken: {command: [sh, -c, 'echo cannot read config >&2; exit 3']}\n")
    with httpx2.Client(timeout=30) as client:
        first = [client.post(gw.mcp("broken"), json=INIT, headers=ACCEPT) for _ in range(3)]
        assert [r.status_code for r in first] == [502, 502, 502]
        assert "exit code 3" in first[0].json()["error"]["message"]
        started = time.monotonic()
        fast = client.post(gw.mcp("broken"), json=INIT, headers=ACCEPT)
        assert time.monotonic() - started < 1.0  # no process is started for it
        assert fast.status_code == 503 and int(fast.headers["retry-after"]) >= 1
        error = fast.json()["error"]
        assert error["code"] == -32017 and "3 times in a row" in error["message"]
        assert "cannot read config" in error["message"]
        shown = next(s for s in client.get(f"{gw.url}/servers").json()["servers"] if s["id"] == "broken")
        assert shown["health"] == "crash_loop" and shown["crash_loop"]["quick_exits"] == 3
