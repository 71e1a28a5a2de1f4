"""Tool access (`gateway.access` rules with `tools`) on every route, with the official SDK client.

One gateway, two API keys: `ci` may list and call only `echo` and `who*`, `admin` everything, and `outsider`
reaches only the server `web`. Through each client transport (Streamable HTTP at 2025-11-25 and at
2026-07-28, WebSocket, legacy HTTP+SSE) and each kind of backend (stdio in session mode, stdio in pool mode
`shared`, a Streamable HTTP server answering with event streams, the same answering JSON, a legacy-SSE-only
server), `ci` sees only its tools and a call of another one gets the JSON-RPC error without reaching the
server, while `admin` sees and calls everything. A principal no rule lets reach a server gets 403, on HTTP
and on the WebSocket handshake.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from test_gateway_third_party import everything_script, node_argv
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mcpfleet.client.websocket import websocket_client

from support import ACCEPT, INIT, RunningGateway, free_port, rpc_messages, run_cli, running

DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
KEYS = {"ci": "ci-key-0123456789abcdef", "admin": "admin-key-0123456789abcdef", "outsider": "outsider-0123456789abcdef"}
CI_TOOLS = {"echo", "whoami"}  # the demo tools matching `echo` and `who*`
DENIED = -32602
# The demo server answering JSON rather than event streams (the SDK's `json_response`).
JSON_DEMO = """
import sys

import uvicorn

from mcpfleet.demo.server import build_server

app = build_server(replica="json", transport="http").streamable_http_app(host="127.0.0.1", json_response=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def registry(web: str, web_json: str) -> str:
    keys = "".join(f"      - {{name: {name}, key: {key}}}\n" for name, key in KEYS.items())
    return (
        "gateway:\n"
        "  auth:\n"
        "    api_keys:\n"
        f"{keys}"
        "  access:\n"
        "    - {principals: ['key:admin'], servers: ['*']}\n"
        "    - {principals: ['key:ci'], servers: ['*'], tools: [echo, 'who*']}\n"
        "    - {principals: ['key:outsider'], servers: [web]}\n"
        "servers:\n"
        f"  local: {{command: {DEMO_STDIO}}}\n"
        f"  shared: {{command: {DEMO_STDIO}, stateless: true, pool: {{mode: shared}}}}\n"
        f"  web: {{endpoint: '{web}'}}\n"
        f"  webjson: {{endpoint: '{web_json}'}}\n"
        f"  old: {{url: '{web}/sse'}}\n"
    )


@pytest.fixture
def fleet(
    tmp_path: Path, gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> Iterator[RunningGateway]:
    """The gateway with its servers: the demo over stdio (session and shared mode), over HTTP answering
    with event streams (also reached as a legacy SSE server) and answering JSON."""
    script = tmp_path / "json_demo.py"
    script.write_text(JSON_DEMO)
    port = free_port()
    with running([sys.executable, str(script), str(port)], port) as web_json:
        yield gateway(registry(demo_http("web"), web_json))


@contextlib.asynccontextmanager
async def session(gw: RunningGateway, server_id: str, transport: str, mode: str, key: str) -> AsyncIterator[Client]:
    """An SDK client session through `transport`, presenting the API key of `key`."""
    bearer = {"authorization": f"Bearer {KEYS[key]}"}
    async with contextlib.AsyncExitStack() as stack:
        target: Any
        if transport == "streamable-http":
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer, timeout=60))
            target = streamable_http_client(gw.mcp(server_id), http_client=http)
        elif transport == "sse":
            target = sse_client(f"{gw.url}/{server_id}/sse", headers=bearer, timeout=60)
        else:
            ws_url = f"{gw.url.replace('http://', 'ws://')}/{server_id}/ws"
            target = websocket_client(ws_url, headers=list(bearer.items()))
        yield await stack.enter_async_context(Client(target, mode=mode))


