"""The Host and Origin policy over tables of inputs: which spellings pass on which bind, and why the rest fail.

A Host or Origin passes only as an IP literal (parsed, never prefix-compared), `localhost`, or a listed entry.
Each table groups a class of look-alikes (suffixes, prefixes, trailing dots, numeric forms, ports, userinfo,
IPv6 spellings) so that a new spelling of an old trick lands in a group that already says what it must get.
"""

from __future__ import annotations

import pytest

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.policy.hosts import Policy, parse_authority, parse_origin, single_header

LOOPBACK = Policy.create("127.0.0.1", (), ())
PUBLIC = Policy.create("0.0.0.0", (), ())
LISTED = Policy.create(
    "0.0.0.0",
    ("MCP.Example.com", "api.example.com:8443", "gw.internal:*", "[2001:DB8::1]"),
    (
        "https://App.Example.com",
        "https://app.example.com:8443/",
        "http://localhost:3000",
        "chrome-extension://abcdefghijklmnop",
    ),
)
LOOPBACK_LISTED = Policy.create("127.0.0.1", ("mcp.example.com", "10.0.0.5:8000", "[2001:db8::1]"), ())
ANYTHING = Policy.create("0.0.0.0", ("*",), ("*",))
NAMED_BIND = Policy.create("gateway.lan", (), ())
POLICIES = {
    "loopback": LOOPBACK,
    "public": PUBLIC,
    "listed": LISTED,
    "loopback+listed": LOOPBACK_LISTED,
    "any": ANYTHING,
    "named-bind": NAMED_BIND,
}

# --- Host ---------------------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.0.0.1:8000",
    "127.0.0.1:1",
    "127.0.0.1:65535",
    "127.1.2.3:80",
    "127.255.255.254",
    "localhost",
    "localhost:8000",
    "LOCALHOST:8000",
    "LocalHost",
    "[::1]",
    "[::1]:8000",
    "[0:0:0:0:0:0:0:1]",
    "[0:0:0:0:0:0:0:1]:8000",
    "[0000:0000:0000:0000:0000:0000:0000:0001]",
    "[::0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:127.0.0.1]:8000",
    "[::FFFF:7F00:1]",
]
# Names, whatever they look like: an attacker's DNS makes them point anywhere.
LOOK_ALIKE_NAMES = [
    "127.0.0.1.example.net",
    "127.0.0.1.example.net:8000",
    "127.example.net",
    "127.example.net:8000",
    "127.0.0.1-example.net",
    "127-0-0-1.example.net",
    "localhost.example.net",
    "localhost.example.net:8000",
    "LOCALHOST.EXAMPLE.NET",
    "evil-localhost",
    "evil-localhost:8000",
    "localhost-evil",
    "mylocalhost",
    "foo.localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "evil.example",
    "10.1.2.3.nip.io",
]
# A last label that is a number makes the whole host an address to a URL parser: only dotted quads pass.
NUMERIC_FORMS = [
    "example.net.127.0.0.1",
    "2130706433",
    "2130706433:8000",
    "0x7f.0.0.1",
    "0x7f000001",
    "0X7F.1",
    "127.1",
    "127.0.1",
    "0177.0.0.1",
    "127.000.0.1",
    "127.0.0.01",
    "127.0.0.256",
    "127.0.0.1.1",
    "1.2.3.4.5",
    "0x",
]
TRAILING_DOTS = ["localhost.", "localhost.:8000", "127.0.0.1.", "127.0.0.1.:8000", "[::1]."]
BAD_PORTS = [
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:99999",
    "127.0.0.1:123456",
    "127.0.0.1:http",
    "127.0.0.1:80a",
    "127.0.0.1:",
    "localhost:",
    "localhost:-1",
    "localhost:+80",
    "localhost: 80",
    "localhost:8000:8000",
    "[::1]:",
    "[::1]:65536",
    "[::1]:abc",
    "[::1]8000",
]
OTHER_CHARACTERS = [
    "user@127.0.0.1",
    "user@localhost:8000",
    "user:pass@127.0.0.1",
    "127.0.0.1@evil.example",
    "evil.example#@127.0.0.1",
    "127.0.0.1/evil",
    "127.0.0.1\\evil",
    "127.0.0.1?x",
    "127.0.0.1 ",
    " 127.0.0.1",
    "local host",
    "127.0.0.1,evil.example",
    "127.0.0.1;x",
    "localhost\x00",
    "localhost%00",
    "l\u043ecalhost",  # Cyrillic o
    "\u212aey.example",  # Kelvin sign: lowercases to ASCII k
    "localhost\xe9",
    "",
    ":8000",
    ".localhost",
    "local..host",
    "-localhost",
]
IPV6_FORMS = [
    "::1",
    "::1:8000",
    "[::1",
    "::1]",
    "[::1%25eth0]",
    "[::1%eth0]",
    "[v1.fe]",
    "[127.0.0.1]",
    "[]",
    "[[::1]]",
    "[::1]]",
]
# IP literals that are not loopback: refused on a loopback bind, accepted elsewhere (no name, no rebinding).
OTHER_LITERALS = [
    "0.0.0.0",
    "0.0.0.0:8000",
    "10.0.0.1",
    "192.168.1.10:8000",
    "128.0.0.1",
    "126.255.255.255",
    "[::]",
    "[::2]",
    "[::2]:8000",
    "[2001:db8::1]:8000",
    "[fe80::1]",
    "[::127.0.0.1]",  # IPv4-compatible form: ::7f00:1, not loopback
    "[::ffff:10.0.0.1]",
]
MALFORMED = NUMERIC_FORMS + TRAILING_DOTS + BAD_PORTS + OTHER_CHARACTERS + IPV6_FORMS

