"""Open an MCP client session to a registry entry, over whatever reaches it.

Detection follows the order of the requirements: an entry reachable over HTTP is used over HTTP (Streamable
HTTP, then legacy HTTP+SSE when the server answers the POST with 404/405 and the entry allows it); else, if
it has a command, it is spawned over stdio; else a clear error names what was tried. A `docker` entry with a
`port` is reached over Streamable HTTP at one of its running replicas of the present spec (found through the
Docker deployer, in a random order so that calls spread over them; the next one when one does not answer);
`mcpfleet deploy` starts them, nothing here does. A `docker` entry without a `port` (a stdio server) gets a
container of its own for the session, attached to (`ContainerProcess`) and removed at its end. The session
itself is the official SDK's `mcp.Client` in `auto` mode, which speaks both protocol generations: it probes
`server/discover` (2026-07-28) and falls back to the `initialize` handshake (2025 revisions).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcpfleet.client.transport import process_transport
from mcpfleet.errors import (
    ProtocolError,
    RefusedError,
    ServerStartError,
    ServerUnreachableError,
    UsageError,
    leaf_error,
)
from mcpfleet.masking import shown_url
from mcpfleet.process import StdioProcess
from mcpfleet.registry.model import DockerServer, Endpoint, HttpServer, KubernetesServer, Server, StdioServer

if TYPE_CHECKING:
    from mcpfleet.deploy.docker.attach import ContainerProcess

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
async def connect(server: Server, *, project: str | None = None, **client_options: Any) -> AsyncIterator[Connection]:
    """Yield a `Connection` to `server`; raise ServerUnavailableError (exit 3) or UsageError (exit 2).

    `project`: for a docker entry, the project its containers belong to (None: `$MCPFLEET_PROJECT`, else
    `mcpfleet`). `client_options` go to `mcp.Client` (callbacks such as `logging_callback`, `client_info`,
    ...). When detection fails, the error names every URL tried and what each answered.
    """
    client_options.setdefault("read_timeout_seconds", server.timeouts.first_byte)
    if isinstance(server, DockerServer) and server.stdio:
        async with _connect_container(server, project, client_options) as connection:
            yield connection
        return
    if isinstance(server, DockerServer):
        server = await replicas_entry(server, project)
    elif isinstance(server, KubernetesServer):
        server = await pods_entry(server, project)
    if isinstance(server, HttpServer):
        tried = Tried()
        for endpoint in server.endpoints:
            try:
                async with _connect_http(server, endpoint, client_options, tried) as connection:
                    yield connection
                    return
            except _Unreachable:
                continue
        if server.command is None:
            raise ServerUnreachableError(f"server {server.id!r} is unreachable: {tried}")
        async with _connect_stdio(server, server.command, client_options, tried) as connection:
            yield connection
    elif isinstance(server, StdioServer):
        async with _connect_stdio(server, server.command, client_options) as connection:
            yield connection
    else:
        raise UsageError(f"server {server.id!r} is of type {server.type!r}, which mcpfleet cannot connect to")


class Tried:
    """Each URL a detection tried and what it answered (a status, or the connection error), in order."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def add(self, url: str, outcome: str) -> None:
        self.outcomes.append(f"{shown_url(url)}: {outcome}")

    def before(self) -> str:
        return "; ".join(self.outcomes[:-1])

    def __len__(self) -> int:
        return len(self.outcomes)

    def __str__(self) -> str:
        return "; ".join(self.outcomes)


class _Unreachable(Exception):
    """Nothing answered at this endpoint (connection refused, DNS, connect timeout): try the next one."""


