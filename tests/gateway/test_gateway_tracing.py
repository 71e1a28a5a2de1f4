"""Tracing through a running gateway: the spans it makes and the trace context its backends receive.

An in-process `Gateway` on uvicorn, with tracing on and the SDK's in-memory exporter, in front of two servers
written with the official SDK: one over HTTP (its tool `seen` answers with the `traceparent` header of the
request the call arrived in) and one over stdio (the tool answers with the `_meta` of the call). A client
sends its own `traceparent`; each tool call must give a SERVER span that is the child of the client's span,
a CLIENT span that is the SERVER span's child, and a backend that received the CLIENT span's context.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mcpfleet.gateway import tracing
from mcpfleet.gateway.app import Gateway
from mcpfleet.registry import load_registry
from mcpfleet.registry.model import Tracing

from support import ACCEPT, INIT, free_port, running, serving_in_process

SERVER = """
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("seen")


@server.tool()
def seen(ctx: Context) -> dict:
    '''The trace context this call arrived with: the HTTP header (HTTP) and the request's _meta.'''
    request = ctx.request_context.request
    header = request.headers.get("traceparent") if request is not None else None
    meta = dict(ctx.request_context.meta or {})
    return {"header": header, "meta": {k: v for k, v in meta.items() if k in ("traceparent", "tracestate")}}


if sys.argv[1] == "stdio":
    server.run("stdio")
else:
    app = server.streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup(Tracing(enabled=True, exporter="none"), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@contextlib.asynccontextmanager
async def serving(registry: Path) -> AsyncIterator[str]:
    async with Gateway(load_registry(registry), registry_path=registry) as app, serving_in_process(app) as url:
        yield url


def hexid(value: int, width: int) -> str:
    return format(value, f"0{width}x")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_spans_and_trace_context_reach_http_and_stdio_backends(
    tmp_path: Path, memory: InMemorySpanExporter, mode: str
) -> None:
    """`legacy`: 2025-11-25 sessions; `auto`: the SDK's choice, 2026-07-28 (the method in a header)."""
    script = tmp_path / "seen.py"
    script.write_text(SERVER)
    port = free_port()
    with running([sys.executable, str(script), "http", str(port)], port) as web:
        registry = tmp_path / "registry.yaml"
        registry.write_text(
            f"servers:\n  files: {{command: [{sys.executable}, {script}, stdio]}}\n  web: {{endpoint: '{web}/mcp'}}\n"
        )
        received: dict[str, dict[str, Any]] = {}
        request_ids: dict[str, str] = {}

        async def run() -> None:
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            async with serving(registry) as url:
                for server_id in ("web", "files"):

                    async def noted(response: httpx2.Response, server_id: str = server_id) -> None:
                        request_ids[server_id] = response.headers["x-request-id"]

                    async with (
                        httpx2.AsyncClient(
                            headers={"traceparent": traceparent}, timeout=30, event_hooks={"response": [noted]}
                        ) as http,
                        Client(
                            streamable_http_client(f"{url}/{server_id}/mcp", http_client=http),
                            **({"mode": "legacy"} if mode == "legacy" else {}),
                        ) as client,
                    ):
                        result = await client.call_tool("seen", {})
                        received[server_id] = json.loads(result.content[0].text)  # type: ignore[union-attr]

        anyio.run(run)
    tracing.flush()
    spans = memory.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}

    def chain(server_id: str, carried: str) -> tuple[ReadableSpan, ReadableSpan]:
        version, trace_id, parent_id, flags = carried.split("-")
        assert (version, trace_id, flags) == ("00", CLIENT_TRACE, "01"), carried
        client = by_id[int(parent_id, 16)]  # the backend's parent is one of the gateway's spans
        assert client.kind == SpanKind.CLIENT and client.parent is not None
        server = by_id[client.parent.span_id]
        assert server.kind == SpanKind.SERVER and server.parent is not None and server.parent.is_remote
        assert hexid(server.parent.span_id, 16) == CLIENT_SPAN  # the client's traceparent is the parent
        assert hexid(server.context.trace_id, 32) == CLIENT_TRACE
        assert server.attributes is not None and server.attributes["mcp.server.id"] == server_id
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["http.request.method"] == "POST"
        assert server.attributes["url.path"] == f"/{server_id}/mcp"
        return server, client

    # HTTP: the context is a header of the upstream request; the body went through untouched.
    server, client = chain("web", received["web"]["header"])
    assert received["web"]["meta"] == {}
    # 2026-07-28 names the method and the tool in headers; a passthrough parses no body.
    assert server.name == ("POST /web/mcp" if mode == "legacy" else "tools/call seen")
    assert client.attributes is not None and client.name == "POST"
    assert client.attributes["http.response.status_code"] == 200
    assert str(client.attributes["url.full"]).endswith("/mcp")
    # stdio: the context is in the request's _meta; the relay parsed the call, so the spans know it.
    server, client = chain("files", received["files"]["meta"]["traceparent"])
    assert server.name == client.name == "tools/call seen"
    assert client.attributes is not None and client.attributes["mcp.method.name"] == "tools/call"
    assert client.attributes["jsonrpc.request.id"] is not None
    # Every request of both sessions is a SERVER span in the client's trace.
    servers = [span for span in spans if span.kind == SpanKind.SERVER]
    assert len(servers) >= 6 and {hexid(s.context.trace_id, 32) for s in servers} == {CLIENT_TRACE}
    assert set(request_ids) == {"web", "files"}


def test_without_a_traceparent_a_new_trace_starts_and_names_the_request(
    tmp_path: Path, memory: InMemorySpanExporter
) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"servers:\n  local: {{command: [{sys.executable}, -m, mcpfleet.demo, stdio]}}\n")

    async def run() -> httpx2.Response:
        async with serving(registry) as url, httpx2.AsyncClient(timeout=30) as http:
            await http.get(f"{url}/healthz")
            await http.post(f"{url}/nowhere/mcp", json=INIT, headers=ACCEPT)
            return await http.post(f"{url}/local/mcp", json=INIT, headers=ACCEPT)

    answer = anyio.run(run)
    tracing.flush()
    spans = {span.name: span for span in memory.get_finished_spans() if span.kind == SpanKind.SERVER}
    assert set(spans) >= {"GET /healthz", "POST", "initialize"}, set(spans)
    assert spans["POST"].attributes is not None and spans["POST"].attributes["http.response.status_code"] == 404
    init = spans["initialize"]
    assert init.parent is None
    # With tracing on, a request without an id of its own is known by its trace id.
    assert answer.headers["x-request-id"] == hexid(init.context.trace_id, 32)


def test_tracing_asked_for_without_the_extra_is_one_line_and_exit_2(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text("gateway: {tracing: {enabled: true}}\nservers: {}\n")
    # A directory that shadows the SDK package: as if `mcpfleet[otel]` were not installed.
    shadow = tmp_path / "shadow" / "opentelemetry" / "sdk"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    paths = [str(tmp_path / "shadow"), *sys.path]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path[:0] = {paths[:1]!r}; from mcpfleet.cli import main; main()",
            "serve",
            "--registry",
            str(registry),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'mcpfleet[otel]'" in result.stderr and "gateway.tracing.enabled" in result.stderr
    assert "Traceback" not in result.stderr
