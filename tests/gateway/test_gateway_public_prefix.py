"""A gateway behind a reverse proxy that serves it under a path prefix (`gateway.public_url` with a path):
what it advertises carries the prefix, so a client that only reaches the proxy follows it through.

The proxy is a small ASGI app in the test (served by uvicorn on 127.0.0.1), the kind of nginx
`location /mcp-gw/ { proxy_pass http://gateway/; }` that strips the prefix and streams answers as they come.
Requests outside the prefix get 404 from it, as from a real proxy: a client sent to a path without the
prefix fails there.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from support import RunningGateway, serving_in_process

DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"}
TIMEOUT = 60.0


def stripping_proxy(upstream: str, prefix: str, seen: list[str]) -> Callable[..., object]:
    """An ASGI reverse proxy: `<prefix>/x` goes to `<upstream>/x`, with `X-Forwarded-*` as nginx sets them;
    any other path is its own 404. `seen` gets each request's path as the client sent it."""

    async def app(scope: dict[str, object], receive: Callable[..., object], send: Callable[..., object]) -> None:
        assert scope["type"] == "http"
        path = str(scope["path"])
        seen.append(path)
        if not path.startswith(prefix + "/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b"not here"})  # type: ignore[operator]
            return
        body = b""
        while True:
            message = await receive()  # type: ignore[operator]
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = bytes(scope.get("query_string", b"")).decode()  # type: ignore[call-overload]
        url = f"{upstream}{path[len(prefix) :]}" + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]  # type: ignore[attr-defined]
        headers.append((b"x-forwarded-for", scope["client"][0].encode()))  # type: ignore[index]
        async with httpx2.AsyncClient(timeout=TIMEOUT) as client:
            request = client.build_request(str(scope["method"]), url, headers=headers, content=body)
            response = await client.send(request, stream=True)
            try:
                out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": out})  # type: ignore[operator]
                async with anyio.create_task_group() as tg:

                    async def client_gone() -> None:
                        while (await receive())["type"] != "http.disconnect":  # type: ignore[operator]
                            pass
                        tg.cancel_scope.cancel()

                    tg.start_soon(client_gone)
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})  # type: ignore[operator]
                    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]
                    tg.cancel_scope.cancel()
            finally:
                await response.aclose()

    return app


@pytest.mark.parametrize("prefix", ["/mcp-gw", "/a/b", ""])
def test_a_legacy_sse_client_behind_a_prefix_stripping_proxy_calls_a_tool(
    gateway: Callable[[str], RunningGateway], prefix: str
) -> None:
    """The `endpoint` event names `<prefix>/<id>/messages/?session_id=...`: the SDK's `sse_client` resolves it
    against the proxy's URL and posts through the proxy (without the prefix it would post to a path the proxy
    does not serve, and wait for an answer that never comes)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        public = f"http://127.0.0.1:{listening.getsockname()[1]}{prefix}"
        gw = gateway(f"gateway:\n  public_url: '{public}'\nservers:\n  local: {{command: {DEMO_STDIO}}}\n")
        seen: list[str] = []
        assert gw.log is not None  # the banner was printed before the port answered
        banner = gw.log.read_text().splitlines()
        assert banner[0].startswith(f"mcpfleet gateway on {gw.url} (")  # the local address first, as scripts read it
        assert banner[1:6] == [
            f"  {gw.url}/local/mcp",
            f"  status: {gw.url}/servers",
            f"public: {public} (gateway.public_url)",
            f"  {public}/local/mcp",
            f"  status: {public}/servers",
        ]

        async def run() -> None:
            async with serving_in_process(stripping_proxy(gw.url, prefix, seen), listening):
                with anyio.fail_after(TIMEOUT):
                    async with Client(sse_client(f"{public}/local/sse", timeout=TIMEOUT)) as client:
                        result = await client.call_tool("echo", {"text": "through the proxy"})
                assert result.content[0].text == "through the proxy"  # type: ignore[union-attr]
                async with httpx2.AsyncClient(timeout=TIMEOUT) as http:  # the proxy runs on this event loop
                    index = (await http.get(f"{public}/")).json()
                assert index["servers"][0]["sse"] == f"{public}/local/sse"

        anyio.run(run)
    posts = [path for path in seen if "/messages/" in path]
    assert posts and all(path == f"{prefix}/local/messages/" for path in posts), seen


def test_without_public_url_the_endpoint_event_names_the_path_the_client_used(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")
    with (
        httpx2.Client(timeout=TIMEOUT) as http,
        http.stream("GET", f"{gw.url}/local/sse", headers={"accept": "text/event-stream"}) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "event: endpoint"
        assert next(lines).startswith("data: /local/messages/?session_id=")
