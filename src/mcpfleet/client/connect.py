"""Open an MCP client session to a registry entry, over whatever reaches it.

Detection follows the order of the requirements: an entry reachable over HTTP is used over HTTP (Streamable
HTTP, then legacy HTTP+SSE when the server answers the POST with 404/405 and the entry allows it); else, if
it has a command, it is spawned over stdio; else a clear error names what was tried. The session itself is
the official SDK's `mcp.Client` in `auto` mode, which speaks both protocol generations: it probes
`server/discover` (2026-07-28) and falls back to the `initialize` handshake (2025 revisions).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcpfleet.client.transport import process_transport
from mcpfleet.errors import ProtocolError, ServerStartError, ServerUnreachableError, UsageError, leaf_error
from mcpfleet.process import StdioProcess
from mcpfleet.registry.model import Endpoint, HttpServer, Server, StdioServer
from mcpfleet.registry.render import mask_url

TransportName = Literal["streamable-http", "sse", "stdio"]
ClientFactory = Callable[[Any], Client]


@dataclass(frozen=True)
class Connection:
    """A connected SDK client and how it was reached."""

    server_id: str
    client: Client
    transport: TransportName
    target: str

    @property
    def protocol_version(self) -> str:
        return self.client.protocol_version


class _NotStreamable(Exception):
    """The endpoint answered, but not to Streamable HTTP (404/405 on the POST): try legacy SSE."""


@contextlib.asynccontextmanager
async def connect(server: Server, **client_options: Any) -> AsyncIterator[Connection]:
    """Yield a `Connection` to `server`; raise ServerUnavailableError (exit 3) or UsageError (exit 2).

    `client_options` go to `mcp.Client` (callbacks such as `logging_callback`, `client_info`, ...).
    """
    client_options.setdefault("read_timeout_seconds", server.timeouts.first_byte)
    if isinstance(server, HttpServer):
        failures: list[str] = []
        for endpoint in server.endpoints:
            try:
                async with _connect_http(server, endpoint, client_options) as connection:
                    yield connection
                    return
            except _Unreachable as exc:
                failures.append(str(exc))
        if server.command is None:
            raise ServerUnreachableError(f"server {server.id!r} is unreachable: " + "; ".join(failures))
        async with _connect_stdio(server, server.command, client_options) as connection:
            yield connection
    elif isinstance(server, StdioServer):
        async with _connect_stdio(server, server.command, client_options) as connection:
            yield connection
    else:
        raise UsageError(
            f"server {server.id!r} is of type {server.type!r}: it runs through its deployment backend, which this"
            " version does not provide yet; meanwhile, run it yourself and name its URL in an http entry"
        )


class _Unreachable(Exception):
    """Nothing answered at this endpoint (connection refused, DNS, connect timeout)."""


@contextlib.asynccontextmanager
async def _connect_http(server: HttpServer, endpoint: Endpoint, options: dict[str, Any]) -> AsyncIterator[Connection]:
    if server.transport in ("auto", "streamable-http"):
        url = server.mcp_url(endpoint)
        log = _StatusLog()
        try:
            async with _entered(server, url, _streamable(server, url, log), options, log) as connection:
                yield connection
                return
        except _NotStreamable:
            if server.transport != "auto":
                raise ProtocolError(f"server {server.id!r}: {url} does not serve Streamable HTTP") from None
    url = server.sse_url(endpoint)
    async with _entered(server, url, _sse(server, url), options, None) as connection:
        yield connection


class _StatusLog:
    """Statuses of the POSTs a transport made. The SDK turns an HTTP error into an MCP error before we see
    it; the status tells a server that does not speak Streamable HTTP (404/405) from one that refused us."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def __call__(self, response: httpx2.Response) -> None:
        if response.request.method == "POST":
            self.statuses.append(response.status_code)


@contextlib.asynccontextmanager
async def _streamable(server: HttpServer, url: str, log: _StatusLog) -> AsyncIterator[Any]:
    timeouts = server.timeouts
    http = httpx2.AsyncClient(
        headers=dict(server.headers),
        timeout=httpx2.Timeout(timeouts.first_byte, connect=timeouts.connect, read=timeouts.idle_stream),
        event_hooks={"response": [log]},
    )
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


