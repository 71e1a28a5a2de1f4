"""Authentication: the seat where a request's credentials are checked before it is routed.

An `Authenticator` is given the request's ASGI scope (its headers: `Authorization`, a cookie, a client
certificate's fields in a server's extension) and returns the caller's `Identity`, or raises a 401 or 403
`GatewayError` carrying a `WWW-Authenticate` challenge (`unauthorized`, `forbidden`). The identity is left
in the scope under `IDENTITY` for what runs inside. WebSocket handshakes are authenticated like HTTP
requests, and refused with the same status, body and challenge.

No authenticator is configured by default, and then the gateway leaves this layer out of its stack: no
cost at all. Probes (`/healthz`, `/readyz`) are never authenticated: a load balancer or a kubelet has no
credentials. A CORS preflight from an allowed origin is answered before this layer (a browser sends no
credentials with it). Everything else is authenticated: the MCP routes, `/`, `/servers`, `/metrics` and
`/admin/reload` (which also answers loopback clients only).

Not yet (issue 12): the gateway has no authenticator of its own to configure, and a request that passes
goes upstream with its headers, `Authorization` included: an authenticator that consumes a gateway-only
credential must not be plugged in before that header is stripped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, Receive, Scope, Send

IDENTITY = "mcpfleet.identity"  # the scope key the layer leaves the caller's identity under
PROBES = frozenset({"/healthz", "/readyz"})


@dataclass(frozen=True)
class Identity:
    """Who is calling: `subject` as the credential names it (a token's `sub`, a user name, a client id)."""

    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)


class Authenticator(Protocol):
    async def authenticate(self, scope: Scope) -> Identity:
        """The caller of this request or handshake; raises `unauthorized(...)` (no or bad credentials) or
        `forbidden(...)` (good credentials without the right to call). Called once per request."""
        ...


def unauthorized(message: str, challenge: str = "Bearer") -> GatewayError:
    """401: the request carries no credentials or bad ones; `challenge` says how to authenticate (RFC 9110)."""
    return GatewayError(401, -32600, message, headers={"WWW-Authenticate": challenge})


def forbidden(message: str, challenge: str = 'Bearer error="insufficient_scope"') -> GatewayError:
    """403: the credentials are good but do not allow this call (RFC 6750 `insufficient_scope`)."""
    return GatewayError(403, -32600, message, headers={"WWW-Authenticate": challenge})


class Authentication:
    def __init__(self, app: App, authenticator: Authenticator, *, open_paths: frozenset[str] = PROBES) -> None:
        self.app = app
        self.authenticator = authenticator
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in self.open_paths:
            scope[IDENTITY] = await self.authenticator.authenticate(scope)
        await self.app(scope, receive, send)