HOST_CASES: list[tuple[str, str, bool]] = [
    *[("loopback", host, True) for host in LOOPBACK_SPELLINGS],
    *[("loopback", host, False) for host in LOOK_ALIKE_NAMES + MALFORMED + OTHER_LITERALS],
    *[("public", host, True) for host in LOOPBACK_SPELLINGS + OTHER_LITERALS],
    *[("public", host, False) for host in [*LOOK_ALIKE_NAMES, "pod-10-1-2-3.anything:8000", *MALFORMED]],
    *[
        ("listed", host, True)
        for host in [
            "mcp.example.com",
            "MCP.EXAMPLE.COM:443",
            "mcp.example.com:8000",
            "api.example.com:8443",
            "API.Example.com:8443",
            "gw.internal",
            "gw.internal:9000",
            "[2001:db8::1]:8000",
            "10.0.0.5",
            "localhost:8000",
        ]
    ],
    *[
        ("listed", host, False)
        for host in [
            "api.example.com",
            "api.example.com:443",
            "api.example.com:8444",
            "mcp.example.com.evil.net",
            "mcp.example.com.evil.net:443",
            "evil.mcp.example.com",
            "xmcp.example.com",
            "mcp.example.co",
            "mcp-example.com",
            "mcp.example.com.",
            "mcp.example.com:0",
            "mcp.example.com:https",
            "user@mcp.example.com",
            "gw.internal.evil.net",
            *LOOK_ALIKE_NAMES,
        ]
    ],
    *[
        ("loopback+listed", host, True)
        for host in ["mcp.example.com:8000", "MCP.example.com", "10.0.0.5:8000", "[2001:0db8:0::1]", "127.0.0.1"]
    ],
    *[
        ("loopback+listed", host, False)
        for host in ["10.0.0.5", "10.0.0.5:8001", "10.0.0.6:8000", "[2001:db8::2]", "mcp.example.com.evil.net"]
    ],
    *[("any", host, True) for host in ["anything.example", "pod-1.svc:8000", "127.0.0.1.example.net", "127.0.0.1"]],
    # Malformed values fail even with '*': the Host is forwarded to backends as X-Forwarded-Host.
    *[("any", host, False) for host in [*MALFORMED, "a, b"]],
    *[("named-bind", host, True) for host in ["gateway.lan:8000", "GATEWAY.LAN", "10.0.0.1", "localhost"]],
    *[("named-bind", host, False) for host in ["gateway.lan.evil.net", "evil.lan", "xgateway.lan"]],
]