async def check(gw: RunningGateway, server_id: str, transport: str, mode: str) -> None:
    where = (server_id, transport, mode)
    async with session(gw, server_id, transport, mode, "ci") as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert listed == CI_TOOLS, where
        echo = await client.call_tool("echo", {"text": "allowed"})
        assert echo.content[0].text == "allowed", where  # type: ignore[union-attr]
        with pytest.raises(MCPError) as denied:
            await client.call_tool("countdown", {"start": 1, "interval": 0})
        assert denied.value.code == DENIED, where
        assert denied.value.error.message == (
            f"tool 'countdown' is not allowed for key:ci on server '{server_id}' (setting: gateway.access)"
        ), where
        # The session goes on after a refusal.
        assert (await client.call_tool("whoami", {})).structured_content is not None, where
    async with session(gw, server_id, transport, mode, "admin") as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "whoami", "countdown", "fail", "stats", "sleep"} <= listed, where
        counted = await client.call_tool("countdown", {"start": 2, "interval": 0})
        assert counted.content[0].text == "counted down from 2", where  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("transport", "mode", "servers"),
    [
        ("streamable-http", "legacy", ("local", "shared", "web", "webjson", "old")),
        ("streamable-http", "auto", ("local", "shared", "web", "webjson")),  # 2026-07-28
        ("websocket", "legacy", ("local", "shared", "web", "old")),
        ("sse", "legacy", ("local", "web")),
    ],
)
def test_a_restricted_key_sees_and_calls_only_its_tools_on_every_route(
    fleet: RunningGateway, transport: str, mode: str, servers: tuple[str, ...]
) -> None:
    async def run() -> None:
        for server_id in servers:
            await check(fleet, server_id, transport, mode)

    anyio.run(run)


def test_the_2026_revision_is_what_auto_mode_speaks(fleet: RunningGateway) -> None:
    """The `auto` rows above test 2026-07-28 only if the client negotiates it through the gateway."""

    async def run() -> list[str]:
        versions = []
        for server_id in ("local", "web"):
            async with session(fleet, server_id, "streamable-http", "auto", "ci") as client:
                versions.append(client.protocol_version)
        return versions

    assert anyio.run(run) == ["2026-07-28", "2026-07-28"]


def test_a_batch_keeps_its_allowed_requests_and_refuses_the_denied_call(fleet: RunningGateway) -> None:
    """2025-03-26 allows batches: on the relay (session and shared mode) the allowed requests are answered by
    the server and the denied call by the gateway, in one answer. (The SDK's HTTP server takes no batches,
    so the passthrough's merge is tested in tests/unit/test_tools.py.)"""

    async def run() -> None:
        init = {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-03-26"}}
        headers = ACCEPT | {"authorization": f"Bearer {KEYS['ci']}"}
        async with httpx2.AsyncClient(timeout=60) as http:
            for server_id in ("local", "shared"):
                opened = await http.post(fleet.mcp(server_id), json=init, headers=headers)
                assert opened.status_code == 200, (server_id, opened.text)
                in_session = headers | {
                    "mcp-session-id": opened.headers["mcp-session-id"],
                    "mcp-protocol-version": "2025-03-26",
                }
                await http.post(
                    fleet.mcp(server_id),
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                    headers=in_session,
                )
                batch = [
                    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "fail", "arguments": {}}},
                    {
                        "jsonrpc": "2.0",
                        "id": 4,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": "b"}},
                    },
                ]
                answer = await http.post(fleet.mcp(server_id), json=batch, headers=in_session)
                assert answer.status_code == 200, (server_id, answer.text)
                by_id = {m["id"]: m for m in rpc_messages(answer)}
                assert {t["name"] for t in by_id[2]["result"]["tools"]} == CI_TOOLS, server_id
                assert by_id[3]["error"]["code"] == DENIED, server_id
                assert by_id[4]["result"]["content"][0]["text"] == "b", server_id
                # A batch of denied calls only is answered by the gateway alone.
                only = await http.post(fleet.mcp(server_id), json=batch[1:2], headers=in_session)
                assert [m["error"]["code"] for m in rpc_messages(only)] == [DENIED], server_id

    anyio.run(run)


def test_a_denied_call_written_with_escapes_is_still_denied(fleet: RunningGateway) -> None:
    """The passthrough parses a body only when it could name a tools method: an escaped method name counts."""

    async def run() -> None:
        headers = ACCEPT | {"authorization": f"Bearer {KEYS['ci']}", "mcp-protocol-version": "2026-07-28"}
        body = (
            b'{"jsonrpc":"2.0","id":7,"method":"tools\\/call","params":{"name":"count\\u0064own",'
            b'"arguments":{"start":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
        )
        async with httpx2.AsyncClient(timeout=60) as http:
            answer = await http.post(
                fleet.mcp("web"),
                content=body,
                headers=headers | {"mcp-method": "tools/call", "mcp-name": "countdown"},
            )
        assert answer.status_code == 200, answer.text
        assert rpc_messages(answer)[0]["error"]["code"] == DENIED

    anyio.run(run)


