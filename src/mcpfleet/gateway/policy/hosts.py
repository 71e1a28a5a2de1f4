"""DNS-rebinding protection: which `Host` and `Origin` values are served, and the layer that refuses the rest.

A DNS name can be made to point anywhere by whoever controls it, so a `Host` that is a *name* passes only
when it is `localhost` or listed; an IP literal cannot be rebound. Literals are parsed with `ipaddress`,
never compared by prefix: `127.0.0.1.example.net` is a name like any other.

- `Host` (else 421): `localhost`, a loopback literal (127.0.0.0/8 as a dotted quad; `[::1]` in any IPv6
  spelling; `[::ffff:127.x.y.z]`), an entry of `gateway.allowed_hosts`, the bind address when it is a name;
  on a bind that is not loopback also any IP literal. Malformed values fail whatever the settings say.
- `Origin`, when present (else 403): an entry of `gateway.allowed_origins`, matched on scheme, host and
  port; on a loopback bind also `http`/`https` origins whose host passes the loopback rule above.

`Policy` and the parsers are pure functions of the request; `HostOriginGuard` applies them to every HTTP
request and WebSocket handshake, with the policy in force (a reload swaps it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcpfleet.authority import (
    ANY,
    WEB_SCHEMES,
    Authority,
    host_key,
    is_loopback_bind,
    parse_authority,
    parse_origin,
)
from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, Receive, Scope, Send


@dataclass(frozen=True)
class Policy:
    """What `Host` and `Origin` values this gateway accepts; built from the settings in force.

    `allowed_hosts` holds `name` (any port) and `name:port` keys, `allowed_origins` holds
    `scheme://host:port` keys; either may hold `*`. `ignored` lists setting entries that can never match.
    """

    bind_host: str
    loopback: bool
    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]
    ignored: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        bind_host: str,
        allowed_hosts: Iterable[str],
        allowed_origins: Iterable[str],
        public_url: str | None = None,
    ) -> Policy:
        """The policy of these settings. `public_url` (`gateway.public_url`), the address the operator says
        clients use, is served too: its host name as a `Host` (any port: a proxy in front may add or drop
        one) and its origin as an `Origin` (the status page and any page served there are same-origin)."""
        hosts: set[str] = set()
        origins: set[str] = set()
        ignored: list[str] = []
        if public_url is not None:
            parts = urlsplit(public_url)  # the registry checked it: http(s), a host, no userinfo
            try:
                key, authority = parse_origin(f"{parts.scheme}://{parts.netloc}")
            except ValueError as exc:  # a spelling urlsplit takes and the Host rule does not; never its text
                ignored.append(f"gateway.public_url is not served as a Host: {exc}")
            else:
                hosts.add(authority.host)
                origins.add(key)
        for entry in allowed_hosts:
            try:
                hosts.add(host_key(entry))
            except ValueError as exc:
                ignored.append(f"gateway.allowed_hosts entry {entry!r} is ignored: {exc}")
        for entry in allowed_origins:
            try:
                origins.add(ANY if entry.strip() == ANY else parse_origin(entry.strip())[0])
            except ValueError as exc:
                ignored.append(f"gateway.allowed_origins entry {entry!r} is ignored: {exc}")
        try:
            bound = parse_authority(bind_host.strip())
        except ValueError:
            bound = None
        if bound is not None and bound.address is None:
            hosts.add(bound.host)  # bound to a name the operator chose: that name serves this gateway
        loopback = is_loopback_bind(bind_host.strip())
        return cls(bind_host, loopback, frozenset(hosts), frozenset(origins), tuple(ignored))

    def notices(self) -> list[str]:
        """What the operator should read at start and after a reload: checks turned off, entries ignored."""
        notes = list(self.ignored)
        if ANY in self.allowed_hosts:
            notes.append("gateway.allowed_hosts holds '*': any Host name passes (no DNS rebinding protection)")
        elif not self.loopback:
            notes.append(
                f"bound to {self.bind_host}: a Host header that is a name must be listed in gateway.allowed_hosts"
                " or be gateway.public_url's host (IP addresses and localhost always pass)"
            )
        if ANY in self.allowed_origins:
            notes.append("gateway.allowed_origins holds '*': any web page may call this gateway from a browser")
        return notes

    def check_host(self, host: str | None) -> None:
        if host is None:
            raise GatewayError(421, -32600, "the request has no Host header")
        try:
            authority = parse_authority(host)
        except ValueError as exc:
            raise GatewayError(421, -32600, f"Host {host!r} is not served here: {exc}") from None
        if ANY in self.allowed_hosts or self._listed(authority) or authority.loopback:
            return
        if not self.loopback and authority.address is not None:
            return  # an IP literal: DNS rebinding needs a name
        raise GatewayError(421, -32600, f"Host {host!r} is not served here (setting: gateway.allowed_hosts)")

    def check_origin(self, origin: str | None) -> None:
        if origin is None or ANY in self.allowed_origins:
            return
        try:
            key, authority = parse_origin(origin)
        except ValueError as exc:
            raise GatewayError(403, -32600, f"Origin {origin!r} is not allowed: {exc}") from None
        if key in self.allowed_origins:
            return
        if self.loopback and key.partition(":")[0] in WEB_SCHEMES and authority.loopback:
            return
        raise GatewayError(403, -32600, f"Origin {origin!r} is not allowed (setting: gateway.allowed_origins)")

    def _listed(self, authority: Authority) -> bool:
        return authority.host in self.allowed_hosts or f"{authority.host}:{authority.port}" in self.allowed_hosts


def single_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of `host` or `origin`, None when absent. Two of them are refused (421 like every Host
    refusal, 403 for Origin): the gateway would check one while a proxy in front may act on the other."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            if found is not None:
                count = sum(1 for other, _ in headers if other == name)
                status = 421 if name == b"host" else 403
                raise GatewayError(status, -32600, f"the request has {count} {name.decode().title()} headers")
            found = value
    return None if found is None else found.decode("latin-1")


class HostOriginGuard:
    """Refuses an HTTP request or a WebSocket handshake whose `Host` (421) or `Origin` (403) the policy in
    force does not accept, before anything else reads it. The refusal is raised for the `ErrorBoundary`
    outside to answer; `Cors` outside that adds no headers to it, having checked the same two values."""

    def __init__(self, app: App, policy: Callable[[], Policy]) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            policy = self.policy()
            policy.check_host(single_header(scope["headers"], b"host"))  # Host first: both wrong is a 421
            policy.check_origin(single_header(scope["headers"], b"origin"))
        await self.app(scope, receive, send)