@pytest.mark.parametrize(("policy", "host", "passes"), HOST_CASES, ids=[f"{p}-{h!r}-{a}" for p, h, a in HOST_CASES])
def test_host(policy: str, host: str, passes: bool) -> None:
    if passes:
        POLICIES[policy].check_host(host)
        return
    with pytest.raises(GatewayError) as refused:
        POLICIES[policy].check_host(host)
    assert refused.value.status == 421
    assert refused.value.code == -32600
    assert refused.value.message.startswith(f"Host {host!r} is not served here")


def test_a_missing_host_is_refused() -> None:
    for policy in POLICIES.values():
        with pytest.raises(GatewayError) as refused:
            policy.check_host(None)
        assert refused.value.status == 421 and "no Host header" in refused.value.message


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1.example.net", "(setting: gateway.allowed_hosts)"),
        ("2130706433", "a number that is not a dotted-quad IPv4 address"),
        ("127.1", "a number that is not a dotted-quad IPv4 address"),
        ("localhost.", "a name with a trailing dot"),
        ("127.0.0.1:65536", "the port is not a number from 1 to 65535"),
        ("user@127.0.0.1", "a user name before '@'"),
        ("127.0.0.1/evil", "not a host name or an IP address"),
        ("::1", "an IPv6 address must be written in brackets"),
        ("[::1%eth0]", "an IPv6 zone id"),
        ("[::1", "without its closing ']'"),
        ("", "it is empty"),
        ("l\u043ecalhost", "it is not ASCII"),
    ],
)
def test_a_refused_host_says_why(host: str, reason: str) -> None:
    with pytest.raises(GatewayError) as refused:
        LOOPBACK.check_host(host)
    assert reason in refused.value.message


# --- Origin -------------------------------------------------------------------------------------------

LOOPBACK_ORIGINS = [
    "http://localhost:3000",
    "http://127.0.0.1:5173",
    "http://localhost",
    "https://localhost:8443",
    "HTTP://LOCALHOST:3000",
    "http://LocalHost:3000",
    "http://[::1]:3000",
    "http://[0:0:0:0:0:0:0:1]:3000",
    "http://[::ffff:127.0.0.1]:3000",
    "http://127.1.2.3:8080",
    "http://localhost:3000/",
]
BAD_ORIGINS = [
    "null",
    "NULL",
    "",
    "https://127.0.0.1.example.net",
    "http://127.0.0.1.example.net:3000",
    "http://127.example.net",
    "http://localhost.example.net:3000",
    "http://evil-localhost:3000",
    "http://foo.localhost:3000",
    "http://localhost.:3000",
    "http://127.0.0.1.:3000",
    "http://2130706433",
    "http://0x7f.0.0.1",
    "http://127.1",
    "http://0177.0.0.1",
    "http://example.net.127.0.0.1",
    "http://user@localhost:3000",
    "http://localhost@evil.example",
    "http://localhost:3000/path",
    "http://localhost:3000/app/",
    "http://localhost:3000//",
    "http://localhost:3000?x=1",
    "http://localhost:3000#x",
    "localhost:3000",
    "//localhost:3000",
    "localhost",
    "127.0.0.1",
    "http:/localhost:3000",
    "http://",
    "ftp://localhost",
    "ws://localhost:3000",
    "file://",
    "file:///etc/passwd",
    "chrome-extension://abcdefghijklmnop",
    "http://localhost:0",
    "http://localhost:65536",
    "http://localhost:abc",
    "http://[::2]:3000",
    "http://[::1",
    "http://::1:3000",
    "http://0.0.0.0:3000",
    "http://10.0.0.1:3000",
    "https://evil.example",
    " http://localhost:3000",
    "http://localhost:3000 ",
    "http:// localhost",
    "1http://localhost",
]