def test_the_cli_through_the_gateway_says_a_tool_is_denied_or_may_be_hidden(fleet: RunningGateway) -> None:
    """`mcpfleet call --gateway` with a key whose rules hide a tool: calling it shows the gateway's refusal
    (not "unknown tool" from a listing that hides it); with `--arg` (the listing is read first) the unknown
    tool's message says the gateway's rules may hide it."""
    env = {"MCPFLEET_TOKEN": KEYS["ci"]}
    called = run_cli("call", "local", "stats", "--args-json", '{"numbers": [1]}', "--gateway", fleet.url, env=env)
    assert called.returncode == 1, called.stderr  # the server (the gateway for it) answered with an error
    assert "tool 'stats' is not allowed for key:ci on server 'local' (setting: gateway.access)" in called.stderr
    assert "unknown tool" not in called.stderr and "Traceback" not in called.stderr
    listed = run_cli("call", "local", "stats", "--arg", "numbers=[1]", "--gateway", fleet.url, env=env)
    assert listed.returncode == 2, listed.stderr
    assert "unknown tool 'stats'" in listed.stderr and "the gateway's access rules (gateway.access at" in listed.stderr
    admin = run_cli(
        "call",
        "local",
        "stats",
        "--args-json",
        '{"numbers": [1]}',
        "--gateway",
        fleet.url,
        env={"MCPFLEET_TOKEN": KEYS["admin"]},
    )
    assert admin.returncode == 0, admin.stderr


def test_a_principal_without_a_rule_for_the_server_gets_403(fleet: RunningGateway) -> None:
    async def run() -> None:
        outsider = {"authorization": f"Bearer {KEYS['outsider']}"}
        async with httpx2.AsyncClient(timeout=60) as http:
            refused = await http.post(fleet.mcp("local"), json=INIT, headers=ACCEPT | outsider)
            assert refused.status_code == 403
            message = refused.json()["error"]["message"]
            assert message == "key:outsider may not use server 'local' (setting: gateway.access)"
            allowed = await http.post(fleet.mcp("web"), json=INIT, headers=ACCEPT | outsider)
            assert allowed.status_code == 200
        ws_url = f"{fleet.url.replace('http://', 'ws://')}/local/ws"
        with pytest.raises(InvalidStatus) as handshake:
            async with connect(ws_url, subprotocols=["mcp"], additional_headers=outsider, open_timeout=30):
                pass
        assert handshake.value.response.status_code == 403

    anyio.run(run)


# --- every path of an http server, and what a server may answer with (review of issue 12) ----------------

