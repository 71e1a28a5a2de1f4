"""Message backends: one connection to a server that carries whole JSON-RPC messages as bytes.

The relay (relay.py) routes messages between clients and a backend without caring which kind it is:

- `ProcessBackend`: a supervised stdio process, local or in a container (`ProcessBackend.of`); lines go
  through untouched, up to `gateway.max_message_bytes`.
- `TransportBackend`: a Streamable HTTP server reached through the official SDK's client transport, for
  clients whose transport the server does not speak (a WebSocket or legacy SSE client). Messages are parsed
  and serialized again by the SDK on this path.
- `SseBackend`: a legacy HTTP+SSE server (the 2024-11-05 transport), for every client transport. The
  gateway's own client: the SDK's `sse_client` holds each event to 1 MiB, a limit it does not let callers
  change, and an event over it ends the whole connection. Messages pass as the server wrote them.

Both HTTP backends send the entry's `headers` and the `X-Forwarded-For`/`-Host`/`-Proto` of the client
connection that opened them (none for a connection that several clients share), and nothing else of the
client's. Both hold the server's messages to `gateway.max_message_bytes`: an answer over it reaches the
client as a JSON-RPC error naming the setting (`protocol.TOO_LARGE`) and the connection goes on; any other
message over it is dropped and logged. A transport error fails the requests it concerns, not the connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Scope, header
from mcpfleet.gateway.oauth import refused_credential
from mcpfleet.gateway.protocol import (
    SSE_FRAMING,
    TOO_LARGE,
    EventMeter,
    Oversized,
    answered_request,
    error_response,
    events,
    forwarded_for,
    parse_message,
    single_request,
    too_large,
    too_large_event,
)
from mcpfleet.masking import shown_url
from mcpfleet.process import StdioProcess
from mcpfleet.registry.model import Endpoint, HttpServer, StdioServer

if TYPE_CHECKING:
    from mcpfleet.deploy.docker.attach import ContainerProcess

log = logging.getLogger("mcpfleet.gateway.backend")

UNDELIVERED = -32012  # a message the server did not take (the code of an unreachable upstream)

# Who a bridged connection is being opened for: the X-Forwarded-* of the client whose session opens it, and
# its routing key (for `consistent_hash`). Backends are made by a factory that takes no arguments, deep in a
# pool, so this travels in context, set only around opening a session of one client (`opening_for`); a
# connection that several clients share (2026-07-28 requests to a legacy SSE server) is opened outside it
# and carries none.
_OPENING_FOR: ContextVar[tuple[tuple[bytes, bytes], ...]] = ContextVar("opening_for", default=())
_OPENING_KEY: ContextVar[str | None] = ContextVar("opening_key", default=None)


@contextlib.contextmanager
def opening_for(scope: Scope, key: str | None) -> Iterator[None]:
    """Within this block, bridged connections are opened for the client of `scope`, balanced by `key`."""
    client, host, scheme = scope.get("client"), header(scope, b"host"), scope.get("scheme", "http")
    token = _OPENING_FOR.set(tuple(forwarded_for(client, host, scheme)))
    key_token = _OPENING_KEY.set(key)
    try:
        yield
    finally:
        _OPENING_KEY.reset(key_token)
        _OPENING_FOR.reset(token)


def opened_for() -> tuple[tuple[tuple[bytes, bytes], ...], str | None]:
    """The X-Forwarded-* headers and routing key of the client a connection is being opened for."""
    return _OPENING_FOR.get(), _OPENING_KEY.get()


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

    @property
    def replica(self) -> str | None:
        """The base URL of the HTTP replica a bridged connection reaches; None for a process."""
        ...


class ProcessBackend:
    """A stdio process. A line it writes over `max_message_bytes` is skipped; `receive` raises
    `MessageTooLarge` for it, and the relay answers the request it names with an error."""

    replica = None

    def __init__(self, server: StdioServer | HttpServer, argv: tuple[str, ...], *, max_message_bytes: int) -> None:
        self.process: StdioProcess | ContainerProcess = StdioProcess.for_entry(server, argv, max_line=max_message_bytes)

    @classmethod
    def of(cls, process: StdioProcess | ContainerProcess) -> ProcessBackend:
        """A backend over a process made elsewhere, not yet entered: a stdio container (`ContainerProcess`,
        whose `max_line` holds it to `max_message_bytes`)."""
        backend = cls.__new__(cls)
        backend.process = process
        return backend

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
    X-Forwarded-* of the client connection, replaced by the entry's `headers` where they name the same one.
    Bodies uncompressed, so that event boundaries can be seen."""
    headers = httpx2.Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in forwarded])
    headers.update(dict(server.headers))
    headers.setdefault("accept-encoding", "identity")
    return headers


