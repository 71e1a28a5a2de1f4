"""Trusted proxies: the client's address and scheme as a proxy in front of the gateway saw them.

Only when the TCP peer (`scope["client"]`) is in `gateway.trusted_proxies` does the layer believe what it
says. The client is then found in `Forwarded` (RFC 7239), or else `X-Forwarded-For`: walking the hops from
the right, starting at the peer, past every hop that is itself a trusted proxy; the first hop that is not
is the client. A hop that cannot be read (garbage, an empty list member, a malformed `Forwarded`) stops the
walk, and the last trusted hop stands as the client: the gateway never takes an address it cannot trust
for the client's. RFC 7239's `unknown` and obfuscated identifiers (`_hidden`, section 6.3) are valid hops
and are taken as they are (as the client's "address": an obfuscated identifier is stable per client, so
limits and `consistent_hash` still tell clients apart; `unknown` callers share one).

The scheme comes from the `proto` of the client's `Forwarded` element, or from `X-Forwarded-Proto` (the
member at the client's position when the list has one per `X-Forwarded-For` hop, else the last one, which
the peer set); only `http` and `https` are taken, and a WebSocket's scope gets `ws` / `wss`. So the URLs
the gateway advertises (`urls.base_url`) say https behind a TLS-terminating proxy.

The host is never taken from `X-Forwarded-Host` / `Forwarded host=`: the Host rule (`hosts.py`, DNS
rebinding) checks the `Host` header, and a proxy passes the client's `Host` on (nginx `proxy_set_header
Host $host`, Traefik and Envoy by default); `gateway.public_url` names the gateway's address when it does not.

The layer rewrites `scope["client"]` (`(address, port)`, port 0 when unknown) and `scope["scheme"]` in
place, so uvicorn's access log and everything inside sees them, and keeps the TCP peer in
`scope[PEER]` (`/admin/reload` answers loopback peers only, never a proxied request). From a peer that is
not trusted nothing is read (the gateway drops those headers before forwarding: `protocol.CLIENT_CLAIMS`).
It never refuses a request: malformed headers leave the peer as the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from functools import lru_cache

from mcpfleet.gateway.asgi import App, Receive, Scope, Send

PEER = "mcpfleet.peer"  # the scope key of the TCP peer (`scope["client"]` as the ASGI server gave it)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = frozenset({"http", "https"})
MAX_HOPS = 64  # a longer chain is read from its right end only: the hops beyond are never reached anyway


@lru_cache(maxsize=8)
def networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    """`gateway.trusted_proxies` as networks (the model checked each entry); cached per setting value."""
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def ip(text: str) -> Address | None:
    """An address, IPv4-mapped IPv6 taken as the IPv4 it maps; None if `text` is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted(address: str, nets: Sequence[Network]) -> bool:
    parsed = ip(address)
    return parsed is not None and any(parsed in net for net in nets)


# --- parsing: pure -----------------------------------------------------------------------------------------


