"""Host and origin parsing, pure: the rules of `Host` and `Origin` values and of the settings that list them
(`gateway.allowed_hosts`, `gateway.allowed_origins`). The gateway's DNS-rebinding layer
(gateway/policy/hosts.py) applies them to requests; the registry checks its settings with them at load
(`host_entry_problem`, `origin_entry_problem`), so a wrong entry is an error of the file, not a 421 later.

A host is a lowercase name, a strict dotted quad or a bracketed IPv6 literal (`ipaddress` parses literals;
nothing is compared by prefix). An origin is `scheme://host[:port]`, the scheme's default port written out.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

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
    if "://" in text:
        raise ValueError("a URL, not host[:port]")
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


def host_key(entry: str) -> str:
    """An `allowed_hosts` entry as a key: `*`, `name` (any port; also written `name:*`) or `name:port`."""
    entry = entry.strip()
    if entry == ANY:
        return ANY
    authority = parse_authority(entry.removesuffix(":*"))
    return authority.host if authority.port is None else f"{authority.host}:{authority.port}"


def host_entry_problem(entry: str) -> str | None:
    """What is wrong with a `gateway.allowed_hosts` entry, in words that say what to write instead; None
    when `host_key` takes it. Entries: `*`, `name`, `name:port`, `name:*`, an IP (IPv6 in brackets)."""
    text = entry.strip()
    if "://" in text:
        try:
            hostname = urlsplit(text).hostname
        except ValueError:  # `http://[::1`: no host can be read out of it
            hostname = None
        return f"a URL: write the host name only, {hostname or 'mcp.example.com'}"
    if text != ANY and "*" in text.removesuffix(":*"):
        return "a wildcard name: list each host name (mcp.example.com); '*' alone turns the check off"
    if "/" in text:
        return "a path: write the host name only (mcp.example.com)"
    try:
        host_key(text)
    except ValueError as exc:
        if text.endswith(".") or text.rpartition(":")[0].endswith("."):
            return f"a name with a trailing dot: write {text.replace('.:', ':').rstrip('.')}"
        if text.count(":") > 1 and not text.startswith("["):
            return f"an IPv6 address without brackets: write [{text}]"
        return f"{exc}: write a host name (mcp.example.com), host:port, or an IP address"
    return None


def origin_entry_problem(entry: str) -> str | None:
    """What is wrong with a `gateway.allowed_origins` entry, in words that say what to write instead; None
    when it is `*` or an origin `scheme://host[:port]`."""
    text = entry.strip()
    if text == ANY:
        return None
    if "://" not in text:
        return f"an origin has a scheme: write https://{text.rstrip('/')} (or http://)"
    scheme, _, rest = text.partition("://")
    host, slash, path = rest.partition("/")
    if (slash and path) or any(c in rest for c in "?#"):
        cut = host.split("?")[0].split("#")[0]
        return f"an origin has no path, query or fragment: write {scheme}://{cut}"
    try:
        parse_origin(text)
    except ValueError as exc:
        return f"{exc}: write scheme://host[:port], such as https://app.example.com"
    return None