def _bridge_client(
    server: HttpServer, headers: httpx2.Headers, transport: httpx2.AsyncBaseTransport | None = None
) -> httpx2.AsyncClient:
    """The HTTP client of one bridged connection: its headers, the entry's timeouts, and no proxy from the
    environment (straight to the server, like the passthrough: a proxy would bypass the size bound)."""
    timeouts = server.timeouts
    return httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(timeouts.first_byte, connect=timeouts.connect, read=timeouts.idle_stream),
        transport=transport,
        trust_env=False,
    )


class TransportBackend:
    """A Streamable HTTP server through the SDK's client transport, on an HTTP client whose transport holds
    what the server sends to the size limit (`_BoundedAnswers`)."""

    def __init__(
        self,
        server: HttpServer,
        endpoint: Endpoint,
        *,
        max_message_bytes: int,
        forwarded: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.server = server
        self.endpoint = endpoint
        self.replica: str | None = endpoint.url
        self.max_message_bytes = max_message_bytes
        self._headers = _client_headers(server, forwarded)
        self._stack = contextlib.AsyncExitStack()
        self._read: Any = None
        self._write: Any = None
        self.error = ""

    async def __aenter__(self) -> TransportBackend:
        http = await self._stack.enter_async_context(
            _bridge_client(self.server, self._headers, _BoundedAnswers(self.server.id, self.max_message_bytes))
        )
        transport = streamable_http_client(
            self.server.mcp_url(self.endpoint),
            http_client=http,
            # Never reached (events over the limit do not get this far); set so the SDK's own bound is ours.
            max_sse_event_size=self.max_message_bytes + SSE_FRAMING,
        )
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


class _BoundedAnswers(httpx2.AsyncBaseTransport):
    """Beneath the SDK's client: each answer held to `limit` before the SDK reads it. A JSON answer over it
    becomes a JSON-RPC error for the request (without reading it); in an event stream, an event over it is
    dropped as it arrives and, if it answered a request, an error event takes its place."""

    def __init__(self, server_id: str, limit: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._server_id = server_id
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        kind = response.headers.get("content-type", "")
        body = request.content if request.method == "POST" else b""
        if response.status_code in (401, 403) and (challenge := response.headers.get("www-authenticate")):
            # A bridged connection carries only the entry's headers: no client can answer this challenge.
            await response.aclose()
            whose = "the bridged connection, which carries only the entry's headers"
            message = refused_credential(self._server_id, response.status_code, challenge, whose)
            log.warning("%s", message)
            error = error_response(single_request(body)[1], UNDELIVERED, message)
            return httpx2.Response(502, headers=[(b"content-type", b"application/json")], content=error)
        if kind.startswith("text/event-stream"):
            stream = _BoundedEvents(response.stream, self._limit, body, self._server_id)
            return httpx2.Response(
                response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
            )
        if not kind.startswith("application/json"):
            return response
        length = response.headers.get("content-length", "")
        declared = int(length) if length.isdigit() else None
        if declared is not None and declared <= self._limit:
            return response
        chunks: list[bytes] = []
        size = 0
        try:
            if declared is None:  # one message, read whole by the SDK anyway: read it here, up to the limit
                async for chunk in response.stream:
                    size += len(chunk)
                    if size > self._limit:
                        break
                    chunks.append(chunk)
        finally:
            await response.aclose()
        if declared is None and size <= self._limit:
            headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"transfer-encoding"]
            return httpx2.Response(
                response.status_code, headers=headers, content=b"".join(chunks), extensions=response.extensions
            )
        _, request_id = single_request(body)
        log.warning("server %r: a JSON answer exceeds gateway.max_message_bytes (%d)", self._server_id, self._limit)
        error = error_response(request_id, TOO_LARGE, too_large(self._server_id, declared, self._limit))
        return httpx2.Response(200, headers=[(b"content-type", b"application/json")], content=error)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedEvents(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, request: bytes, server_id: str) -> None:
        self._inner = inner
        self._limit = limit
        self._request = request
        self._server_id = server_id

    async def __aiter__(self) -> AsyncIterator[bytes]:
        meter = EventMeter(self._limit + SSE_FRAMING)
        async for chunk in self._inner:
            for piece in meter.feed(chunk):
                if isinstance(piece, bytes):
                    yield piece
                else:
                    answers, request_id = _answers(self._server_id, piece, self._limit, self._request)
                    if answers:
                        yield too_large_event(request_id, self._server_id, piece.size, self._limit)
        if rest := meter.flush():
            yield rest

    async def aclose(self) -> None:
        await self._inner.aclose()


def _answers(server_id: str, event: Oversized, limit: int, request: bytes) -> tuple[bool, Any]:
    """Whether a message too large to pass answered a request (then the request gets an error), and its id."""
    answers, request_id = answered_request(event, request)
    log.warning(
        "server %r: a message of %d bytes exceeds gateway.max_message_bytes (%d); %s",
        server_id,
        event.size,
        limit,
        "its request gets an error" if answers else "it answers no request and is dropped",
    )
    return answers, request_id


class SseBackend:
    """A legacy HTTP+SSE server: GET its event stream, POST each message to the endpoint that the stream's
    first event names (on the same origin, as the SDK's client requires too). A task owned by the backend
    reads the stream; messages the server did not take are answered from here with an error."""

    def __init__(
        self,
        server: HttpServer,
        endpoint: Endpoint,
        *,
        max_message_bytes: int,
        forwarded: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.server = server
        self.replica: str | None = endpoint.url
        self.url = server.sse_url(endpoint)
        self.max_message_bytes = max_message_bytes
        self._headers = _client_headers(server, forwarded)
        self._stack = contextlib.AsyncExitStack()
        self._client: httpx2.AsyncClient | None = None
        self._post_url = ""
        self._incoming, self._messages = anyio.create_memory_object_stream[bytes](16)
        self.error = ""

    async def __aenter__(self) -> SseBackend:
        timeouts = self.server.timeouts
        try:
            client = self._client = await self._stack.enter_async_context(_bridge_client(self.server, self._headers))
            stream = client.stream(
                "GET", self.url, headers={"accept": "text/event-stream", "cache-control": "no-store"}
            )
            response = await self._stack.enter_async_context(stream)
            kind = response.headers.get("content-type", "")
            if response.status_code in (401, 403) and (challenge := response.headers.get("www-authenticate")):
                whose = "the bridged connection, which carries only the entry's headers"
                message = refused_credential(self.server.id, response.status_code, challenge, whose)
                raise GatewayError(502, -32603, message)
            if response.status_code != 200 or not kind.startswith("text/event-stream"):
                raise self._unreachable(
                    f"answered {response.status_code} ({kind or 'no content type'}), not an event stream"
                )
            tg = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(tg.cancel_scope.cancel)
            with anyio.fail_after(timeouts.first_byte):
                self._post_url = await tg.start(self._read, response)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._close()
            if isinstance(exc, httpx2.HTTPError):
                raise self._unreachable(f"{type(exc).__name__}: {exc}") from None
            if isinstance(exc, TimeoutError):
                raise GatewayError.timeout(
                    self.server.id, "endpoint event", timeouts.first_byte, "timeouts.first_byte"
                ) from None
            raise
        return self

    def _unreachable(self, detail: str) -> GatewayError:
        return GatewayError.unreachable(self.server.id, f"{shown_url(self.url)}: {detail}")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            await self._close()

    async def _close(self) -> None:
        try:
            await self._stack.aclose()  # the reader first (its task group), then the stream and the client
        finally:
            self._incoming.close()
            self._messages.close()

    async def _read(self, response: httpx2.Response, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        meter = EventMeter(self.max_message_bytes + SSE_FRAMING)
        endpoint = ""
        try:
            async with self._incoming:
                async for chunk in response.aiter_bytes():
                    for piece in meter.feed(chunk):
                        if isinstance(piece, Oversized):
                            limit = self.max_message_bytes
                            answers, request_id = _answers(self.server.id, piece, limit, b"")
                            if answers:
                                text = too_large(self.server.id, piece.size, limit)
                                await self._incoming.send(error_response(request_id, TOO_LARGE, text))
                            continue
                        for kind, data in events(piece):
                            if kind == "endpoint" and not endpoint:
                                endpoint = self._endpoint(data)
                                task_status.started(endpoint)
                            elif kind == "message":
                                await self._incoming.send(data)
                self.error = "the server ended its event stream"
        except httpx2.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("server %r: the event stream failed: %s", self.server.id, self.error)
        if not endpoint:
            raise self._unreachable(f"the event stream ended before naming its message endpoint ({self.error})")

    def _endpoint(self, data: bytes) -> str:
        url = urljoin(self.url, data.decode("utf-8", "replace").strip())
        here, there = urlsplit(self.url), urlsplit(url)
        if (here.scheme, here.netloc) != (there.scheme, there.netloc):
            raise self._unreachable(f"its endpoint event names another origin ({shown_url(url)})")
        return url

    async def send(self, data: bytes) -> None:
        assert self._client is not None
        try:
            response = await self._client.post(
                self._post_url, content=data, headers={"content-type": "application/json"}
            )
            failure = (
                None if response.status_code < 300 else f"it answered {response.status_code} {response.reason_phrase}"
            )
        except httpx2.HTTPError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        if failure is None:
            return
        log.warning("server %r did not take a message: %s", self.server.id, failure)
        message = parse_message(data)
        if message is not None and message.is_request:
            text = f"server {self.server.id!r} did not take the request: {failure}"
            await self._incoming.send(error_response(message.data.get("id"), UNDELIVERED, text))

    async def receive(self) -> bytes:
        return await self._messages.receive()

    async def settle(self) -> str:
        return self.error or "the connection to the server closed"
