"""Pure protocol code of the gateway: message parsing, eras, SSE framing, id remapping, security checks."""

from __future__ import annotations

import json
import random

import pytest

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.policy import Policy, check_path
from mcpfleet.gateway.protocol import (
    NOT_FORWARDED_DOWN,
    NOT_FORWARDED_UP,
    NOT_FORWARDED_UP_PREFIXES,
    EventMeter,
    IdMap,
    Message,
    Oversized,
    accepts,
    answered,
    answered_request,
    error_response,
    events,
    forwarded_for,
    is_initialize,
    is_modern,
    message_kind,
    parse_body,
    parse_message,
    sse_event,
    without,
)


def msg(data: dict[str, object]) -> Message:
    raw = json.dumps(data).encode()
    parsed = parse_message(raw)
    assert parsed is not None
    return parsed


def test_eras_follow_the_protocol_version_header() -> None:
    assert not is_modern(None)
    assert not is_modern("2025-11-25") and not is_modern("2024-11-05")
    assert is_modern("2026-07-28") and is_modern("2099-01-01")


def test_parse_body_keeps_single_line_bytes_and_reframes_multi_line_ones() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"x"}'
    (only,), batch = parse_body(body)
    assert only.raw == body and not batch
    (pretty,), _ = parse_body(b'{\n  "jsonrpc": "2.0",\n  "id": "a",\n  "method": "x"\n}')
    assert b"\n" not in pretty.raw and json.loads(pretty.raw)["id"] == "a"
    items, batch = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]')
    assert batch and [m.is_request for m in items] == [True, False]


@pytest.mark.parametrize(
    ("body", "code"), [(b"{nope", -32700), (b"[]", -32600), (b'{"id": 1}', -32600), (b"3", -32600)]
)
def test_parse_body_rejects_what_is_not_json_rpc(body: bytes, code: int) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_body(body)
    assert caught.value.code == code and caught.value.status == 400


def test_message_kinds_and_id_keys_keep_types_apart() -> None:
    request = msg({"jsonrpc": "2.0", "id": 1, "method": "tools/call"})
    same_text = msg({"jsonrpc": "2.0", "id": "1", "method": "tools/call"})
    assert request.is_request and request.id_key != same_text.id_key
    assert msg({"jsonrpc": "2.0", "method": "notifications/x"}).is_notification
    assert msg({"jsonrpc": "2.0", "id": 1, "result": {}}).is_response
    assert is_initialize([msg({"jsonrpc": "2.0", "id": 0, "method": "initialize"})])
    assert parse_message(b"not json") is None and parse_message(b"[1]") is None


def test_id_map_restores_ids_and_tokens_exactly_per_owner() -> None:
    ids = IdMap()
    alice, bob = object(), object()
    a = msg(
        {"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {"name": "t", "_meta": {"progressToken": 7}}}
    )
    b = msg({"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {"_meta": {"progressToken": 7}}})
    up_a, sent_a = ids.outgoing(a, alice)
    up_b, sent_b = ids.outgoing(b, bob)
    assert up_a != up_b and json.loads(sent_a)["id"] == up_a and json.loads(sent_a)["params"]["name"] == "t"
    token_b = json.loads(sent_b)["params"]["_meta"]["progressToken"]
    progress = msg(
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token_b, "progress": 1}}
    )
    owner, data = ids.incoming(progress)  # type: ignore[misc]
    assert owner is bob and json.loads(data)["params"]["progressToken"] == 7
    owner, data = ids.incoming(msg({"jsonrpc": "2.0", "id": up_a, "result": {"ok": True}}))  # type: ignore[misc]
    assert owner is alice and json.loads(data) == {"jsonrpc": "2.0", "id": "x", "result": {"ok": True}}
    assert ids.incoming(msg({"jsonrpc": "2.0", "id": up_a, "result": {}})) is None  # answered once only
    assert ids.forget(bob) == [up_b] and len(ids) == 0
    cancel = json.loads(ids.cancel(up_b, "gone"))
    assert cancel["method"] == "notifications/cancelled" and cancel["params"]["requestId"] == up_b


def test_id_map_routes_listen_events_to_the_listening_client_with_its_id() -> None:
    ids = IdMap()
    listener = object()
    up, _ = ids.outgoing(msg({"jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen"}), listener)
    key = "io.modelcontextprotocol/subscriptionId"
    event = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "u", "_meta": {key: up}}}
    owner, data = ids.incoming(msg(event))  # type: ignore[misc]
    assert owner is listener and json.loads(data)["params"] == {"uri": "u", "_meta": {key: "listen-1"}}
    assert ids.incoming(msg(event)) is not None  # a stream carries many events until its answer
    stray = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"_meta": {key: up + 1}}}
    assert ids.incoming(msg(stray)) is None


