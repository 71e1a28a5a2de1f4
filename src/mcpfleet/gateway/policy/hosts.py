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

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, Receive, Scope, Send

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
WEB_SCHEMES = frozenset({"http", "https"})
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")  # a last label a URL parser reads as part of an IPv4 address
_NAME_CHARACTERS = re.compile(r"[a-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


@dataclass(frozen=True)
class Authority:
    """A parsed `host[:port]`: `host` is a lowercase name, a dotted quad, or `[compressed IPv6]`."""

    host: str
    port: int | None
    address: IPv4Address | IPv6Address | None  # None for a name

    @property
    def loopback(self) -> bool:
        if self.address is None:
            return self.host == "localhost"
        address = self.address
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 written for an IPv6 socket
        return address.is_loopback


@functools.lru_cache(maxsize=1024)  # every request is checked, and a gateway sees few distinct values
def parse_authority(text: str) -> Authority:
    """`host[:port]` as a Host header carries it. Raises ValueError saying what is wrong."""
    if not text:
        raise ValueError("it is empty")
    if not text.isascii():
        raise ValueError("it is not ASCII")
    if "@" in text:
        raise ValueError("a user name before '@'")
    lowered = text.lower()
    address: IPv4Address | IPv6Address | None
    if lowered.startswith("["):
        literal, bracket, rest = lowered[1:].partition("]")
        if not bracket:
            raise ValueError("an IPv6 address without its closing ']'")
        if "%" in literal:
            raise ValueError("an IPv6 zone id")
        try:
            address = IPv6Address(literal)
        except ValueError:
            raise ValueError("not an IPv6 address in brackets") from None
        host = f"[{address.compressed}]"
    else:
        host, colon, port_text = lowered.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 address must be written in brackets")
        rest = colon + port_text
        address = _ipv4_or_name(host)
    return Authority(host, _port(rest), address)


@functools.lru_cache(maxsize=1024)
def parse_origin(text: str) -> tuple[str, Authority]:
    """An `Origin` value: its key `scheme://host[:port]` (the scheme's default port written out) and its
    authority. A single trailing `/` is tolerated; any other path, a query or a fragment is not."""
    lowered = text.lower()
    if lowered == "null":
        raise ValueError("an opaque origin (sandboxed pages, files and redirects send 'null')")
    scheme, separator, rest = lowered.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        raise ValueError("not scheme://host[:port]")
    rest = rest.removesuffix("/")
    if any(c in rest for c in "/?#"):
        raise ValueError("an origin has no path, query or fragment")
    authority = parse_authority(rest)
    port = authority.port or DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{authority.host}" + (f":{port}" if port else ""), authority


def _ipv4_or_name(host: str) -> IPv4Address | None:
    if not _NAME_CHARACTERS.fullmatch(host):
        raise ValueError("not a host name or an IP address")
    labels = host.split(".")
    if _NUMBER.fullmatch(labels[-1]):
        # Browsers and inet_aton read 127.1, 2130706433, 0x7f.0.0.1 and 0177.0.0.1 as addresses: the only
        # numeric form taken here is the strict dotted quad, so no spelling means two different hosts.
        try:
            return IPv4Address(host)
        except ValueError:
            raise ValueError("a number that is not a dotted-quad IPv4 address") from None
    if host.endswith("."):
        raise ValueError("a name with a trailing dot")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a host name or an IP address")
    return None


def _port(rest: str) -> int | None:
    if not rest:
        return None
    if rest.startswith(":") and _PORT.fullmatch(rest[1:]) and 1 <= int(rest[1:]) <= 65535:
        return int(rest[1:])
    raise ValueError("the port is not a number from 1 to 65535")


def is_loopback_bind(bind_host: str) -> bool:
    """Whether a bind address (`127.0.0.1`, `::1`, `localhost`, `[::1]`) keeps the gateway to this machine."""
    if bind_host.lower() == "localhost":
        return True
    try:
        address = ip_address(bind_host.strip("[]"))
    except ValueError:
        return False
    return Authority(bind_host, None, address).loopback


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
                hosts.add(_host_key(entry))
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


def _host_key(entry: str) -> str:
    """An `allowed_hosts` entry as a key: `*`, `name` (any port; also written `name:*`) or `name:port`."""
    entry = entry.strip()
    if entry == ANY:
        return ANY
    authority = parse_authority(entry.removesuffix(":*"))
    return authority.host if authority.port is None else f"{authority.host}:{authority.port}"


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