# A stateless demo server that routes the way Express does by default (any case, a trailing slash) and
# drops `;params`, for its Streamable HTTP path and its legacy SSE paths, with one more tool that writes down
# every call that reaches it.
LENIENT_DEMO = """
import json
import sys
from pathlib import Path

import uvicorn

from mcpfleet.demo.server import build_server

server = build_server(replica="lenient", transport="http")
calls = Path(sys.argv[2])


@server.tool()
def forbidden() -> str:
    \"\"\"A tool the restricted key may not call: every call that reaches the server is written down.\"\"\"
    with calls.open("a") as out:
        out.write("called\\n")
    return "ran"


app = server.streamable_http_app(host="127.0.0.1", stateless_http=True)
app.router.routes.extend(server.sse_app(host="127.0.0.1").routes)
CANONICAL = {"/mcp": "/mcp", "/sse": "/sse", "/messages": "/messages/"}


async def lengthy(scope, receive, send):
    # A list answered as an event stream that states its length (as some servers do).
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    tools = [{"name": name, "inputSchema": {"type": "object"}} for name in ("echo", "forbidden")]
    answer = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {"tools": tools}})
    event = f"event: message\\ndata: {answer}\\n\\n".encode()
    headers = [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no")]
    headers.append((b"content-length", b"%d" % len(event)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": event})


async def lenient(scope, receive, send):
    if scope["type"] == "http" and (b"x-test-lengthy", b"1") in scope["headers"]:
        return await lengthy(scope, receive, send)
    if scope["type"] == "http":
        key = scope["path"].split(";")[0].rstrip("/").lower()
        if key in CANONICAL:
            scope = {**scope, "path": CANONICAL[key], "raw_path": CANONICAL[key].encode()}
    await app(scope, receive, send)


uvicorn.run(lenient, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
CI = ACCEPT | {"authorization": f"Bearer {KEYS['ci']}", "mcp-protocol-version": "2025-11-25"}
ADMIN = CI | {"authorization": f"Bearer {KEYS['admin']}"}
FORBIDDEN_CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "forbidden", "arguments": {}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


@pytest.fixture
def lenient(tmp_path: Path, gateway: Callable[[str], RunningGateway]) -> Iterator[tuple[RunningGateway, Path]]:
    """The gateway with the lenient server as `lenient` (an http entry), and the file of its `forbidden` calls."""
    script = tmp_path / "lenient_demo.py"
    script.write_text(LENIENT_DEMO)
    calls = tmp_path / "calls.txt"
    port = free_port()
    with running([sys.executable, str(script), str(port), str(calls)], port) as url:
        yield gateway(registry(url, url) + f"  lenient: {{endpoint: '{url}'}}\n"), calls


def test_every_path_of_an_http_server_is_screened_not_only_its_mcp_path(
    lenient: tuple[RunningGateway, Path],
) -> None:
    """The backend serves MCP at `/mcp/`, `/MCP` and `/mcp;x` too: through each, the restricted key's list is
    filtered and its call of another tool never reaches the server, while the admin's call there does (so
    the path really reaches the server's MCP handler). A body the guard cannot read is refused."""
    gw, calls = lenient

    async def run() -> None:
        async with httpx2.AsyncClient(timeout=60) as http:
            for path in ("/mcp/", "/MCP", "/mcp;x", "/Mcp/"):
                url = f"{gw.url}/lenient{path}"
                listed = await http.post(url, json=LIST, headers=CI)
                assert listed.status_code == 200, (path, listed.text)
                assert {t["name"] for t in rpc_messages(listed)[0]["result"]["tools"]} == CI_TOOLS, path
                denied = await http.post(url, json=FORBIDDEN_CALL, headers=CI)
                assert denied.status_code == 200, (path, denied.text)
                assert rpc_messages(denied)[0]["error"]["code"] == DENIED, path
                # Sent as a notification, the call is dropped all the same (a server may run what it cannot answer).
                note = {k: v for k, v in FORBIDDEN_CALL.items() if k != "id"}
                assert (await http.post(url, json=note, headers=CI)).status_code == 202, path
            # A compressed body, or one in another charset, cannot be read by the guard: refused, not passed on.
            for extra in ({"content-encoding": "gzip"}, {"content-type": "application/json; charset=utf-16"}):
                refused = await http.post(f"{gw.url}/lenient/mcp/", json=FORBIDDEN_CALL, headers=CI | extra)
                assert refused.status_code == 415, (extra, refused.text)
                assert refused.json()["error"]["code"] == -32600
            assert not calls.exists() or calls.read_text() == ""
            ran = await http.post(f"{gw.url}/lenient/MCP/", json=FORBIDDEN_CALL, headers=ADMIN)
            assert rpc_messages(ran)[0]["result"]["content"][0]["text"] == "ran", ran.text
            assert calls.read_text() == "called\n"

    anyio.run(run)