def test_id_map_drain_gives_every_owner_its_original_id() -> None:
    ids = IdMap()
    owner = object()
    ids.outgoing(msg({"jsonrpc": "2.0", "id": 41, "method": "a"}), owner)
    ids.outgoing(msg({"jsonrpc": "2.0", "id": "s", "method": "b"}), owner)
    assert sorted(map(str, (original for _, original in ids.drain()))) == ["41", "s"]
    assert len(ids) == 0


def test_sse_and_accept_and_errors() -> None:
    assert sse_event(b'{"a":1}') == b'event: message\ndata: {"a":1}\n\n'
    assert sse_event(b"/x", event="endpoint", event_id="3") == b"event: endpoint\nid: 3\ndata: /x\n\n"
    assert accepts("application/json, text/event-stream", "text/event-stream")
    assert accepts("*/*", "application/json") and not accepts("text/plain", "application/json")
    assert json.loads(error_response("r", -32014, "gone", {"x": 1})) == {
        "jsonrpc": "2.0",
        "id": "r",
        "error": {"code": -32014, "message": "gone", "data": {"x": 1}},
    }


def test_headers_towards_the_server_lose_hop_by_hop_ones_and_the_clients_claims() -> None:
    sent = [
        (b"host", b"gateway:8000"),
        (b"connection", b"keep-alive, X-Hop"),
        (b"x-hop", b"named by connection"),
        (b"connection", b"x-other"),  # a second Connection header names more
        (b"x-other", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"expect", b"100-continue"),
        (b"proxy-authorization", b"Basic x"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-anything", b"x"),
        (b"forwarded", b"for=203.0.113.7"),
        (b"x-real-ip", b"203.0.113.7"),
        (b"origin", b"http://localhost"),
        (b"content-length", b"12"),
        (b"mcp-session-id", b"gateway-id"),
        (b"mcp-param-a", b"1"),
        (b"authorization", b"Bearer t"),
        (b"mcp-param-a", b"2"),
        (b"cookie", b"a=1"),
    ]
    kept = without(sent, NOT_FORWARDED_UP, NOT_FORWARDED_UP_PREFIXES)
    assert kept == [
        (b"mcp-param-a", b"1"),
        (b"authorization", b"Bearer t"),
        (b"mcp-param-a", b"2"),
        (b"cookie", b"a=1"),
    ]
    # An entry's header replaces the client's: its name joins the names not forwarded.
    assert without(sent, NOT_FORWARDED_UP | {b"authorization"}, NOT_FORWARDED_UP_PREFIXES)[1:2] == [
        (b"mcp-param-a", b"2")
    ]
    answer = [
        (b"connection", b"close, x-secret"),
        (b"x-secret", b"s"),
        (b"proxy-authenticate", b"Basic"),
        (b"set-cookie", b"b=2"),
    ]
    assert without(answer, NOT_FORWARDED_DOWN, (b"proxy-",)) == [(b"set-cookie", b"b=2")]


def test_forwarded_headers_name_the_connection() -> None:
    assert forwarded_for(("10.0.0.5", 5000), "gw.example:8443", "https") == [
        (b"x-forwarded-for", b"10.0.0.5"),
        (b"x-forwarded-host", b"gw.example:8443"),
        (b"x-forwarded-proto", b"https"),
    ]
    # A WebSocket counts as the HTTP request it began as; no peer address (a unix socket): no X-Forwarded-For.
    assert forwarded_for(None, None, "ws") == [(b"x-forwarded-proto", b"http")]
    assert forwarded_for(("::1", 1), "h", "wss")[-1] == (b"x-forwarded-proto", b"https")


def test_event_meter_passes_whole_events_and_stops_those_over_the_limit() -> None:
    meter = EventMeter(40)
    small = b"event: message\r\ndata: {}\r\n\r\n"
    assert meter.feed(small)[0] is small  # a chunk of whole events that fits passes as it is
    assert meter.feed(b"data: 1") == []  # an unfinished event is held
    assert meter.feed(b"\n\ndata: 2\n") == [b"data: 1\n\n"]
    big = b"data: " + b"x" * 60
    assert meter.feed(b"\n" + big[:30]) == [b"data: 2\n\n"]
    assert meter.feed(big[30:]) == []  # over the limit: dropped, nothing held
    (dropped, after) = meter.feed(b"\r\n\r\ndata: 3\n\n")
    assert dropped == Oversized(len(big) + 4, big + b"\r\n\r\n", big + b"\r\n\r\n") and after == b"data: 3\n\n"
    assert meter.feed(b"data: end") == [] and meter.flush() == b"data: end"  # the stream's unfinished rest


def test_event_meter_on_any_cut_of_a_stream() -> None:
    def joined(items: list[bytes | Oversized]) -> list[bytes | int]:  # runs of bytes merged; an Oversized as its size
        merged: list[bytes | int] = []
        for item in items:
            if isinstance(item, Oversized):
                assert item.head and item.tail
                merged.append(item.size)
            elif item and merged and isinstance(merged[-1], bytes):
                merged[-1] += item
            elif item:
                merged.append(item)
        return merged

    for seed in range(300):
        rnd = random.Random(seed)
        limit = rnd.choice([20, 50, 200])
        ends = [b"\n\n", b"\r\r", b"\r\n\n"]
        sizes = [1, 5, 15, 30, 60]
        stream = [
            b"data: " + rnd.choice([b"a", b"b:c", b"{}"]) * rnd.choice(sizes) + rnd.choice(ends)
            for _ in range(rnd.randint(1, 12))
        ]
        data = b"".join(stream)
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(0, 10))))
        meter = EventMeter(limit)
        out: list[bytes | Oversized] = []
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            out.extend(meter.feed(data[start:end]))
        out.append(meter.flush())
        expected = [e if len(e) <= limit else Oversized(len(e), e, e) for e in stream]
        assert joined(out) == joined(list(expected)), (seed, cuts)


