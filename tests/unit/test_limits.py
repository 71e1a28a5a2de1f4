"""`gateway.limits` and `gateway.trusted_proxies` without a network: the token buckets on an injected clock,
the session slots against a real `SessionTable`, and the trusted-proxy layer and its header parsing (RFC 7239
`Forwarded`, `X-Forwarded-For`/`-Proto`) at the ASGI level."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import ErrorBoundary, Message, Receive, Scope, Send
from mcpfleet.gateway.policy import IDENTITY, Identity
from mcpfleet.gateway.policy.proxies import (
    PEER,
    TrustedProxies,
    client_from_forwarded,
    client_from_x_forwarded,
    forwarded_elements,
    networks,
    node,
)
from mcpfleet.gateway.policy.quotas import LIMITED, Buckets, Quotas, caller, may_open_session, names_initialize
from mcpfleet.gateway.sealing import Sealer
from mcpfleet.gateway.session import HttpSession, SessionTable
from mcpfleet.registry.model import Limits, RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    buckets = Buckets()
    rate = RateLimit(rps=2, burst=3)
    now = 50.0
    for _ in range(3):
        assert buckets.wait("a", rate, now) == 0
        buckets.take("a", rate, now)
    assert buckets.wait("a", rate, now) == pytest.approx(0.5)  # one token comes in 1/rps seconds
    assert buckets.wait("b", rate, now) == 0  # another key has its own bucket
    assert buckets.wait("a", rate, now + 0.5) == 0
    buckets.take("a", rate, now + 0.5)
    assert buckets.wait("a", rate, now + 0.5) == pytest.approx(0.5)
    # Idle for long: full again, never more than the burst.
    for _ in range(3):
        buckets.take("a", rate, now + 100)
    assert buckets.wait("a", rate, now + 100) > 0


def test_a_slower_rate_after_a_reload_applies_to_the_next_request() -> None:
    buckets = Buckets()
    buckets.take("a", RateLimit(rps=100, burst=100), 0.0)
    slow = RateLimit(rps=0.5, burst=1)
    assert buckets.wait("a", slow, 0.0) == 0  # 99 tokens, capped at the new burst: 1
    buckets.take("a", slow, 0.0)
    assert buckets.wait("a", slow, 0.0) == pytest.approx(2.0)


def test_a_flood_of_distinct_keys_stays_bounded() -> None:
    buckets = Buckets(max_buckets=100)
    rate = RateLimit(rps=1, burst=2)
    for n in range(10_000):
        buckets.take(f"addr:10.0.{n // 256}.{n % 256}", rate, n * 0.001)
        assert len(buckets) <= 100
    # The most recent key is kept: its bucket still has one token taken (a new one would be full).
    buckets.take("addr:10.0.39.15", rate, 10.0)
    assert buckets.wait("addr:10.0.39.15", rate, 10.0) > 0


def test_full_buckets_are_dropped_before_busy_ones() -> None:
    buckets = Buckets(max_buckets=4)
    rate = RateLimit(rps=1, burst=2)
    buckets.take("busy", rate, 0.0)
    buckets.take("busy", rate, 0.0)  # empty at t = 0, full only at t = 2: the oldest, but not idle
    for key in ("a", "b", "c"):
        buckets.take(key, rate, 0.0)  # full again at t = 1
    buckets.take("d", rate, 1.5)  # one over the bound: the full ones go, not "busy"
    assert len(buckets) == 2
    buckets.take("busy", rate, 1.5)
    assert buckets.wait("busy", rate, 1.5) > 0  # 0.5 left: its bucket was kept (a new one would hold 1)


def scope(principal: Identity | None = None, client: str = "192.0.2.1") -> Scope:
    result: Scope = {"type": "http", "method": "POST", "headers": [], "client": (client, 5000)}
    if principal is not None:
        result[IDENTITY] = principal
    return result


KEY_A = Identity("alice", kind="key")
KEY_B = Identity("bob", kind="key")
ANONYMOUS = Identity("anonymous", kind="anonymous")


def test_callers_are_principals_and_anonymous_ones_their_address() -> None:
    assert caller(scope(KEY_A)) == "key:alice"
    assert caller(scope(Identity("u-1", kind="jwt"))) == "sub:u-1"
    assert caller(scope(ANONYMOUS, "198.51.100.7")) == "addr:198.51.100.7"
    assert caller(scope(None, "198.51.100.7")) == "addr:198.51.100.7"


def quotas(clock: Clock) -> Quotas:
    return Quotas(SessionTable(Sealer.from_settings(("k" * 32,), 3600)), clock=clock)


def test_rates_per_principal_and_per_server() -> None:
    clock = Clock()
    q = quotas(clock)
    limits = Limits(rate_per_principal=RateLimit(rps=1, burst=2), rate_per_server=RateLimit(rps=1, burst=3))
    assert q.refusal(scope(KEY_A), "s1", limits) is None
    assert q.refusal(scope(KEY_A), "s1", limits) is None
    refused = q.refusal(scope(KEY_A), "s1", limits)
    assert refused is not None and refused.status == 429 and refused.code == LIMITED
    assert "gateway.limits.rate_per_principal" in refused.message
    assert refused.headers["Retry-After"] == "1"
    # Bob is not Alice; but the server has one token left for everyone.
    assert q.refusal(scope(KEY_B), "s1", limits) is None
    refused = q.refusal(scope(KEY_B), "s1", limits)
    assert refused is not None and "gateway.limits.rate_per_server" in refused.message
    # A refusal by the server's bucket took nothing from Bob's: after the server refills, Bob has one.
    assert q.refusal(scope(KEY_B), "s2", limits) is None  # another server
    clock.now += 1.0
    assert q.refusal(scope(KEY_B), "s1", limits) is None
    assert q.refusal(scope(KEY_A), "s1", limits) is not None  # the server again (Alice has a token)


def test_retry_after_is_whole_seconds_from_the_bucket() -> None:
    q = quotas(Clock())
    limits = Limits(rate_per_principal=RateLimit(rps=0.1, burst=1))
    assert q.refusal(scope(KEY_A), "s", limits) is None
    refused = q.refusal(scope(KEY_A), "s", limits)
    assert refused is not None and refused.headers["Retry-After"] == "10"


@dataclass
class HeldSession:
    """A session the gateway holds (as a stdio process's is), for the session table."""

    server_id: str = "s"
    last_used: float = 0.0
    idle: bool = True
    upstream_closed: bool = False

    async def aclose(self) -> None:
        pass


def test_session_slots_are_held_by_sessions_and_given_back_when_they_end() -> None:
    q = quotas(Clock())
    table = q.table
    limits = Limits(sessions_per_principal=2)
    tokens: list[str] = []

    async def sink(message: Message) -> None:
        pass

    async def open_one(issue: str | None) -> None:
        with q.session_slot(scope(KEY_A), "s", limits, sink) as send:
            headers = []
            if issue is not None:
                session = HeldSession() if issue == "held" else HttpSession("s", "http://r", f"up-{len(tokens)}")
                token = table.issue(session)
                tokens.append(token)
                headers.append((b"mcp-session-id", token.encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})

    anyio.run(open_one, "held")
    anyio.run(open_one, None)  # no session came of it: the slot went back
    anyio.run(open_one, "http")  # the upstream's session: the gateway holds nothing for it
    assert q.held(scope(KEY_A)) == 1
    anyio.run(open_one, "held")
    assert q.held(scope(KEY_A)) == 2
    with pytest.raises(GatewayError) as refused:
        anyio.run(open_one, "held")
    assert refused.value.status == 429 and "gateway.limits.sessions_per_principal" in refused.value.message
    assert q.held(scope(KEY_B)) == 0
    table.drop(tokens[0])  # DELETE
    assert q.held(scope(KEY_A)) == 1
    anyio.run(open_one, "held")
    assert q.held(scope(KEY_A)) == 2
    anyio.run(table.expire, 0.0)  # idle past the timeout: ended, uncounted
    assert q.held(scope(KEY_A)) == 0
    table.drop(tokens[0])  # a late DELETE gives nothing back twice
    assert q.held(scope(KEY_A)) == 0


# --- trusted proxies -----------------------------------------------------------------------------------------

NETS = networks(("10.0.0.0/8", "2001:db8:ffff::/48"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.43", ("192.0.2.43", 0)),
        ("192.0.2.43:47011", ("192.0.2.43", 47011)),
        ("[2001:db8::1]:4711", ("2001:db8::1", 4711)),
        ("[2001:db8::1]", ("2001:db8::1", 0)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("unknown", ("unknown", 0)),
        ("_hidden", ("_hidden", 0)),
        ("_SEVKISEK:_4711", ("_SEVKISEK", 0)),
        ("", None),
        ("_", None),
        ("example.com", None),
        ("[2001:db8::1", None),
        ("[192.0.2.1]", None),
        ("192.0.2.43:http", None),
        ("192.0.2.43:99999", None),
        ("192.0.2.43:" + "9" * 5000, None),
        ("192.0.2.43:\u00b2", None),
        ("300.1.1.1", None),
    ],
)
def test_forwarded_nodes(text: str, expected: tuple[str, int] | None) -> None:
    assert node(text) == expected


def test_forwarded_elements_quoting_and_case() -> None:
    assert forwarded_elements('for="[2001:db8::1]:4711";Proto=HTTPS, For=10.1.2.3;by=_proxy') == [
        {"for": "[2001:db8::1]:4711", "proto": "HTTPS"},
        {"for": "10.1.2.3", "by": "_proxy"},
    ]
    assert forwarded_elements('for="a,b;c";host="x\\"y"') == [{"for": "a,b;c", "host": 'x"y'}]
    assert forwarded_elements('for="unterminated') is None
    assert forwarded_elements("for") is None


@pytest.mark.parametrize(
    ("value", "client", "scheme"),
    [
        ("for=192.0.2.60;proto=https", ("192.0.2.60", 0), "https"),
        # Past every trusted hop from the right; the proto is the client's element's.
        ("for=192.0.2.60;proto=https, for=10.0.0.5;proto=http", ("192.0.2.60", 0), "https"),
        # A client's forged element left of the real one is never reached.
        ("for=203.0.113.1, for=192.0.2.60", ("192.0.2.60", 0), None),
        ('for="[2001:db8::1]:4711";proto=https', ("2001:db8::1", 4711), "https"),
        ("for=_hidden;proto=https", ("_hidden", 0), "https"),
        ("for=unknown", ("unknown", 0), None),
        # Unreadable: the peer stays the client.
        ("for=garbage;proto=https", ("10.0.0.1", 0), None),
        ('for="192.0.2.60', ("10.0.0.1", 0), None),
        ("for=192.0.2.60;proto=gopher", ("192.0.2.60", 0), None),
        ("proto=https", ("10.0.0.1", 0), None),
        # Garbage from the client, left of a trusted proxy's good hop: the good hop is the client.
        ("for=garbage, for=192.0.2.60;proto=https", ("192.0.2.60", 0), "https"),
        # A trusted hop, then garbage: the last trusted hop stands.
        ("for=garbage, for=10.9.9.9", ("10.9.9.9", 0), None),
    ],
)
def test_client_from_forwarded(value: str, client: tuple[str, int], scheme: str | None) -> None:
    assert client_from_forwarded(value, "10.0.0.1", NETS) == (client, scheme)


@pytest.mark.parametrize(
    ("xff", "proto", "client", "scheme"),
    [
        ("192.0.2.60", "https", ("192.0.2.60", 0), "https"),
        ("203.0.113.1, 192.0.2.60, 10.0.0.7", None, ("192.0.2.60", 0), None),
        ("192.0.2.60, 10.0.0.7", "https, http", ("192.0.2.60", 0), "https"),  # one proto per hop: aligned
        ("192.0.2.60, 10.0.0.7", "https", ("192.0.2.60", 0), "https"),  # else the last, the peer's
        ("2001:db8::1", "HTTPS", ("2001:db8::1", 0), "https"),
        ("[2001:db8::1]:4711", None, ("2001:db8::1", 4711), None),
        ("192.0.2.60:4711", None, ("192.0.2.60", 4711), None),
        ("not-an-address", "https", ("10.0.0.1", 0), "https"),
        ("192.0.2.60, , 10.0.0.7", None, ("10.0.0.7", 0), None),
        ("unknown", None, ("10.0.0.1", 0), None),
        ("", "https", ("10.0.0.1", 0), "https"),
        ("10.0.0.2, 10.0.0.3", None, ("10.0.0.2", 0), None),  # all trusted: the leftmost
    ],
)
def test_client_from_x_forwarded(xff: str, proto: str | None, client: tuple[str, int], scheme: str | None) -> None:
    assert client_from_x_forwarded(xff, proto, "10.0.0.1", NETS) == (client, scheme)


def test_a_long_chain_is_read_from_its_right_end() -> None:
    chain = ", ".join(["10.0.0.9"] * 100_000 + ["192.0.2.60"])
    assert client_from_x_forwarded(chain, None, "10.0.0.1", NETS) == (("192.0.2.60", 0), None)


async def seen_scope(
    headers: list[tuple[bytes, bytes]], peer: tuple[str, int] | None, proxies: tuple[str, ...], kind: str = "http"
) -> Scope:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing is answered: {message}")

    scope: Scope = {"type": kind, "scheme": "ws" if kind == "websocket" else "http", "headers": headers}
    if peer is not None:
        scope["client"] = peer
    layer = ErrorBoundary(TrustedProxies(app, lambda: proxies), lambda *_: None)
    await layer(scope, receive, send)
    return seen


FORWARDED = [(b"x-forwarded-for", b"192.0.2.60"), (b"x-forwarded-proto", b"https")]


def test_the_layer_believes_trusted_peers_only() -> None:
    seen = anyio.run(seen_scope, FORWARDED, ("127.0.0.1", 4000), ("127.0.0.0/8",))
    assert seen["client"] == ("192.0.2.60", 0)
    assert seen["scheme"] == "https"
    assert seen[PEER] == ("127.0.0.1", 4000)
    for peer, proxies in [(("192.0.2.9", 4000), ("127.0.0.0/8",)), (("127.0.0.1", 4000), ())]:
        seen = anyio.run(seen_scope, FORWARDED, peer, proxies)
        assert seen["client"] == peer and seen["scheme"] == "http" and seen[PEER] == peer


def test_the_layer_on_websockets_ipv4_mapped_peers_and_no_peer() -> None:
    seen = anyio.run(seen_scope, FORWARDED, ("::ffff:127.0.0.1", 4000), ("127.0.0.1",), "websocket")
    assert seen["client"] == ("192.0.2.60", 0) and seen["scheme"] == "wss"
    seen = anyio.run(seen_scope, FORWARDED, None, ("127.0.0.1",))
    assert "client" not in seen and seen[PEER] is None


def test_forwarded_wins_over_x_forwarded_for_and_lines_join() -> None:
    headers = [
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"forwarded", b"for=192.0.2.60;proto=https"),
        (b"forwarded", b"for=127.0.0.5"),
    ]
    seen = anyio.run(seen_scope, headers, ("127.0.0.1", 1), ("127.0.0.0/8",))
    assert seen["client"] == ("192.0.2.60", 0) and seen["scheme"] == "https"


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe", b'for="', b"for=" + b"x" * 100_000, b";;;,,,", b"for=[::1", b'for="[::1]:99999999999999999999"'],
)
def test_malformed_headers_never_fail(value: bytes) -> None:
    for name in (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto"):
        seen = anyio.run(seen_scope, [(name, value)], ("127.0.0.1", 1), ("127.0.0.1",))
        assert seen["client"][0] in ("127.0.0.1", "::1")  # never an address the gateway cannot trust
        assert seen["scheme"] == "http"


def test_networks_cover_ipv6_and_single_addresses() -> None:
    nets = networks(("::1", "192.0.2.0/24"))
    assert ipaddress.ip_address("::1") in nets[0]
    assert json.dumps([str(n) for n in nets]) == '["::1/128", "192.0.2.0/24"]'


def test_websocket_messages_over_the_rate_are_answered_or_dropped_never_responses() -> None:
    q = quotas(Clock())  # the clock stands still: no refill
    limits = Limits(rate_per_principal=RateLimit(rps=1, burst=1))
    frames = [
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',  # takes the one token: passed on
        '{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}',  # over: answered here
        '{"jsonrpc": "2.0", "method": "notifications/progress"}',  # over: dropped
        '[{"jsonrpc": "2.0", "id": 3, "method": "ping"}]',  # a batch, over: one error, id null
        '{"jsonrpc": "2.0", "id": 9, "result": {}}',  # the answer to the server's request: passed on
        "not json",  # the pump's to answer: passed on
    ]
    incoming = [{"type": "websocket.receive", "text": text} for text in frames]
    incoming.append({"type": "websocket.disconnect"})
    answered: list[dict[str, Any]] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        answered.append(json.loads(message["text"]))

    async def main() -> list[Message]:
        metered = q.metered(receive, send, scope(KEY_A), "s", limits)
        passed = []
        while (message := await metered())["type"] != "websocket.disconnect":
            passed.append(message)
        return passed

    passed = anyio.run(main)
    assert [m["text"] for m in passed] == [frames[0], frames[4], frames[5]]
    assert [a["id"] for a in answered] == [2, None]
    assert all(a["error"]["code"] == LIMITED and a["error"]["data"]["retryAfter"] >= 1 for a in answered)


@pytest.mark.parametrize(
    ("body", "opens"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}', True),
        (b'{"jsonrpc":"2.0","id":1,"method":"initi\\u0061lize","params":{}}', True),  # the same method name
        (b'[{"jsonrpc":"2.0","id":1,"method":"\\u0069nitialize"}]', True),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"text":"caf\\u00e9"}}}', False),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', False),
        (b"[" * 100_000 + b"\\", False),  # not JSON at all, however deep: the route answers it
    ],
)
def test_an_initialize_is_recognised_however_it_is_spelt(body: bytes, opens: bool) -> None:
    assert names_initialize(body) is opens
    scope = {"type": "http", "method": "POST", "headers": []}
    assert may_open_session(scope, "/mcp", body) is opens
    assert may_open_session({**scope, "headers": [(b"mcp-session-id", b"x")]}, "/mcp", body) is False


def test_shedding_looks_at_a_bounded_number_of_buckets() -> None:
    now = [0.0]
    buckets = Buckets(max_buckets=1000, clock=lambda: now[0])
    rate = RateLimit(rps=1, burst=1)
    for i in range(5000):  # a flood of callers, each taking its one token: none refills
        buckets.take(f"k{i}", rate, now[0])
    assert len(buckets) <= 1000
    assert buckets.wait("k4999", rate, now[0]) > 0  # the newest are kept
