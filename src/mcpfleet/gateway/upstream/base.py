"""The one interface every upstream implements: how a server's runtime reaches the server.

Implementations: `HttpUpstream` (the Streamable HTTP passthrough to a server's replicas) and `RelayUpstream`
(the gateway as MCP transport: stdio processes, or bridged connections to HTTP and legacy SSE replicas); a
stdio server attached in a container is next. A runtime holds one to three of them and never asks which
kind it holds: a request outside any session goes to `open`, a request in a session to the upstream that
`holds` it.

Errors: an upstream raises `Unreachable` when nothing reached the server (the caller may try another
upstream: an http entry falls back to its `command`), and `GatewayError` for what the client is to see.
`ServerRuntime.handle` is the one place where `Unreachable` becomes the client's -32012 (502).
"""

from __future__ import annotations

from typing import Protocol

from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.session import Session


class Unreachable(Exception):
    """No replica accepted a connection, or none serves (nothing was sent): the caller may fall back."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Upstream(Protocol):
    @property
    def retired(self) -> bool:
        """Closed: its sessions are gone (their ids get 404)."""
        ...

    async def open(self, exchange: Exchange, key: str | None) -> None:
        """Serve a request on the server's MCP path that belongs to no session yet: an `initialize` (which
        opens one, and answers with the gateway's session id), a 2026-07-28 request, or anything else the
        server answers on its own. `key`: the request's routing key for the balancer, None if unused."""
        ...

    def holds(self, session: Session) -> bool:
        """Whether `session` is served by this upstream (and still can be)."""
        ...

    async def serve(self, exchange: Exchange, token: str, session: Session) -> None:
        """Serve a request in `session` (POST, GET stream, DELETE); `token`: its gateway session id."""
        ...

    def drain(self) -> None:
        """Open nothing new from now on; sessions held go on until they end."""
        ...

    async def wait_drained(self) -> None:
        """Return once nothing is held or in flight; the caller bounds the wait (`timeouts.drain`)."""
        ...

    async def aclose(self) -> None:
        """End what is left: sessions, processes, connections."""
        ...