def _split(text: str, separator: str) -> list[str] | None:
    """`text` split on `separator` outside quoted strings (RFC 9110 section 5.6.4); None if a quote is open."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        return None
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        escaped = False
        for char in value[1:-1]:
            if char == "\\" and not escaped:
                escaped = True
                continue
            escaped = False
            out.append(char)
        return "".join(out)
    return value


def forwarded_elements(value: str) -> list[dict[str, str]] | None:
    """RFC 7239 `Forwarded` (every header line joined with `,`): one dict per element, parameter names
    lowercased, values unquoted. None when it is malformed (an open quote, a pair without `=`)."""
    elements = _split(value, ",")
    if elements is None:
        return None
    parsed: list[dict[str, str]] = []
    for element in elements[-MAX_HOPS:]:
        pairs = _split(element, ";")
        if pairs is None:
            return None
        params: dict[str, str] = {}
        for pair in pairs:
            if not pair.strip():
                continue
            name, eq, raw = pair.strip().partition("=")
            if not eq or not name:
                return None
            params[name.strip().lower()] = _unquote(raw.strip())
        parsed.append(params)
    return parsed


def node(value: str) -> tuple[str, int] | None:
    """An RFC 7239 node (section 6): `192.0.2.43`, `192.0.2.43:47011`, `[2001:db8::1]:4711`, `unknown`,
    `_hidden` (a bare IPv6 address is taken too); as (address or identifier, port or 0). None if it is none
    of these."""
    value = value.strip()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not _ipv6(host) or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif _ipv6(value):
        host, port = value, ""
    else:
        host, _, port = value.partition(":")
        if not (isinstance(ip(host), ipaddress.IPv4Address) or host == "unknown" or _obfuscated(host)):
            return None
    if not port:
        return host, 0
    if len(port) <= 5 and port.isascii() and port.isdigit() and int(port) <= 65535:
        return host, int(port)
    return (host, 0) if _obfuscated(port) else None


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _obfuscated(text: str) -> bool:
    """RFC 7239 section 6.3: `_` then letters, digits, `.`, `_`, `-`."""
    rest = text[1:]
    return text.startswith("_") and bool(rest) and all(c.isascii() and (c.isalnum() or c in "._-") for c in rest)


def client_from_forwarded(value: str, peer: str, nets: Sequence[Network]) -> tuple[tuple[str, int], str | None]:
    """The client (address, port) and the scheme it used, from a `Forwarded` value sent by the trusted
    `peer`. The scheme is None when the client's element has no usable `proto`."""
    client: tuple[str, int] = (peer, 0)
    scheme: str | None = None
    elements = forwarded_elements(value)
    if elements is None:
        return client, None
    for params in reversed(elements):
        if not trusted(client[0], nets):
            break
        hop = node(params["for"]) if "for" in params else None
        if hop is None:
            break
        client = hop
        proto = params.get("proto", "").lower()
        scheme = proto if proto in SCHEMES else None
    return client, scheme


def client_from_x_forwarded(
    forwarded_for: str, proto: str | None, peer: str, nets: Sequence[Network]
) -> tuple[tuple[str, int], str | None]:
    """The client (address, port) and scheme from `X-Forwarded-For` (every line joined with `,`; a hop with
    a port, `192.0.2.7:4711` or `[2001:db8::1]:4711`, is read too) and `X-Forwarded-Proto`, sent by the
    trusted `peer`."""
    hops = forwarded_for.split(",")[-MAX_HOPS:]
    client: tuple[str, int] = (peer, 0)
    position: int | None = None
    for index in range(len(hops) - 1, -1, -1):
        if not trusted(client[0], nets):
            break
        hop = node(hops[index])
        if hop is None or ip(hop[0]) is None:
            break
        client, position = hop, index
    scheme = None
    if proto is not None:
        protos = [p.strip().lower() for p in proto.split(",")]
        chosen = protos[position] if position is not None and len(protos) == len(hops) else protos[-1]
        scheme = chosen if chosen in SCHEMES else None
    return client, scheme


# --- the layer -----------------------------------------------------------------------------------------------


class TrustedProxies:
    def __init__(self, app: App, proxies: Callable[[], tuple[str, ...]]) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            scope[PEER] = peer
            proxies = self.proxies()
            if proxies and peer and trusted(str(peer[0]), nets := networks(proxies)):
                self._rewrite(scope, str(peer[0]), nets)
        await self.app(scope, receive, send)

    @staticmethod
    def _rewrite(scope: Scope, peer: str, nets: Sequence[Network]) -> None:
        forwarded: list[str] = []
        x_for: list[str] = []
        x_proto: list[str] = []
        for name, value in scope["headers"]:
            if name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                x_for.append(value.decode("latin-1"))
            elif name == b"x-forwarded-proto":
                x_proto.append(value.decode("latin-1"))
        if forwarded:
            client, scheme = client_from_forwarded(",".join(forwarded), peer, nets)
        else:  # with no X-Forwarded-For the peer is the client, and X-Forwarded-Proto may still say its scheme
            client, scheme = client_from_x_forwarded(",".join(x_for), ",".join(x_proto) or None, peer, nets)
        if client[0] != peer:
            scope["client"] = client
        if scheme is not None:
            secure = scheme == "https"
            scope["scheme"] = ("wss" if secure else "ws") if scope["type"] == "websocket" else scheme