@contextlib.asynccontextmanager
async def _connect_http(
    server: HttpServer, endpoint: Endpoint, options: dict[str, Any], tried: Tried
) -> AsyncIterator[Connection]:
    if server.transport in ("auto", "streamable-http"):
        url = server.mcp_url(endpoint)
        log = _StatusLog()
        try:
            async with _entered(server, url, _streamable(server, url, log), options, log, tried) as connection:
                yield connection
                return
        except _NotStreamable:
            if server.transport != "auto":
                raise ProtocolError(
                    f"server {server.id!r}: {shown_url(url)} does not serve Streamable HTTP (tried {tried})"
                ) from None
    url = server.sse_url(endpoint)
    async with _entered(server, url, _sse(server, url), options, None, tried) as connection:
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
    server: HttpServer, url: str, streams: Any, options: dict[str, Any], log: _StatusLog | None, tried: Tried
) -> AsyncIterator[Connection]:
    """Enter an SDK client over an HTTP transport (`log` only for Streamable HTTP), translating failures."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(Client(streams, **options))
        except BaseException as exc:
            raise _translate(server, url, leaf_error(exc), log, tried) from exc
        yield Connection(server.id, client, "sse" if log is None else "streamable-http", url)


def _translate(server: HttpServer, url: str, exc: BaseException, log: _StatusLog | None, tried: Tried) -> BaseException:
    """Record what `url` answered in `tried`; return what ends (or continues) the detection."""
    if isinstance(exc, httpx2.TransportError | OSError):
        tried.add(url, f"{type(exc).__name__} {exc}".rstrip() if isinstance(exc, httpx2.TransportError) else str(exc))
        return _Unreachable()
    if isinstance(exc, MCPError):
        failed = [status for status in (log.statuses if log else []) if status >= 400]
        status = failed[-1] if failed else None
        # The SDK stands in a generic error for a bare 404/405; one with a JSON-RPC body is a real answer
        # (a gateway saying the server id is unknown, say), not a sign of a legacy server.
        bare = exc.error.message in ("Not Found", "Server returned an error response")
        if status in (404, 405) and bare:
            tried.add(url, f"HTTP {status}, no Streamable HTTP here")
            return _NotStreamable()
        tried.add(url, f"HTTP {status}: {exc.error.message}" if status else exc.error.message)
        if status in (401, 403):
            detail = None if bare else exc.error.message
            said = f": {detail}" if detail else ""
            # 401: no credentials, or ones the server does not take; 403: these may not (RFC 9110 15.5.2/4).
            what = "requires authorization" if status == 401 else "refused this caller"
            needs = f"server {server.id!r} at {shown_url(url)} {what} (HTTP {status}{said})"
            return RefusedError(_named(needs, tried), status, detail)
        answered = f" (HTTP {status})" if status else ""
        refused = f"server {server.id!r} at {shown_url(url)} refused the MCP handshake: {exc.error.message}{answered}"
        return ProtocolError(_named(refused, tried))
    if isinstance(exc, httpx2.HTTPStatusError):
        tried.add(url, f"HTTP {exc.response.status_code}")
        return ProtocolError(f"server {server.id!r} answered, but not as an MCP server: {tried}")
    return exc


def _named(message: str, tried: Tried) -> str:
    """`message` about the last URL tried, followed by what the URLs tried before it answered."""
    return f"{message} (tried before: {tried.before()})" if len(tried) > 1 else message


@contextlib.asynccontextmanager
async def _connect_stdio(
    server: StdioServer | HttpServer, argv: tuple[str, ...], options: dict[str, Any], tried: Tried | None = None
) -> AsyncIterator[Connection]:
    """Spawn `argv` and open a session over its stdio; `tried`: the endpoints that did not answer before."""
    async with _over_process(server, StdioProcess.for_entry(server, argv), argv, options, tried) as connection:
        yield connection


@contextlib.asynccontextmanager
async def _connect_container(
    server: DockerServer, project: str | None, options: dict[str, Any]
) -> AsyncIterator[Connection]:
    """A stdio docker entry: a container of its own for this session (labelled with this process as its owner),
    attached to before it starts, removed when the session ends; DeployError (exit 3) when the engine does not
    answer, the image is missing or the container cannot start."""
    from mcpfleet.deploy.docker.attach import ContainerProcess, owner_id  # the Docker client only when needed
    from mcpfleet.deploy.docker.engine import Engine
    from mcpfleet.deploy.docker.spec import project_name

    name = project_name(project)
    async with Engine() as engine:
        process = ContainerProcess(engine, server, project=name, owner=owner_id())
        async with _over_process(server, process, process.argv, options) as connection:
            yield connection


@contextlib.asynccontextmanager
async def _over_process(
    server: StdioServer | HttpServer | DockerServer,
    process: StdioProcess | ContainerProcess,
    argv: tuple[str, ...],
    options: dict[str, Any],
    tried: Tried | None = None,
) -> AsyncIterator[Connection]:
    """Start `process` (not yet entered) and open a session over its stdio, within `timeouts.startup`."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(process)
        except ServerStartError as exc:
            raise _after_endpoints(exc, tried) from None
        # A cancel scope cannot wrap Client.__aenter__ (it opens a task group that outlives the scope), so a
        # slow handshake is ended by stopping the child, which fails the handshake at once.
        watchdog = process.kill_after(server.timeouts.startup)
        try:
            client = await stack.enter_async_context(Client(process_transport(process), **options))
        except BaseException as exc:
            if process.timed_out:
                reason = f"did not finish the MCP handshake within {server.timeouts.startup:g} s"
                failure: BaseException = ServerStartError(server.id, argv, reason, process.stderr_tail())
                raise _after_endpoints(failure, tried) from None
            failure = await _start_failure(server.id, argv, process, leaf_error(exc))
            raise _after_endpoints(failure, tried) from exc
        finally:
            watchdog.cancel()
        yield Connection(server.id, client, "stdio", " ".join(argv))


