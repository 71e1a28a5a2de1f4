"""Whether a connection that outlives its handshake may still act with what the handshake granted.

A Streamable HTTP client is authenticated and authorized on every request, so a reload that revokes an API
key or narrows `gateway.access`, and a JWT's `exp`, apply from its next request. A WebSocket is one
handshake for the whole connection; a legacy SSE session's POSTs are requests of their own (checked like
any), but the tools its stream's opener was granted filter them. Without a check here such connections
would keep the rights of their handshake until they close (at most `gateway.limits.max_stream_duration`).

`Handshake` holds what the handshake decided (the caller's `Identity` and `Grant` for one server) and, before
each message the client sends, asks whether that still holds:

- the token's `exp` (plus `jwt.leeway`, as validation allows) has passed: the connection is over;
- the settings changed since the last check (the gateway's reload generation moved): `lapsed` says whether
  the caller would be let in now (`GatewayAuthenticator.accepts`) and granted the same (`Access.grant`).

A lapsed WebSocket is closed with 1008 (policy violation) and a reason naming the setting; the client
connects again and is judged by the settings in force (a narrower grant means a tools list it must read
again, so the connection is ended rather than re-granted in place). The cost per message is one integer
comparison, and one clock read for a JWT caller; the full check runs at the first message and once per
reload per connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mcpfleet.gateway.asgi import Message, Receive, Send
from mcpfleet.gateway.identity import Identity
from mcpfleet.gateway.policy.access import Grant

log = logging.getLogger("mcpfleet.gateway")

POLICY_VIOLATION = 1008  # RFC 6455 section 7.4.1
REASON_BYTES = 123  # RFC 6455 section 5.5: a close frame's reason fits in 123 bytes

# (identity, grant, server id) -> why the connection may no longer act, or None while it may.
Lapsed = Callable[[Identity, Grant, str], str | None]


class Handshake:
    """One connection's handshake decision, checked again before each client message (see the module)."""

    def __init__(
        self,
        identity: Identity,
        grant: Grant,
        server_id: str,
        generation: Callable[[], int],
        lapsed: Lapsed,
        leeway: float = 0.0,
    ) -> None:
        self.identity = identity
        self.grant = grant
        self.server_id = server_id
        self.generation = generation
        self.lapsed = lapsed
        # None: the first message runs the full check, since a reload may have landed between the grant
        # and this object (authentication and the handshake await); then once per reload.
        self._checked: int | None = None
        exp = identity.claims.get("exp") if identity.kind == "jwt" else None
        self.expires = float(exp) + leeway if isinstance(exp, int | float) else None

    def revoked(self) -> str | None:
        """Why the connection may no longer act (None: it may). The full check runs when the settings
        changed since the last call."""
        if self.expires is not None and time.time() >= self.expires:
            return "the token expired: connect again with a new one"
        generation = self.generation()
        if generation == self._checked:
            return None
        self._checked = generation
        return self.lapsed(self.identity, self.grant, self.server_id)

    def websocket(self, receive: Receive, send: Send) -> Receive:
        """`receive` for a WebSocket: a client message that arrives once the handshake's grant was revoked is not passed
        on; the socket is closed (1008, the reason) and the connection ends as if the client had left."""

        async def checked() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            reason = self.revoked()
            if reason is None:
                return message
            log.info("server %r: WebSocket of %s closed: %s", self.server_id, self.identity.principal, reason)
            shown = reason.encode()[:REASON_BYTES].decode(errors="ignore")
            await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": shown})
            return {"type": "websocket.disconnect", "code": POLICY_VIOLATION}

        return checked