@pytest.mark.parametrize(
    ("head", "tail", "found"),
    [
        (b'data: {"jsonrpc":"2.0","id":7,"result":{"content":[{"text":"xx', b'xx"}]}}\n\n', ("answer", 7)),
        (b'event: message\r\ndata: {"jsonrpc":"2.0","id":"a\\"b","result":{"x', b'x"}}\r\n\r\n', ("answer", 'a"b')),
        (
            b'data: {"result":{"content":[{"text":"xx',
            b'xx"}]},"jsonrpc":"2.0","id":9}\n\n',
            ("answer", 9),
        ),  # TypeScript
        (b'data: {"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{"x', b'x"}}\n\n', ("other", None)),
        (
            b'data: {"method":"notifications/message","params":{"data":"xx',
            b'xx"},"jsonrpc":"2.0"}\n\n',
            ("other", None),
        ),
        (b'data: {"result":{"content":[{"text":"xx', b'xx","meta":{"id":4}}]}}\n\n', ("unknown", None)),  # nested id
        (b"data: not json", b"at all\n\n", ("unknown", None)),
    ],
)
def test_an_event_too_large_says_whom_it_answered(head: bytes, tail: bytes, found: tuple[str, object]) -> None:
    assert answered(Oversized(1 << 20, head, tail)) == found
    assert message_kind(head.rsplit(b"data: ", 1)[-1], tail.rstrip()) == found  # the same, on bare JSON


