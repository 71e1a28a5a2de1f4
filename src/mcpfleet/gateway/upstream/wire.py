"""A lean HTTP/1.1 client for the gateway's passthrough: keep-alive connections per replica, bytes out
in one write, the response head parsed by httptools, the body handed on chunk by chunk as it arrives.

The general clients (httpx2, which the SDK uses) cost several times more CPU per request than the rest of
the gateway together; a proxy that forwards every call needs only this much of HTTP. Request and
response bodies are never buffered whole: the response body is a queue with flow control (reading pauses
while the client is slower than the replica). Errors are our own: `ConnectFailed` when nothing was sent
(the caller may try another replica), `UpstreamClosed` when the replica went away mid-exchange.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]
HIGH_WATER = 64  # body chunks queued before reading pauses
IDLE_LIMIT = 64  # idle keep-alive connections kept per replica


class ConnectFailed(Exception):
    """No connection could be made: nothing reached the replica."""


class OutOfDescriptors(Exception):
    """The gateway process has no file descriptor left for a new connection."""


class UpstreamClosed(Exception):
    """The replica closed the connection before the response ended."""


@dataclass
class Response:
    status: int
    headers: Headers
    _connection: _Connection = field(repr=False)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def body(self, idle: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives (de-chunked). Ends at the end of the message; TimeoutError when the
        replica stays silent for `idle` seconds."""
        connection = self._connection
        while True:
            chunk = await (connection.next_chunk() if idle is None else asyncio.wait_for(connection.next_chunk(), idle))
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        self._connection.release()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[tuple[int, Headers]] | None = None
        self._headers: Headers = []
        self._chunks: collections.deque[bytes | None] = collections.deque()
        self._readable: asyncio.Event = asyncio.Event()
        self._complete = False
        self._keep_alive = False
        self._paused = False
        self.closed = False
        self._bodiless = False
        self._error: Exception | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"invalid HTTP from the replica: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete:
            if (
                exc is None
                and self._head is not None
                and self._head.done()
                and not self._head.exception()
                and (self._delimited_by_close())
            ):
                self.on_message_complete()  # a body delimited by the end of the connection
            else:
                self._fail(UpstreamClosed("the replica closed the connection" + (f": {exc}" if exc else "")))
        self._pool.forget(self)

    def _delimited_by_close(self) -> bool:
        """The body ends where the connection does (RFC 9112 6.3): it has no length and is not chunked. A
        chunked or sized body cut short is a replica that went away (a killed replica mid-stream, issue 12),
        not a complete answer."""
        for name, value in self._headers:
            if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
                return False
        return True

    # --- httptools callbacks ----------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_result((self._parser.get_status_code(), self._headers))
        if self._bodiless:  # the answer to HEAD: whatever Content-Length says, no body follows
            self.on_message_complete()
            self._keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._readable.set()
        if len(self._chunks) > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._chunks.append(None)
        self._readable.set()

    # --- use --------------------------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._readable.set()

    async def exchange(self, method: str, head: bytes, body: bytes, first_byte: float | None) -> Response:
        """Send one request and wait for the response head (TimeoutError after `first_byte` seconds)."""
        assert self._transport is not None
        self._head = asyncio.get_running_loop().create_future()
        self._headers = []
        self._chunks.clear()
        self._complete = False
        self._bodiless = method == "HEAD"
        self._error = None
        try:
            self._transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                self._transport.write(body)
            status, headers = await asyncio.wait_for(asyncio.shield(self._head), first_byte)
        except BaseException:
            self.close()  # a half-used connection is never reused
            raise
        return Response(status, headers, self)

    async def next_chunk(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if self._paused and len(self._chunks) < HIGH_WATER // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    def release(self) -> None:
        """Back to the pool when the message ended cleanly and both sides keep the connection, else closed."""
        if self._complete and self._keep_alive and not self.closed and self._error is None:
            self._head = None
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def basic_credentials(user: str | None, password: str | None) -> bytes | None:
    """The `Authorization` value for a URL's userinfo (RFC 3986 3.2.1): `Basic ` and the base64 of
    `user:password` (RFC 7617 2), both percent-decoded and sent as UTF-8; None when the URL names neither.

    The rule httpx applies to a URL with userinfo, so the CLI and the gateway send the same credentials."""
    if not user and not password:
        return None
    pair = unquote(user or "") + ":" + unquote(password or "")
    return b"Basic " + base64.b64encode(pair.encode())


class Pool:
    """Keep-alive connections to one replica (`http://[user[:password]@]host:port`, with an optional path
    prefix). A user and password in the URL go out as HTTP Basic credentials (RFC 7617) on every request,
    health probes included, in place of any `Authorization` the caller passes: the entry's URL wins."""

    def __init__(self, base_url: str, connect_timeout: float) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.authority = parts.netloc.rsplit("@", 1)[-1].encode()
        self.authorization = basic_credentials(parts.username, parts.password)
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, first_byte: float | None
    ) -> Response:
        """Send one request; ConnectFailed if no connection could be had (nothing was sent)."""
        head = self._head(method, self.prefix + target, headers, body)
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await connection.exchange(method, head, body, first_byte)
            except UpstreamClosed:
                continue  # a kept-alive connection the replica had closed meanwhile: use another
        connection = await self._connect()
        return await connection.exchange(method, head, body, first_byte)

    def _head(self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> bytes:
        """The request line and header block; `headers` has lowercase names and no `host`."""
        lines = [f"{method} {target} HTTP/1.1\r\n".encode(), b"host: " + self.authority + b"\r\n"]
        if self.authorization is not None:
            lines.append(b"authorization: " + self.authorization + b"\r\n")
            lines.extend(name + b": " + value + b"\r\n" for name, value in headers if name != b"authorization")
        else:
            lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl = self.scheme == "https" or None
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=ssl),
                self.connect_timeout,
            )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # The gateway's own limit, not the replica's fault: no ejection, no lost session.
                raise OutOfDescriptors(exc.strerror or str(exc)) from None
            raise ConnectFailed(exc.strerror or str(exc)) from None
        self._all.add(connection)
        return connection

    def put_back(self, connection: _Connection) -> None:
        if len(self._idle) < IDLE_LIMIT:
            self._idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)

    def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