ORIGIN_CASES: list[tuple[str, str, bool]] = [
    *[("loopback", origin, True) for origin in LOOPBACK_ORIGINS],
    *[("loopback", origin, False) for origin in BAD_ORIGINS],
    *[("public", origin, False) for origin in LOOPBACK_ORIGINS + BAD_ORIGINS + ["https://mcp.example.com"]],
    *[
        ("listed", origin, True)
        for origin in [
            "https://app.example.com",
            "https://APP.example.com",
            "https://app.example.com:443",
            "https://app.example.com/",
            "https://app.example.com:8443",
            "http://localhost:3000",
            "chrome-extension://abcdefghijklmnop",
        ]
    ],
    *[
        ("listed", origin, False)
        for origin in [
            "https://app.example.com.evil.net",
            "https://app.example.com.evil.net:443",
            "https://evil.app.example.com",
            "https://xapp.example.com",
            "https://app.example.comevil.net",
            "http://app.example.com",
            "https://app.example.com:444",
            "https://app.example.com:80",
            "https://app.example.com:8443/x",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "http://localhost:3001",
            "http://127.0.0.1:3000",
            "chrome-extension://other",
            "null",
        ]
    ],
    *[("loopback+listed", origin, True) for origin in LOOPBACK_ORIGINS],
    *[("any", origin, True) for origin in ["https://evil.example", "null", "http://127.0.0.1.example.net"]],
]


@pytest.mark.parametrize(
    ("policy", "origin", "passes"), ORIGIN_CASES, ids=[f"{p}-{o!r}-{a}" for p, o, a in ORIGIN_CASES]
)
def test_origin(policy: str, origin: str, passes: bool) -> None:
    if passes:
        POLICIES[policy].check_origin(origin)
        return
    with pytest.raises(GatewayError) as refused:
        POLICIES[policy].check_origin(origin)
    assert refused.value.status == 403
    assert refused.value.code == -32600
    assert refused.value.message.startswith(f"Origin {origin!r} is not allowed")


def test_no_origin_is_no_browser() -> None:
    for policy in POLICIES.values():
        policy.check_origin(None)


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("null", "an opaque origin"),
        ("localhost:3000", "not scheme://host[:port]"),
        ("http://localhost:3000/path", "an origin has no path, query or fragment"),
        ("https://127.0.0.1.example.net", "(setting: gateway.allowed_origins)"),
        ("http://0x7f.0.0.1", "a number that is not a dotted-quad IPv4 address"),
    ],
)
def test_a_refused_origin_says_why(origin: str, reason: str) -> None:
    with pytest.raises(GatewayError) as refused:
        LOOPBACK.check_origin(origin)
    assert reason in refused.value.message


# --- settings, binds, parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("gateway.lan", False),
        ("127.0.0.1.example.net", False),
        ("localhost.example.net", False),
    ],
)
def test_which_binds_are_loopback(bind: str, loopback: bool) -> None:
    assert Policy.create(bind, (), ()).loopback is loopback


def test_setting_entries_are_normalized_and_unusable_ones_reported() -> None:
    policy = Policy.create(
        "0.0.0.0",
        ("MCP.Example.com", "api.example.com:8443", "gw.internal:*", "[2001:DB8::1]", "*.example.com", "::1", ""),
        ("https://App.Example.com/", "http://localhost:3000", "null", "app.example.org", "https://a.example/path"),
    )
    assert policy.allowed_hosts == {"mcp.example.com", "api.example.com:8443", "gw.internal", "[2001:db8::1]"}
    assert policy.allowed_origins == {"https://app.example.com:443", "http://localhost:3000"}
    assert [note.split(" is ignored")[0] for note in policy.ignored] == [
        "gateway.allowed_hosts entry '*.example.com'",
        "gateway.allowed_hosts entry '::1'",
        "gateway.allowed_hosts entry ''",
        "gateway.allowed_origins entry 'null'",
        "gateway.allowed_origins entry 'app.example.org'",
        "gateway.allowed_origins entry 'https://a.example/path'",
    ]
    assert policy.ignored[0].endswith("not a host name or an IP address")