def _after_endpoints(exc: BaseException, tried: Tried | None) -> BaseException:
    """A start failure of an http entry's `command` also says what its endpoints answered first."""
    if not tried or not isinstance(exc, ServerStartError):
        return exc
    reason = f"{exc.reason}, after no endpoint answered ({tried})"
    return ServerStartError(exc.server_id, exc.argv, reason, exc.stderr_tail)


async def _start_failure(
    server_id: str, argv: tuple[str, ...], process: StdioProcess | ContainerProcess, exc: BaseException
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


async def replicas_entry(server: DockerServer, project: str | None) -> HttpServer:
    """An http entry whose endpoints are the running replicas of the docker entry's present spec, shuffled;
    ServerUnreachableError (exit 3) when there is none, DeployError (exit 3) when the engine does not answer."""
    from mcpfleet.deploy.docker.deployer import DockerDeployer  # the Docker client only when one is needed
    from mcpfleet.deploy.docker.engine import Engine
    from mcpfleet.deploy.docker.spec import project_name

    name = project_name(project)
    async with Engine() as engine:
        replicas = await DockerDeployer(engine, name).replicas(server)
    ready = [r.address for r in replicas if r.running and r.current and r.address]
    if not ready:
        older = sum(r.running and not r.current for r in replicas)
        found = f"; {older} run an older spec of the entry" if older else ""
        raise ServerUnreachableError(
            f"server {server.id!r} has no running replica in project {name!r}{found}: run `mcpfleet deploy"
            f" {server.id}` first"
        )
    return _replicas(server, ready)


def _replicas(server: DockerServer | KubernetesServer, urls: list[str]) -> HttpServer:
    """An http entry whose endpoints are `urls` (the replicas a backend runs), shuffled so calls spread."""
    random.shuffle(urls)
    return HttpServer.model_validate(
        {
            "id": server.id,
            "endpoints": urls,
            "path": server.path,
            "transport": "streamable-http",
            "timeouts": server.timeouts,
            "description": server.description,
        }
    )


async def pods_entry(server: KubernetesServer, project: str | None) -> HttpServer:
    """An http entry whose endpoints are the ready pods of a kubernetes entry (their addresses from the API:
    reachable from inside the cluster, or wherever pod addresses route), shuffled. ServerUnreachableError
    (exit 3) when none is ready: deploy it, or go through a gateway (`--gateway`)."""
    from mcpfleet.deploy.docker.spec import project_name
    from mcpfleet.deploy.kubernetes.api import Cluster
    from mcpfleet.deploy.kubernetes.deployer import KubernetesDeployer

    name = project_name(project)
    cluster = Cluster()
    try:
        pods = await KubernetesDeployer(cluster, name).status(server.id, server)
    finally:
        await cluster.aclose()
    ready = [p.address for p in pods if p.state == "running" and p.address]
    if not ready:
        raise ServerUnreachableError(
            f"server {server.id!r} has no ready pod in project {name!r}: run `mcpfleet deploy {server.id}`, or reach"
            " it through a gateway (--gateway URL)"
        )
    return _replicas(server, ready)


def http_entry(
    server_id: str,
    base_url: str,
    *,
    path: str = "/mcp",
    sse_path: str = "/sse",
    headers: dict[str, str] | None = None,
) -> HttpServer:
    """An ad-hoc http entry, e.g. for a server behind a gateway at `<gateway>/<server-id>`; `headers` go
    with every request (the gateway's credential)."""
    entry = {"id": server_id, "endpoints": [base_url.rstrip("/")], "path": path, "sse_path": sse_path}
    return HttpServer.model_validate(entry | ({"headers": headers} if headers else {}))
