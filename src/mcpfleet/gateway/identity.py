"""Who is calling: the `Identity` the authentication layer (policy/auth.py) leaves in a request's scope,
read by everything inward of it: access rules, limits, the tool filter, the audit line, log lines, and the
binding of session ids to their opener."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# An ASGI scope, as far as this module reads one (asgi.py imports this module: no import back).
Scope = Mapping[str, Any]

IDENTITY = "mcpfleet.identity"  # the scope key the authentication layer leaves the caller's identity under


@dataclass(frozen=True)
class Identity:
    """Who is calling. `subject`: as the credential names it (an API key's name, a token's `sub`).
    `kind`: `key`, `jwt`, `anonymous`, or what a custom authenticator says. `groups` and `scopes`: from the
    key's entry or the token's claims. `claims`: the validated token's claims (never the token itself).
    `credential`: an API key's SHA-256 digest (what the registry holds), so that a connection that outlives
    its handshake can be checked against the keys in force after a reload; empty for other kinds."""

    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "custom"
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    credential: bytes = field(default=b"", repr=False)

    @property
    def principal(self) -> str:
        """The one name logs, audit lines and limits use: `key:<name>`, `sub:<subject>`, `anonymous`."""
        if self.kind == "key":
            return f"key:{self.subject}"
        if self.kind == "anonymous":
            return "anonymous"
        return f"sub:{self.subject}"

    @property
    def principals(self) -> frozenset[str]:
        """Every name an `access` rule may use for this caller (section 9.16)."""
        names = {self.principal, *(f"group:{g}" for g in self.groups), *(f"scope:{s}" for s in self.scopes)}
        return frozenset(names)


ANONYMOUS = Identity("anonymous", kind="anonymous")


def principal_of(scope: Scope) -> str | None:
    """The principal of the caller a request carries, None before authentication ran."""
    identity: Identity | None = scope.get(IDENTITY)
    return None if identity is None else identity.principal


def session_owner(scope: Scope) -> str | None:
    """Who a session opened by this request belongs to: the caller's principal, None for an anonymous one.
    A session id is bound to it (session.py): another caller naming the id gets 404, as the MCP security
    best practices ask ("bind session IDs to user-specific information")."""
    identity: Identity | None = scope.get(IDENTITY)
    return None if identity is None or identity.kind == "anonymous" else identity.principal