def test_an_event_stream_that_states_its_length_is_filtered_and_ends_whole(
    lenient: tuple[RunningGateway, Path],
) -> None:
    """The gateway rewrites a restricted caller's list, so the length the server stated is not the answer's:
    it must not be passed on (it was, and the answer broke off with an error)."""
    gw, _ = lenient

    async def run() -> None:
        async with httpx2.AsyncClient(timeout=60) as http:
            listed = await http.post(gw.mcp("lenient"), json=LIST, headers=CI | {"x-test-lengthy": "1"})
        assert listed.status_code == 200, listed.text
        assert "content-length" not in listed.headers
        assert [t["name"] for t in rpc_messages(listed)[0]["result"]["tools"]] == ["echo"]

    anyio.run(run)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event read from `lines`."""
    event, data = "message", []
    async for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def test_a_legacy_sse_session_on_another_path_of_an_http_server_is_screened(
    lenient: tuple[RunningGateway, Path],
) -> None:
    """`/SSE` and `/Messages/` reach the backend's legacy transport through the passthrough (the gateway's
    own legacy routes are `/sse` and `/messages/` exactly): the answers on the stream are filtered, though
    they answer POSTs made elsewhere, and the denied call is answered at its POST."""
    gw, calls = lenient

    async def run() -> None:
        stream_headers = CI | {"accept": "text/event-stream"}
        async with (
            httpx2.AsyncClient(timeout=60) as http,
            http.stream("GET", f"{gw.url}/lenient/SSE", headers=stream_headers) as s,
        ):
            assert s.status_code == 200, await s.aread()
            events = sse_events(s.aiter_lines())
            kind, endpoint = await anext(events)
            assert kind == "endpoint", (kind, endpoint)
            post = f"{gw.url}/lenient/Messages/?{endpoint.partition('?')[2]}"
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            for message in (INIT, initialized, LIST):
                assert (await http.post(post, json=message, headers=CI)).status_code == 202, message
            denied = await http.post(post, json=FORBIDDEN_CALL, headers=CI)
            assert denied.status_code == 200 and denied.json()["error"]["code"] == DENIED, denied.text
            with anyio.fail_after(30):
                async for _, data in events:
                    message = json.loads(data)
                    if message.get("id") == 2:
                        assert {t["name"] for t in message["result"]["tools"]} == CI_TOOLS
                        break
                else:
                    pytest.fail("the stream ended without the list's answer")
        assert not calls.exists() or calls.read_text() == ""

    anyio.run(run)


@pytest.mark.npm
def test_a_typescript_backend_lists_filtered_on_posts_odd_ids_and_resumed_streams(
    gateway: Callable[[str], RunningGateway],
) -> None:
    """server-everything (the official TypeScript SDK behind Express, with an event store): a restricted
    list answered as an event stream with the server's own headers is filtered (the gateway once copied a
    length onto the stream it rewrote); an id of 3.0 is refused as the relay refuses it (the server would
    answer `"id":3`, which the filter would not know); and a `tools/list` answer replayed on a GET with
    `Last-Event-ID`, whose request the GET never saw, is filtered too."""
    port = free_port()
    argv = node_argv(everything_script(), "streamableHttp")
    keys = "".join(f"      - {{name: {name}, key: {key}}}\n" for name, key in KEYS.items())
    config = (
        f"gateway:\n  auth:\n    api_keys:\n{keys}  access:\n"
        "    - {principals: ['key:ci'], servers: ['*'], tools: [echo, 'who*']}\n"
    )

    async def run(gw: RunningGateway) -> None:
        url = gw.mcp("evh")
        async with httpx2.AsyncClient(timeout=60) as http:
            opened = await http.post(url, json=INIT, headers=CI)
            assert opened.status_code == 200, opened.text
            after_init = [line[4:] for line in opened.text.splitlines() if line.startswith("id: ")][-1]
            session = CI | {"mcp-session-id": opened.headers["mcp-session-id"]}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(url, json=initialized, headers=session)).status_code == 202
            listed = await http.post(url, json=LIST, headers=session)
            assert listed.status_code == 200, listed.text
            assert "content-length" not in listed.headers
            assert [t["name"] for t in rpc_messages(listed)[0]["result"]["tools"]] == ["echo"]
            odd = await http.post(url, content=b'{"jsonrpc":"2.0","id":3.0,"method":"tools/list"}', headers=session)
            assert odd.status_code == 400 and odd.json()["error"]["code"] == -32600, odd.text
            again = await http.post(url, json=LIST | {"id": 4}, headers=session)
            assert [t["name"] for t in rpc_messages(again)[0]["result"]["tools"]] == ["echo"], again.text
            # The server's event store replays what followed the initialize answer: both lists.
            resume = session | {"accept": "text/event-stream", "last-event-id": after_init}
            seen = 0
            async with http.stream("GET", url, headers=resume) as stream:
                assert stream.status_code == 200, await stream.aread()
                with anyio.fail_after(30):
                    async for _, data in sse_events(stream.aiter_lines()):
                        result = json.loads(data).get("result")
                        if isinstance(result, dict) and "tools" in result:
                            assert [t["name"] for t in result["tools"]] == ["echo"]
                            seen += 1
                            if seen == 2:
                                break
            assert seen == 2

    with running(argv, port, env={**os.environ, "PORT": str(port)}) as base_url:
        anyio.run(run, gateway(config + f"servers:\n  evh: {{endpoint: '{base_url}'}}\n"))
