"""Message backends: one connection to a server that carries whole JSON-RPC messages as bytes.

The relay (relay.py) routes messages between clients and a backend without caring which kind it is:

- `ProcessBackend`: a supervised stdio process; lines go through untouched.
- `TransportBackend`: an HTTP server reached through the official SDK's client transport (Streamable HTTP
  or legacy HTTP+SSE), for clients whose transport the server does not speak (a WebSocket or legacy SSE
  client in front of a Streamable HTTP server, a Streamable HTTP client in front of a legacy SSE server).
  Messages are parsed and serialized again by the SDK on this path. Its requests carry the entry's
  `headers` and the `X-Forwarded-For`/`-Host`/`-Proto` of the client connection that opened it (none for a
  connection that several clients share), and nothing else of the client's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

import anyio
import httpx2
import mcp_types as types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from mcpfleet.process import StdioProcess
from mcpfleet.registry.model import Endpoint, HttpServer, StdioServer

log = logging.getLogger("mcpfleet.gateway.backend")


class Backend(Protocol):
    async def __aenter__(self) -> Backend: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes:
        """The next message; anyio.EndOfStream when the backend is gone."""
        ...

    async def settle(self) -> str:
        """After the end: how it ended, for error messages (exit code, last stderr line, ...)."""
        ...


class ProcessBackend:
    def __init__(self, server: StdioServer | HttpServer, argv: tuple[str, ...]) -> None:
        self.process = StdioProcess.for_entry(server, argv)

    async def __aenter__(self) -> ProcessBackend:
        await self.process.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.process.aclose()

    async def send(self, data: bytes) -> None:
        await self.process.send(data)

    async def receive(self) -> bytes:
        return await self.process.receive()

    async def settle(self) -> str:
        await self.process.wait_exited(0.5)
        code = self.process.returncode
        detail = f"exit code {code}" if code is not None else "stopped"
        if tail := self.process.stderr_tail().strip():
            detail += "; stderr: " + tail.splitlines()[-1]
        return detail


def _client_headers(server: HttpServer, forwarded: Sequence[tuple[bytes, bytes]]) -> httpx2.Headers:
    """What every request of a bridged connection carries besides the transport's own headers: the
    X-Forwarded-* of the client connection, replaced by the entry's `headers` where they name the same one."""
    headers = httpx2.Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in forwarded])
    headers.update(dict(server.headers))
    return headers


class TransportBackend:
    def __init__(
        self, server: HttpServer, endpoint: Endpoint, *, forwarded: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.server = server
        self.endpoint = endpoint
        self._headers = _client_headers(server, forwarded)
        self._stack = contextlib.AsyncExitStack()
        self._read: Any = None
        self._write: Any = None
        self.error = ""

    async def __aenter__(self) -> TransportBackend:
        server, timeouts = self.server, self.server.timeouts
        if server.transport == "sse":
            transport: Any = sse_client(
                server.sse_url(self.endpoint),
                headers=dict(self._headers),
                timeout=timeouts.connect,
                sse_read_timeout=timeouts.idle_stream,
            )
        else:
            http = await self._stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=self._headers,
                    timeout=httpx2.Timeout(timeouts.first_byte, connect=timeouts.connect, read=timeouts.idle_stream),
                )
            )
            transport = streamable_http_client(server.mcp_url(self.endpoint), http_client=http)
        self._read, self._write = await self._stack.enter_async_context(transport)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Not in a cancel scope of our own: the SDK transport's task group must exit in the scope it entered.
        with contextlib.suppress(Exception):
            await self._stack.aclose()

    async def send(self, data: bytes) -> None:
        message = types.jsonrpc_message_adapter.validate_json(data, by_name=False)
        await self._write.send(SessionMessage(message))

    async def receive(self) -> bytes:
        while True:
            try:
                item = await self._read.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise anyio.EndOfStream from None
            if isinstance(item, Exception):
                self.error = f"{type(item).__name__}: {item}"
                log.warning("server %r: transport error: %s", self.server.id, self.error)
                continue
            data: str = item.message.model_dump_json(by_alias=True, exclude_unset=True)
            return data.encode()

    async def settle(self) -> str:
        return self.error or "the connection to the server closed"
