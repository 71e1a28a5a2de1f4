"""Authorization: which callers may reach which servers, and which of their tools (`gateway.access`).

With no rules, every caller the authentication let in reaches every server and every tool. With rules, a
caller reaches a server only when a rule names one of its principals (`Identity.principals`: `key:<name>`,
`sub:<subject>`, `group:<g>`, `scope:<s>`, `anonymous` for a caller asked for no credentials; `*` is anyone)
and the server id (`fnmatch` globs: `*`, `?`, `[...]`); everything else is refused with 403 before the
request is routed. The tools it may list and call there are the union
of those rules' `tools` (globs); a rule without `tools` allows all of them.

A `Grant` is what a request carries inward (`scope[GRANT]`): the server routes filter `tools/list`
answers and refuse `tools/call` of a tool not granted (`Grant.allows`), on every route. Decisions are cached
by (principals, server id): the same caller on the same server costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.policy.auth import Identity
from mcpfleet.registry.model import AccessRule

GRANT = "mcpfleet.grant"  # the scope key a request's Grant is left under
CACHE_SIZE = 4096


@dataclass(frozen=True)
class Grant:
    """What one caller may do on one server. `tools`: tool-name globs it may list and call; None: all."""

    tools: tuple[str, ...] | None = None

    def allows(self, tool: str) -> bool:
        """Whether the tool `tool` may be listed and called."""
        return self.tools is None or any(fnmatchcase(tool, pattern) for pattern in self.tools)


EVERYTHING = Grant()


class AccessDenied(GatewayError):
    """403 from `gateway.access`. `scopes`: what a token would need for some rule to let it in (a JWT
    caller's only; empty when no token could), for the challenge the authentication layer writes."""

    def __init__(self, message: str, scopes: tuple[str, ...] = ()) -> None:
        super().__init__(403, -32600, message)
        self.scopes = scopes


class Access:
    """The decisions of one `gateway.access` list (a reload makes a new one)."""

    def __init__(self, rules: Sequence[AccessRule]) -> None:
        self.rules = tuple(rules)
        self._cache: dict[tuple[frozenset[str], str], Grant | None] = {}

    def grant(self, identity: Identity, server_id: str) -> Grant | None:
        """What `identity` may do on `server_id`; None: it may not reach it."""
        if not self.rules:
            return EVERYTHING
        principals = identity.principals
        cache_key = (principals, server_id)
        try:
            return self._cache[cache_key]
        except KeyError:
            pass
        tools: list[str] = []
        everything = False
        matched = False
        for rule in self.rules:
            if not any(p == "*" or p in principals for p in rule.principals):
                continue
            if not any(fnmatchcase(server_id, pattern) for pattern in rule.servers):
                continue
            matched = True
            if rule.tools is None:
                everything = True
            else:
                tools.extend(t for t in rule.tools if t not in tools)
        decided = (EVERYTHING if everything else Grant(tuple(tools))) if matched else None
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[cache_key] = decided
        return decided

    def check(self, identity: Identity, server_id: str) -> Grant:
        """`grant`, or `AccessDenied` (403) naming the caller and the server. For a JWT caller, the denial
        carries the scopes some rule gives the server to (`scope:` principals): another token could lift it,
        so the router answers with an RFC 6750 `insufficient_scope` challenge listing them (MCP authorization,
        "Scope Challenge Handling"). Any other caller gets no challenge: logging in again would not help,
        and clients that re-authorize on every `insufficient_scope` loop."""
        decided = self.grant(identity, server_id)
        if decided is None:
            raise AccessDenied(
                f"{identity.principal} may not use server {server_id!r} (setting: gateway.access)",
                self._scopes_for(server_id) if identity.kind == "jwt" else (),
            )
        return decided

    def _scopes_for(self, server_id: str) -> tuple[str, ...]:
        """The scopes some rule gives `server_id` to, in the rules' order."""
        scopes: list[str] = []
        for rule in self.rules:
            if any(fnmatchcase(server_id, pattern) for pattern in rule.servers):
                named = (p.removeprefix("scope:") for p in rule.principals if p.startswith("scope:"))
                scopes.extend(s for s in named if s not in scopes)
        return tuple(scopes)
