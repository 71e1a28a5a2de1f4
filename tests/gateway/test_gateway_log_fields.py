"""Each log line names the request that caused it, and no other (docs/operations.md, "Logs").

A gateway in JSON format at `level: debug`, two API keys, and a stdio server reached three ways: in
sessions (2025-11-25), in pool mode `shared`, at 2026-07-28 with no session, and over legacy HTTP+SSE (where
a call's audit line is the `POST /messages/` request's, not the stream's). Each client is the official
SDK client and sends its own `X-Request-Id` on every request. The first key's call starts the process (and
its long-lived tasks); the second key's calls follow on the same process. Then every line that carries a
request id must carry the principal, the session and the client address of that request; every audit line
must carry the id of the call it audits; and the 5xx the gateway answers itself is logged once, at WARNING.
The registry's directory holds the gateway's own log file: at `debug`, the registry watcher must not log each
write to it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from support import ACCEPT, INIT, RunningGateway, free_port, wait_for

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
# The demo server, after a line that is not JSON-RPC: the process's reader logs it (a line of no request).
NOISY = f"[sh, -c, 'echo not-json-rpc; exec {sys.executable} -m mcpfleet.demo stdio']"
KEYS = {"ci": "ci-key-0123456789abcdef", "alice-laptop": "alice-key-0123456789abcdef"}
ROUTES = {
    "single": ("single", "legacy"),
    "pooled": ("pooled", "legacy"),
    "modern": ("single", "auto"),
    "noisy": ("noisy", "auto"),
    "sse": ("single", "sse"),  # legacy HTTP+SSE: each call is a POST of its own beside the GET's stream
}


def registry(down_port: int) -> str:
    keys = "".join(f"      - {{name: {name}, key: {key}}}\n" for name, key in KEYS.items())
    return (
        "gateway:\n"
        "  logging: {format: json, level: debug}\n"
        "  auth:\n"
        "    api_keys:\n"
        f"{keys}"
        "servers:\n"
        f"  single: {{command: {DEMO}}}\n"
        f"  pooled: {{command: {DEMO}, stateless: true, pool: {{mode: shared}}}}\n"
        f"  noisy: {{command: {NOISY}}}\n"
        f"  down: {{endpoint: 'http://127.0.0.1:{down_port}/mcp'}}\n"
    )


async def calls(gw: RunningGateway, route: str, key_name: str, count: int) -> dict[str, str]:
    """`count` echo calls by the SDK client of `key_name` on `route`; every request it sends has an id of
    its own (`<route>.<key>.<n>`). Returns {the id of each tools/call request: the key's name}."""
    server_id, mode = ROUTES[route]
    serial = iter(range(1_000_000))
    current: dict[str, str] = {}
    sent: dict[str, str] = {}

    async def name_request(request: httpx2.Request) -> None:
        request_id = f"{route}.{key_name}.{next(serial)}"
        request.headers["x-request-id"] = request_id
        sent[request_id] = key_name
        if b'"tools/call"' in request.content:
            current[request_id] = key_name

    headers = {"authorization": f"Bearer {KEYS[key_name]}"}

    def named(headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, event_hooks={"request": [name_request]})

    async with contextlib.AsyncExitStack() as stack:
        if mode == "sse":
            transport: Any = sse_client(f"{gw.url}/{server_id}/sse", headers=headers, httpx_client_factory=named)
            client = await stack.enter_async_context(Client(transport))
        else:
            http = await stack.enter_async_context(named(headers, 60))
            transport = streamable_http_client(gw.mcp(server_id), http_client=http)
            client = await stack.enter_async_context(Client(transport, mode=mode))
        for index in range(count):
            result = await client.call_tool("echo", {"text": f"{key_name} {index}"})
            assert not result.is_error, result
    return current


def lines_of(gw: RunningGateway) -> list[dict[str, Any]]:
    assert gw.log is not None
    text = gw.log.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_each_line_names_its_own_request(gateway: Callable[[str], RunningGateway]) -> None:
    down_port = free_port()
    gw = gateway(registry(down_port))
    tool_calls: dict[str, str] = {}

    async def main() -> None:
        for route in ROUTES:
            tool_calls.update(await calls(gw, route, "ci", 1))  # starts the process: its tasks begin here
            tool_calls.update(await calls(gw, route, "alice-laptop", 2))
            tool_calls.update(await calls(gw, route, "ci", 1))

    anyio.run(main)
    as_ci = {**ACCEPT, "x-request-id": "down.ci.0", "authorization": f"Bearer {KEYS['ci']}"}
    unreachable = httpx2.post(gw.mcp("down"), json=INIT, headers=as_ci, timeout=60)
    assert unreachable.status_code == 502, unreachable.text
    audited = set(tool_calls)
    wait_for(lambda: audited <= {line.get("request_id") for line in lines_of(gw) if "audit" in line}, timeout=30)
    wait_for(lambda: any("not JSON-RPC" in line["message"] for line in lines_of(gw)), timeout=30)
    lines = lines_of(gw)

    (skipped,) = [line for line in lines if "not JSON-RPC" in line["message"]]
    assert "request_id" not in skipped, skipped  # its reader started while ci's first request was served
    for line in lines:
        request_id = line.get("request_id")
        if request_id is None:
            # A line logged for no request (start-up, a process's start or exit, upkeep) carries no request's field.
            assert not {"principal", "session_id", "server", "client"} & set(line), line
            continue
        route, key_name, _ = request_id.split(".")
        assert line["principal"] == f"key:{key_name}", line
        assert line["client"] == "127.0.0.1", line
        if "audit" in line:
            assert line["audit"]["principal"] == line["principal"], line
            assert line["server"] == line["audit"]["server"] == ROUTES[route][0], line
            assert line.get("session_id") == line["audit"]["session"], line
            assert (line.get("session_id") is None) == (ROUTES[route][1] == "auto"), line

    audits = {line["request_id"]: line for line in lines if "audit" in line}
    assert set(audits) == audited, (sorted(audits), sorted(audited))
    for request_id, key_name in tool_calls.items():
        assert audits[request_id]["audit"]["principal"] == f"key:{key_name}"

    errors = [line for line in lines if line.get("request_id") == "down.ci.0" and "status" in line]
    assert len(errors) == 1, errors
    (error,) = errors
    assert error["level"] == "WARNING" and error["status"] == 502 and error["code"] == -32012, error
    assert "'down' is unreachable" in error["message"], error
    assert not [line for line in lines if line["logger"].startswith("watchfiles")]