def test_notices_name_what_is_off_and_what_is_ignored() -> None:
    assert LOOPBACK.notices() == []
    assert PUBLIC.notices() == [
        "bound to 0.0.0.0: a Host header that is a name must be listed in gateway.allowed_hosts"
        " or be gateway.public_url's host (IP addresses and localhost always pass)"
    ]
    assert [n.split(":")[0] for n in ANYTHING.notices()] == [
        "gateway.allowed_hosts holds '*'",
        "gateway.allowed_origins holds '*'",
    ]
    assert Policy.create("127.0.0.1", ("bad host",), ()).notices() == [
        "gateway.allowed_hosts entry 'bad host' is ignored: not a host name or an IP address"
    ]


@pytest.mark.parametrize(
    ("text", "host", "port", "address"),
    [
        ("LocalHost:80", "localhost", 80, None),
        ("[0:0:0:0:0:0:0:1]:8000", "[::1]", 8000, "::1"),
        ("[::FFFF:127.0.0.1]", "[::ffff:7f00:1]", None, "::ffff:7f00:1"),
        ("127.0.0.1", "127.0.0.1", None, "127.0.0.1"),
        ("my_service.internal:65535", "my_service.internal", 65535, None),
    ],
)
def test_parse_authority(text: str, host: str, port: int | None, address: str | None) -> None:
    parsed = parse_authority(text)
    assert (parsed.host, parsed.port) == (host, port)
    assert (str(parsed.address) if parsed.address is not None else None) == address


def test_origin_keys_write_the_default_port() -> None:
    assert parse_origin("https://App.Example.com")[0] == "https://app.example.com:443"
    assert parse_origin("http://example.com:80/")[0] == "http://example.com:80"
    assert parse_origin("http://[::1]:3000")[0] == "http://[::1]:3000"
    assert parse_origin("chrome-extension://abc")[0] == "chrome-extension://abc"


def test_one_host_and_one_origin_per_request() -> None:
    assert single_header([(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")], b"host") == "127.0.0.1:8000"
    assert single_header([(b"accept", b"*/*")], b"origin") is None
    for name, status in ((b"host", 421), (b"origin", 403)):
        with pytest.raises(GatewayError) as refused:
            single_header([(name, b"127.0.0.1"), (name, b"evil.example")], name)
        assert refused.value.status == status and "2" in refused.value.message


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_the_public_url_is_served_as_a_host_and_an_origin(bind: str) -> None:
    """`gateway.public_url` names the address clients use (behind a proxy that keeps `Host`): its name
    passes as a `Host` on any port and its origin as an `Origin`; other names still need `allowed_hosts`."""
    policy = Policy.create(bind, (), (), "https://MCP.example.com:8443/tools")
    for host in ("mcp.example.com", "mcp.example.com:8443", "MCP.EXAMPLE.COM:443"):
        policy.check_host(host)
    policy.check_origin("https://mcp.example.com:8443")
    for host, origin in (("mcp.example.com.evil.net", "https://mcp.example.com"), ("evil.net", "http://evil.net")):
        with pytest.raises(GatewayError) as refused:
            policy.check_host(host)
        assert refused.value.status == 421
        with pytest.raises(GatewayError) as refused:
            policy.check_origin(origin)
        assert refused.value.status == 403
    assert Policy.create("0.0.0.0", (), (), "https://u:secret@gw.example.com").ignored == (
        "gateway.public_url is not served as a Host: a user name before '@'",
    )
