"""Request policy: plain ASGI layers the gateway wraps once around its router, each in a file of its own.

Outermost first, as a request meets them:

    Correlation(Cors(ErrorBoundary(TrustedProxies(HostOriginGuard(BodyLimit(Authentication(router)))))))

- `Correlation` (`context.py`, imported from there: it reads `gateway/logs.py` and `gateway/tracing.py`):
  the request id (`X-Request-Id`, taken or made, echoed), the request's fields for every log line, and with
  tracing on the request's SERVER span. It refuses nothing.
- `Cors` (`cors.py`): answers the preflights of allowed origins and adds the CORS headers to every answer
  for them, the gateway's errors included; it checks Host and Origin itself, so a refusal gets none.
- `ErrorBoundary` (`asgi.py`): a `GatewayError` raised inside becomes the one JSON-RPC error answer, counted
  in the metrics; a refused WebSocket handshake gets the same status and body.
- `TrustedProxies` (`proxies.py`): from a peer in `gateway.trusted_proxies` only, the client's address and
  scheme from `Forwarded` / `X-Forwarded-For` / `-Proto`, before anything reads them (the peer is kept as
  `PEER`). It never refuses.
- `HostOriginGuard` (`hosts.py`): DNS-rebinding protection, 421 for a Host, 403 for an Origin.
- `BodyLimit` (`limits.py`): `gateway.max_message_bytes`, 413 on a declared length before any byte is read.
- `Authentication` (`auth.py`): the `Credentials` in force (`credentials.py`: API keys, and JWTs checked by
  `tokens.py`); with none, every caller is `ANONYMOUS`. The router then applies `access.py` (`gateway.access`)
  once it knows the server id, and leaves the caller's `Grant` in the scope for the tool filter; then
  `quotas.py` (`gateway.limits`: rates per caller and per server, session slots per caller), 429. A
  WebSocket, judged once at its handshake, is judged again before each message by `handshake.py` (a token
  that expired, a reload that revoked its key or changed its grant: closed with 1008).

Layers refuse by raising `GatewayError`, never by answering, so every refusal goes out in one shape and is
counted once. Each reads the settings in force through a callable the gateway gives it (a reload swaps the
policy and the limit), once per request, all before the first await (the authenticator's), so one
request never sees two policies. The path escape check (`paths.py`) is applied by the router, which routes on the
segments it returns.
"""

from mcpfleet.gateway.policy.access import GRANT, Access, Grant
from mcpfleet.gateway.policy.auth import (
    ANONYMOUS,
    IDENTITY,
    Authentication,
    Authenticator,
    Credentials,
    Identity,
    forbidden,
    session_owner,
    unauthorized,
)
from mcpfleet.gateway.policy.cors import Cors
from mcpfleet.gateway.policy.credentials import GatewayAuthenticator, credentials, open_door
from mcpfleet.gateway.policy.hosts import HostOriginGuard, Policy, single_header
from mcpfleet.gateway.policy.limits import BodyLimit
from mcpfleet.gateway.policy.paths import check_path
from mcpfleet.gateway.policy.proxies import PEER, TrustedProxies
from mcpfleet.gateway.policy.quotas import Quotas, may_open_session
from mcpfleet.gateway.policy.tokens import TokenValidator

__all__ = [
    "ANONYMOUS",
    "GRANT",
    "IDENTITY",
    "PEER",
    "Access",
    "Authentication",
    "Authenticator",
    "BodyLimit",
    "Cors",
    "Credentials",
    "GatewayAuthenticator",
    "Grant",
    "HostOriginGuard",
    "Identity",
    "Policy",
    "Quotas",
    "TokenValidator",
    "TrustedProxies",
    "check_path",
    "credentials",
    "forbidden",
    "may_open_session",
    "open_door",
    "session_owner",
    "single_header",
    "unauthorized",
]