def _sse(server: HttpServer, url: str) -> Any:
    return sse_client(
        url,
        headers=dict(server.headers),
        timeout=server.timeouts.connect,
        sse_read_timeout=server.timeouts.idle_stream,
    )


@contextlib.asynccontextmanager
async def _entered(
    server: HttpServer, url: str, streams: Any, options: dict[str, Any], log: _StatusLog | None
) -> AsyncIterator[Connection]:
    """Enter an SDK client over an HTTP transport (`log` only for Streamable HTTP), translating failures."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(Client(streams, **options))
        except BaseException as exc:
            raise _translate(server, url, leaf_error(exc), log) from exc
        yield Connection(server.id, client, "sse" if log is None else "streamable-http", url)


def _translate(server: HttpServer, url: str, exc: BaseException, log: _StatusLog | None) -> BaseException:
    if isinstance(exc, httpx2.TransportError):
        return _Unreachable(f"{mask_url(url)}: {type(exc).__name__} {exc}".rstrip())
    if isinstance(exc, OSError):
        return _Unreachable(f"{mask_url(url)}: {exc}")
    url = mask_url(url)
    if isinstance(exc, MCPError):
        failed = [status for status in (log.statuses if log else []) if status >= 400]
        # The SDK stands in a generic error for a bare 404/405; one with a JSON-RPC body is a real answer
        # (a gateway saying the server id is unknown, say), not a sign of a legacy server.
        bare = exc.error.message in ("Not Found", "Server returned an error response")
        if failed and failed[-1] in (404, 405) and bare:
            return _NotStreamable()
        if failed and failed[-1] in (401, 403):
            return ProtocolError(f"server {server.id!r} at {url} requires authorization (HTTP {failed[-1]})")
        answered = f" (HTTP {failed[-1]})" if failed else ""
        return ProtocolError(f"server {server.id!r} at {url} refused the MCP handshake: {exc.error.message}{answered}")
    if isinstance(exc, httpx2.HTTPStatusError):
        return ProtocolError(f"server {server.id!r} at {url} answered HTTP {exc.response.status_code}")
    return exc


@contextlib.asynccontextmanager
async def _connect_stdio(
    server: StdioServer | HttpServer, argv: tuple[str, ...], options: dict[str, Any]
) -> AsyncIterator[Connection]:
    process = StdioProcess.for_entry(server, argv)
    async with process, contextlib.AsyncExitStack() as stack:
        # A cancel scope cannot wrap Client.__aenter__ (it opens a task group that outlives the scope), so a
        # slow handshake is ended by stopping the child, which fails the handshake at once.
        watchdog = process.kill_after(server.timeouts.startup)
        try:
            client = await stack.enter_async_context(Client(process_transport(process), **options))
        except BaseException as exc:
            if process.timed_out:
                reason = f"did not finish the MCP handshake within {server.timeouts.startup:g} s"
                raise ServerStartError(server.id, argv, reason, process.stderr_tail()) from None
            raise await _start_failure(server.id, argv, process, leaf_error(exc)) from exc
        finally:
            watchdog.cancel()
        yield Connection(server.id, client, "stdio", " ".join(argv))


async def _start_failure(
    server_id: str, argv: tuple[str, ...], process: StdioProcess, exc: BaseException
) -> BaseException:
    if not isinstance(exc, Exception):
        return exc
    # Let a dying child finish, so its exit code and last words (stderr) are known.
    if await process.wait_exited(1.0):
        await anyio.sleep(0.05)
        reason = f"exited with code {process.returncode} before the MCP handshake finished"
    else:
        reason = f"failed the MCP handshake: {exc}"
    return ServerStartError(server_id, argv, reason, process.stderr_tail())


def http_entry(server_id: str, base_url: str, *, path: str = "/mcp", sse_path: str = "/sse") -> HttpServer:
    """An ad-hoc http entry, e.g. for a server behind a gateway at `<gateway>/<server-id>`."""
    return HttpServer.model_validate(
        {"id": server_id, "endpoints": [base_url.rstrip("/")], "path": path, "sse_path": sse_path}
    )
