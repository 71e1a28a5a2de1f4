"""Streamable HTTP (and any other path) proxied to the replicas of an `http` server, byte for byte.

Bodies stream in both directions without buffering; `text/event-stream` responses go out event by event
as the upstream writes them, with `X-Accel-Buffering: no`, and race the client's disconnect. The only
headers touched are `Host` (set for the replica), hop-by-hop headers, `Origin` (checked at the gateway,
not passed on) and `Mcp-Session-Id` (the gateway's id outside, the upstream's inside).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Headers, respond_error, send_chunk, stream_body
from mcpfleet.gateway.balancer import Balancer
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.protocol import NOT_FORWARDED_DOWN, NOT_FORWARDED_UP, SESSION_HEADER
from mcpfleet.gateway.session import HttpSession, SessionTable
from mcpfleet.registry.model import HttpServer
from mcpfleet.registry.render import mask_url

_STANDING_STREAM = frozenset({"GET"})


class Unreachable(Exception):
    """No replica accepted a connection (nothing was sent): the caller may fall back to stdio."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class HttpUpstream:
    """The replicas of one `http` server, each with its own keep-alive connection pool."""

    def __init__(self, server: HttpServer, balancer: Balancer) -> None:
        self.server = server
        self.balancer = balancer
        self._clients: dict[str, httpx2.AsyncClient] = {}
        self.retired = False

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, replica: str) -> httpx2.AsyncClient:
        client = self._clients.get(replica)
        if client is None:
            timeouts = self.server.timeouts
            client = httpx2.AsyncClient(
                timeout=httpx2.Timeout(timeouts.first_byte, connect=timeouts.connect),
                limits=httpx2.Limits(max_connections=512, max_keepalive_connections=64),
                headers=dict(self.server.headers),
            )
            self._clients[replica] = client
        return client

    async def forward(
        self,
        exchange: Exchange,
        path: str,
        sessions: SessionTable,
        session_token: str | None,
        session: HttpSession | None,
        *,
        initialize: bool = False,
    ) -> None:
        """Send the request upstream and stream the answer back. Raises Unreachable when nothing was sent.

        New work goes to the balancer's pick; when nothing could be sent there (connection refused or not
        established in time) the next replica is tried, since the server cannot have seen the request.
        Session traffic stays on its replica; if that replica is gone, the session is too (404).
        """
        if session is not None:
            pinned = self.balancer.replica(session.replica)
            candidates = [pinned] if pinned is not None else []
        else:
            candidates = self.balancer.candidates()
        failures: list[str] = []
        for replica in candidates:
            started = time.monotonic()
            self.balancer.started(replica)
            try:
                response = await self._send(exchange, replica.url, path, session)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                self.balancer.finished(replica, time.monotonic() - started)
                self.balancer.failed(replica)
                failures.append(f"{mask_url(replica.url)}: {_connect_failure(exc, self.server.timeouts.connect)}")
                continue
            except BaseException:
                self.balancer.finished(replica, time.monotonic() - started)
                raise
            try:
                await self._relay(exchange, response, replica.url, sessions, session_token, session, initialize)
            finally:
                self.balancer.finished(replica, time.monotonic() - started)
            self.balancer.succeeded(replica)
            return
        if session is not None and session_token is not None:
            sessions.drop(session_token)  # its replica is gone: the client initializes again elsewhere
            raise GatewayError.session_not_found()
        raise Unreachable("; ".join(failures))

    async def _send(self, exchange: Exchange, replica: str, path: str, session: HttpSession | None) -> httpx2.Response:
        headers = [(k, v) for k, v in exchange.scope["headers"] if k not in NOT_FORWARDED_UP]
        if session is not None:
            headers.append((SESSION_HEADER, session.upstream_id.encode()))
        client_host = exchange.scope.get("client")
        if client_host:
            headers.append((b"x-forwarded-for", str(client_host[0]).encode()))
        if host := exchange.header(b"host"):
            headers.append((b"x-forwarded-host", host.encode()))
        headers.append((b"x-forwarded-proto", str(exchange.scope.get("scheme", "http")).encode()))
        url = replica.rstrip("/") + path
        if exchange.query:
            url += "?" + exchange.query.decode("latin-1")
        client = self._client(replica)
        timeout = None if exchange.method in _STANDING_STREAM else httpx2.USE_CLIENT_DEFAULT
        request = client.build_request(
            exchange.method, url, headers=headers, content=exchange.body or None, timeout=timeout
        )
        try:
            return await client.send(request, stream=True)
        except httpx2.ReadTimeout:
            raise GatewayError.timeout(
                self.server.id, "response", self.server.timeouts.first_byte, "timeouts.first_byte"
            ) from None
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            raise
        except httpx2.TransportError as exc:
            raise GatewayError.unreachable(self.server.id, f"{replica}: {type(exc).__name__} {exc}") from None

    async def _relay(
        self,
        exchange: Exchange,
        response: httpx2.Response,
        replica: str,
        sessions: SessionTable,
        session_token: str | None,
        session: HttpSession | None,
        initialize: bool,
    ) -> None:
        try:
            headers: Headers = [(k, v) for k, v in response.headers.raw if k.lower() not in NOT_FORWARDED_DOWN]
            upstream_session = response.headers.get("mcp-session-id")
            ok = 200 <= response.status_code < 300
            if session is None and initialize and ok and upstream_session:
                token = sessions.issue(HttpSession(self.server.id, replica, upstream_session, self))
                headers.append((SESSION_HEADER, token.encode()))
            elif session is not None and session_token is not None:
                if upstream_session:
                    headers.append((SESSION_HEADER, session_token.encode()))
                if response.status_code == 404 or (exchange.method == "DELETE" and ok):
                    sessions.drop(session_token)
            streaming = response.headers.get("content-type", "").startswith("text/event-stream")
            if streaming and "x-accel-buffering" not in response.headers:
                headers.append((b"x-accel-buffering", b"no"))
            elif (length := response.headers.get("content-length")) is not None:
                headers.append((b"content-length", length.encode()))
            await exchange.send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            if streaming:
                # A client that goes away closes the upstream stream (a cancellation at 2026-07-28).
                await stream_body(exchange.receive, exchange.send, response.aiter_raw())
            else:
                async for chunk in response.aiter_raw():
                    await send_chunk(exchange.send, chunk)
                await send_chunk(exchange.send, b"", more=False)
        except httpx2.ReadTimeout:
            # The status line is already out: all that is left is to end the stream.
            await send_chunk(exchange.send, b"", more=False)
        except httpx2.TransportError:
            await send_chunk(exchange.send, b"", more=False)
        finally:
            await response.aclose()


def _connect_failure(exc: Exception, connect_timeout: float) -> str:
    if isinstance(exc, httpx2.ConnectTimeout):
        return f"no connection within {connect_timeout:g} s"
    return str(exc) or type(exc).__name__


async def answer_unreachable(exchange: Exchange, server_id: str, detail: str, request_id: Any = None) -> None:
    await respond_error(exchange.send, GatewayError.unreachable(server_id, detail), request_id)


def request_id_of(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) else None