def test_an_event_that_does_not_say_is_taken_for_the_answer_to_the_posts_request() -> None:
    unknown = Oversized(1 << 20, b"data: nothing", b"to see\n\n")
    assert answered_request(unknown, b'{"jsonrpc":"2.0","id":"r1","method":"tools/call"}') == (True, "r1")
    assert answered_request(unknown, b'{"jsonrpc":"2.0","method":"notifications/initialized"}') == (False, None)
    assert answered_request(unknown, b"") == (False, None)


def test_events_of_a_run() -> None:
    run = b"event: endpoint\r\ndata: /messages/?session_id=1\r\n\r\n: ping\r\n\r\nid: 4\ndata: {\ndata: }\n\n"
    assert events(run) == [("endpoint", b"/messages/?session_id=1"), ("message", b"{\n}")]


@pytest.mark.parametrize(
    "raw", [b"/a/../b", b"/a/%2e%2E/b", b"/a/%2F", b"/a%5cb", b"/a//b", b"/a/\x00", b"a/b", b"/./a"]
)
def test_escaping_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        check_path(raw)
    assert caught.value.status == 400


def test_ordinary_paths_are_decoded_segments() -> None:
    assert check_path(b"/time/mcp") == ["time", "mcp"]
    assert check_path(b"/fs/files/a%20b.txt") == ["fs", "files", "a b.txt"]
    assert check_path(b"/fs/") == ["fs", ""]


def test_host_and_origin_policy() -> None:
    loopback = Policy.create("127.0.0.1", (), ())
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        loopback.check_host(host)
    loopback.check_origin(None)
    loopback.check_origin("http://localhost:3000")
    with pytest.raises(GatewayError) as host_error:
        loopback.check_host("evil.example:8000")
    assert host_error.value.status == 421
    with pytest.raises(GatewayError) as origin_error:
        loopback.check_origin("https://evil.example")
    assert origin_error.value.status == 403
    public = Policy.create("0.0.0.0", ("mcp.example.com",), ("https://app.example.com",))
    public.check_host("mcp.example.com:443")
    public.check_host("127.0.0.1:8000")  # a local probe is no rebinding attack
    with pytest.raises(GatewayError):
        public.check_host("evil.example")
    bare = Policy.create("0.0.0.0", (), ())
    bare.check_host("10.1.2.3:8000")  # an IP literal cannot be rebound
    with pytest.raises(GatewayError):
        bare.check_host("pod-10-1-2-3.anything:8000")  # a name must be listed in allowed_hosts
    public.check_origin("https://app.example.com/")
    with pytest.raises(GatewayError):
        public.check_origin("http://localhost:3000")  # loopback origins are trusted only on loopback binds


def test_underscore_spellings_of_dropped_headers_are_dropped_too() -> None:
    # CGI-style servers read X_Forwarded_For as X-Forwarded-For: a client must not slip its claims through.
    sent = [
        (b"x_forwarded_for", b"203.0.113.9"),
        (b"x_real_ip", b"203.0.113.9"),
        (b"proxy_authorization", b"Basic eA=="),
        (b"connection", b"x_hop"),
        (b"x-hop", b"1"),
        (b"x_custom", b"kept"),
    ]
    assert without(sent, NOT_FORWARDED_UP, NOT_FORWARDED_UP_PREFIXES) == [(b"x_custom", b"kept")]
