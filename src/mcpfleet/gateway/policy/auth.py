"""Authentication: the seat where a request's credentials are checked before it is routed.

An `Authenticator` is given the request's ASGI scope (its headers: `Authorization`, `X-API-Key`, a client
certificate's fields in a server's extension) and returns the caller's `Identity`, or raises a 401 or 403
`GatewayError` carrying a `WWW-Authenticate` challenge (`unauthorized`, `forbidden`). The identity is left
in the scope under `IDENTITY` for what runs inside (access rules, limits, logs, the audit line). WebSocket
handshakes are authenticated like HTTP requests, and refused with the same status, body and challenge.

The layer reads the `Credentials` in force through a callable (a reload swaps them); with none, every
caller is `ANONYMOUS` and nothing else happens. Probes (`/healthz`, `/readyz`) are never authenticated: a
load balancer or a kubelet has no credentials; nor are the OAuth protected-resource metadata documents
(`/.well-known/...`), which tell a client how to get credentials. `gateway.auth.open` opens `/metrics`, and
`/servers` with the status page `/`, to callers without credentials; a credential sent there is checked
(its caller sees its own view; a wrong one is a 401). A CORS preflight from an allowed origin is answered
before this layer (a browser sends no credentials with it). Everything else is authenticated: the MCP routes, `/`,
`/servers`, `/metrics` and `/admin/reload` (which also answers loopback clients only).

A credential the gateway checked is the gateway's: its header is taken out of the request before anything
is forwarded, so a backend never sees a caller's gateway key or token (RFC 9700 section 2.7 and the MCP
authorization spec's "token passthrough" rule). Per-server upstream credentials come from the entry's
`headers` and `secret_env`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, Receive, Scope, Send
from mcpfleet.gateway.identity import ANONYMOUS, IDENTITY, Identity, session_owner

CONSUMED = "mcpfleet.consumed"  # set when the layer took the caller's credential out of the request
__all__ = [
    "ANONYMOUS",
    "CONSUMED",
    "CREDENTIAL_HEADERS",
    "IDENTITY",
    "METADATA_PREFIX",
    "PROBES",
    "Authentication",
    "Authenticator",
    "Credentials",
    "Identity",
    "forbidden",
    "session_owner",
    "unauthorized",
]

PROBES = frozenset({"/healthz", "/readyz"})
METADATA_PREFIX = "/.well-known/"  # RFC 9728 / RFC 8414 documents: how to get credentials, so never behind them
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})


class Authenticator(Protocol):
    async def authenticate(self, scope: Scope) -> Identity:
        """The caller of this request or handshake; raises `unauthorized(...)` (no or bad credentials) or
        `forbidden(...)` (good credentials without the right to call). Called once per request."""
        ...


@dataclass(frozen=True)
class Credentials:
    """The authentication in force: who checks, and which paths need no credentials besides the probes.
    `consumes`: the checked credential headers are removed from the request (the gateway's own
    authenticators); a custom one plugged in by code keeps them."""

    authenticator: Authenticator
    open_paths: frozenset[str] = PROBES
    consumes: bool = True


def unauthorized(message: str, challenge: str = "Bearer") -> GatewayError:
    """401: the request carries no credentials or bad ones; `challenge` says how to authenticate (RFC 9110)."""
    return GatewayError(401, -32600, message, headers={"WWW-Authenticate": challenge})


def forbidden(message: str, challenge: str = 'Bearer error="insufficient_scope"') -> GatewayError:
    """403: the credentials are good but do not allow this call (RFC 6750 `insufficient_scope`)."""
    return GatewayError(403, -32600, message, headers={"WWW-Authenticate": challenge})


class Authentication:
    def __init__(self, app: App, credentials: Callable[[], Credentials | None]) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            credentials = self.credentials()
            path = scope["path"]
            if (
                credentials is None
                or path in PROBES
                or path.startswith(METADATA_PREFIX)
                # An open route (`auth.open`) asks for nothing, but a credential sent there is checked: its
                # caller gets its own view of `/` and `/servers`, and a wrong one its 401, not silence.
                or (path in credentials.open_paths and not _presents_credential(scope))
            ):
                scope[IDENTITY] = ANONYMOUS
            else:
                scope[IDENTITY] = await credentials.authenticator.authenticate(scope)
                if credentials.consumes:
                    scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in CREDENTIAL_HEADERS]
                    scope[CONSUMED] = True
        await self.app(scope, receive, send)


def _presents_credential(scope: Scope) -> bool:
    return any(name in CREDENTIAL_HEADERS for name, _ in scope["headers"])
