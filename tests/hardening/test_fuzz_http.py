"""Property-based fuzzing of the gateway's HTTP surface (hypothesis), against a running gateway on loopback.

Targets: an http server (passthrough), a stdio server in session mode, a stdio server in pool mode `shared`, the
legacy `/sse` + `/messages/` routes, `/ws`, and the status and admin routes. Inputs: malformed JSON-RPC (wrong
types, missing fields, huge ids, 10,000 levels of nesting, bytes that are not UTF-8, lone surrogate escapes,
NaN and Infinity, duplicate keys, batches where MCP no longer has them, non-objects), wrong and repeated headers
and Content-Length mismatches (raw sockets), bodies over `gateway.max_message_bytes` (64 KiB here), forged and
tampered session ids, and path tricks in `<id>` and `<path>`.

The property: every answer comes within 10 s and is never a 5xx; a 4xx carries a JSON-RPC error body
(`{"jsonrpc": "2.0", "id": ..., "error": {"code": int, "message": str}}`); on routes the gateway serves itself
(stdio, legacy, WebSocket) input that is not a valid JSON-RPC message always gets a 4xx, and a 200 carries the
answer to the request it was sent for. (What an http server answers on the passthrough is its own, passed on
unchanged, section 9.11; so are malformed HTTP requests that uvicorn refuses before the gateway sees them, with
its plain-text 400.) Afterwards the gateway answers /healthz, an SDK session works on every server, and it
logged no traceback. Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from mcpfleet.gateway.protocol import HANDSHAKE_VERSIONS

from conftest import DEMO, LoggedGateway
from support import ACCEPT, INIT, rpc_messages

LIMIT = 64 * 1024  # gateway.max_message_bytes of the fuzzed gateway
TIMEOUT = 10.0  # seconds any one answer may take
SERVED = ("local", "shared")  # stdio servers: the gateway itself answers every request
SLOW_TOOLS = {"sleep", "crash", "countdown", "confirm", "announce"}
UVICORN_400 = b"Invalid HTTP request received."
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the gateway under test -------------------------------------------------------------------------------


@dataclass
class Fuzzed:
    gw: LoggedGateway
    sessions: dict[str, str]  # server id -> a live session of it
    client: httpx2.Client
    legacy: str = ""  # the legacy route's message URL (its session stays open while the test runs)
    port: int = 0
    seen: dict[int, int] = field(default_factory=dict)  # statuses, for the record


@pytest.fixture
def fuzzed(logged_gateway: Callable[[str], LoggedGateway], demo_http: Callable[[str], str]) -> Iterator[Fuzzed]:
    web = demo_http("fuzz")
    gw = logged_gateway(
        f"gateway: {{max_message_bytes: {LIMIT}, keepalive_interval: 2}}\n"
        "servers:\n"
        f"  web: {{endpoint: '{web}/mcp'}}\n"
        f"  local: {{command: {DEMO}}}\n"
        f"  shared: {{command: {DEMO}, stateless: true, pool: {{mode: shared, max: 2}}}}\n"
    )
    with httpx2.Client(timeout=TIMEOUT) as client, legacy_session(gw) as legacy:
        sessions = {}
        for server_id in ("web", "local", "shared"):
            answer = client.post(gw.mcp(server_id), json=INIT, headers=ACCEPT)
            assert answer.status_code == 200, answer.text
            sessions[server_id] = answer.headers["mcp-session-id"]
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            client.post(gw.mcp(server_id), json=initialized, headers={**ACCEPT, "mcp-session-id": sessions[server_id]})
        fuzzed = Fuzzed(gw, sessions, client, legacy, int(gw.url.rsplit(":", 1)[1]))
        yield fuzzed
    print("statuses seen:", dict(sorted(fuzzed.seen.items())))
    gw.assert_unhurt("web", "local", "shared")


@contextlib.contextmanager
def legacy_session(gw: LoggedGateway) -> Iterator[str]:
    """A legacy HTTP+SSE session of `local`, its stream read (and dropped) by a thread; yields the message URL."""
    endpoint: list[str] = []
    found = threading.Event()
    stop = threading.Event()

    def read() -> None:
        with httpx2.Client(timeout=None) as client, client.stream("GET", f"{gw.url}/local/sse") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: /") and not endpoint:
                    endpoint.append(gw.url + line[6:])
                    found.set()
                if stop.is_set():
                    return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert found.wait(30), "no endpoint event on the legacy stream"
    try:
        yield endpoint[0]
    finally:
        stop.set()  # the keepalive comments (every 2 s) wake the reader


# --- what every answer must be ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


def post(f: Fuzzed, url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST and read the whole answer (an event stream to its end), failing the test if it takes over TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    try:
        with f.client.stream("POST", url, content=body, headers=headers) as response:
            data = b""
            for chunk in response.iter_raw():
                data += chunk
                assert time.monotonic() < deadline, f"no end to the answer after {TIMEOUT} s: {data[-500:]!r}"
    except httpx2.TimeoutException as exc:
        raise AssertionError(f"no answer within {TIMEOUT} s to {body[:300]!r}") from exc
    f.seen[response.status_code] = f.seen.get(response.status_code, 0) + 1
    return Answer(response.status_code, response.headers.get("content-type", ""), data)


def assert_json_rpc_error(answer: Answer, *, need_id: bool = True) -> dict[str, Any]:
    assert answer.content_type.startswith("application/json"), answer
    body = json.loads(answer.body)
    assert isinstance(body, dict) and body.get("jsonrpc") == "2.0", body
    error = body.get("error")
    assert isinstance(error, dict) and type(error.get("code")) is int and isinstance(error.get("message"), str), body
    assert not need_id or "id" in body, body
    return body


def assert_sound(answer: Answer, *, served: bool, invalid: str | None = None, request_id: Any = None) -> None:
    """The property. `served`: the gateway answers itself (not a passthrough); `invalid`: why the input is not
    a valid JSON-RPC message (None if it is); `request_id`: the id of the one request sent, if it was one."""
    assert answer.status < 500, answer
    if answer.status >= 400:
        assert_json_rpc_error(answer)
    if not served:
        return
    if invalid is not None:
        assert 400 <= answer.status < 500, f"accepted input that is {invalid}: {answer}"
    if answer.status == 200 and request_id is not None:
        response = httpx2.Response(200, headers={"content-type": answer.content_type}, content=answer.body)
        answers = [m for m in rpc_messages(response) if "method" not in m]
        assert [m.get("id") for m in answers] == [request_id], answers


# --- the JSON-RPC oracle: what MCP (2025-11-25) calls a message, independent of the gateway's code ------------


def invalid_reason(body: bytes, *, batch_allowed: bool) -> str | None:
    """Why `body` is not a JSON-RPC message MCP accepts, or None. JSON per RFC 8259 and I-JSON (no NaN, no lone
    surrogates); a request id is a string or an integer; params an object; batches gone since 2025-06-18."""

    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        data = json.loads(body, parse_constant=constant)
        json.dumps(data, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:
        return f"not JSON text ({type(exc).__name__})"
    items = data if isinstance(data, list) else [data]
    if isinstance(data, list) and not batch_allowed:
        return "a batch"
    if not items:
        return "an empty batch"
    for item in items:
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
            return "not a JSON-RPC 2.0 object"
        if "method" in item:
            if not isinstance(item["method"], str) or not isinstance(item.get("params", {}), dict):
                return "a bad method or params"
            if "id" in item and not (isinstance(item["id"], str) or type(item["id"]) is int):
                return "a bad id"
        elif "id" not in item or ("result" in item) == ("error" in item):
            return "neither a request, a notification nor a response"
        elif item["id"] is not None and not (isinstance(item["id"], str) or type(item["id"]) is int):
            return "a bad response id"
    return None


# --- strategies ---------------------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
IDS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=12),
    st.just("x" * 10_000),
    JSON_VALUES,
)
METHODS = st.one_of(
    st.sampled_from(["ping", "tools/list", "tools/call", "initialize", "resources/list", "notifications/initialized"]),
    st.sampled_from(["prompts/get", "logging/setLevel", "nope/nope", "notifications/cancelled"]),
    JSON_VALUES,
)
PARAMS = st.one_of(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["echo", "stats", "nope", ""])},
        optional={"arguments": JSON_VALUES, "_meta": JSON_VALUES},
    ),
    JSON_VALUES,
)
ABSENT = object()


@st.composite
def messages(draw: st.DrawFn) -> Any:
    """A JSON-RPC-ish object: each member present or not, well typed or not."""
    message: dict[str, Any] = {}
    for name, values in (
        ("jsonrpc", st.one_of(st.just("2.0"), st.just("2.0"), JSON_VALUES)),
        ("id", IDS),
        ("method", METHODS),
        ("params", PARAMS),
        ("result", JSON_VALUES),
        ("error", JSON_VALUES),
    ):
        weights = 0.8 if name in ("jsonrpc", "method") else 0.6 if name == "id" else 0.5 if name == "params" else 0.1
        if draw(st.floats(0, 1)) < weights:
            message[name] = draw(values)
    params = message.get("params")
    if isinstance(params, dict) and params.get("name") in SLOW_TOOLS:
        params["name"] = "echo"
    return message


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Bytes for a POST: a message, a batch (maybe empty) or another JSON value, serialized and then maybe
    damaged: nested 10,000 deep, cut short, bytes that are not UTF-8, a lone surrogate, a duplicate key."""
    shape = draw(st.sampled_from(["valid", "valid", "message", "message", "message", "batch", "other"]))
    if shape == "valid":  # a request the servers answer at once, so that answers are checked too
        value: Any = {"jsonrpc": "2.0", "id": draw(st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=12)))}
        value |= draw(
            st.sampled_from(
                [
                    {"method": "ping"},
                    {"method": "tools/list"},
                    {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "fuzz"}}},
                    {"method": "resources/read", "params": {"uri": "demo://readme"}},
                ]
            )
        )
        if draw(st.booleans()):
            return json.dumps(value).encode()
    elif shape == "message":
        value = draw(messages())
    elif shape == "batch":
        value = draw(st.lists(messages(), max_size=3))
    else:
        value = draw(JSON_VALUES)
    body = json.dumps(value, allow_nan=True).encode()
    damage = draw(st.sampled_from(["none", "none", "deep", "cut", "bytes", "surrogate", "duplicate", "nan"]))
    if damage == "deep":
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        nested = opener * 10_000 + b"1" + closer * 10_000
        body = body[:-1] + b',"params":' + nested + b"}" if body.startswith(b"{") and len(body) > 2 else nested
    elif damage == "cut" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif damage == "bytes":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00"])) + body[at:]
    elif damage == "surrogate" and body.startswith(b"{") and len(body) > 2:
        body = body[:-1] + b',"x":"\\ud800"}'
    elif damage == "duplicate" and body.startswith(b"{") and len(body) > 2:
        body = b'{"id":"first",' + body[1:]
    elif damage == "nan" and body.startswith(b"{") and len(body) > 2:
        body = body[:-1] + b',"n":' + draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999"])) + b"}"
    return body


def single_request_id(body: bytes) -> Any:
    """The id of the one request `body` is, if it parses as exactly that."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("method"), str) and "id" in data:
        return data["id"]
    return None


# --- the tests ------------------------------------------------------------------------------------------------


def fuzz_bodies_on_every_server_and_era(f: Fuzzed) -> None:

    @FUZZ
    @given(
        body=bodies(), server_id=st.sampled_from(["web", "local", "shared"]), era=st.sampled_from(["new", "in", "2026"])
    )
    def run(body: bytes, server_id: str, era: str) -> None:
        headers = dict(ACCEPT)
        if era == "in":
            headers |= {"mcp-session-id": f.sessions[server_id], "mcp-protocol-version": "2025-11-25"}
        elif era == "2026":
            headers["mcp-protocol-version"] = "2026-07-28"
        answer = post(f, f.gw.mcp(server_id), body, headers)
        served = server_id in SERVED
        invalid = invalid_reason(body, batch_allowed=False)
        assert_sound(
            answer, served=served, invalid=invalid, request_id=single_request_id(body) if not invalid else None
        )

    run()


def fuzz_bodies_on_the_legacy_and_websocket_routes(f: Fuzzed) -> None:
    ws_url = f.gw.url.replace("http://", "ws://") + "/local/ws"
    with ws_connect(ws_url, subprotocols=["mcp"], open_timeout=TIMEOUT, max_size=None) as ws:  # type: ignore[list-item]

        @FUZZ
        @given(body=bodies())
        def run(body: bytes) -> None:
            invalid = invalid_reason(body, batch_allowed=True)  # 2024-11-05, the legacy transport, had batches
            answer = post(f, f.legacy, body, {"content-type": "application/json"})
            assert answer.status < 500, answer
            if answer.status >= 400 or invalid is not None:
                assert 400 <= answer.status < 500, f"accepted input that is {invalid}: {answer}"
                assert_json_rpc_error(answer)
            try:
                frame = body.decode()  # a text frame: what is not UTF-8 cannot be sent as one
            except UnicodeDecodeError:
                return
            if invalid is not None and len(body) <= LIMIT:  # each gets an error at once: the reply is this frame's
                ws.send(frame)
                reply = json.loads(ws.recv(timeout=TIMEOUT))
                assert reply["error"]["code"] in (-32700, -32600), reply

        run()
        # Frames that are not JSON-RPC get an error frame each; the connection stays usable.
        for frame in ('{"jsonrpc":"2.0","id":1,"method":5}', "[]", "not json", '{"id":"\\ud800"}'):
            ws.send(frame)
            assert json.loads(ws.recv(timeout=TIMEOUT))["error"]["code"] in (-32700, -32600)
        ws.send(json.dumps(INIT))
        assert json.loads(ws.recv(timeout=TIMEOUT))["id"] == 1
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"jsonrpc": "2.0", "id": 2, "result": {}}
        # A frame over gateway.max_message_bytes closes the connection with 1009.
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"x": "y" * LIMIT}}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# --- raw HTTP: headers, lengths and paths the HTTP client would not send --------------------------------------


def raw_exchange(port: int, request: bytes, *, half_close: bool = False) -> Answer | None:
    """Send raw bytes and read until the server closes (requests say `Connection: close`); None when it closed
    without an answer. Fails the test after TIMEOUT."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + TIMEOUT
        try:
            while chunk := sock.recv(65536):
                data += chunk
                assert time.monotonic() < deadline, f"no end to the answer after {TIMEOUT} s"
        except ConnectionResetError:
            pass
        except TimeoutError as exc:
            raise AssertionError(f"no answer within {TIMEOUT} s to {request[:300]!r}") from exc
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"transfer-encoding") == b"chunked":
        body = dechunk(body)
    elif b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]  # what follows is another answer
    return Answer(status, headers.get(b"content-type", b"").decode(), body)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def http_request(method: str, target: bytes, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} ".encode() + target + b" HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def uvicorn_refused(answer: Answer | None) -> bool:
    """uvicorn's own 400 for a request its HTTP parser refuses (the gateway never sees it)."""
    return answer is not None and answer.status == 400 and answer.body.startswith(UVICORN_400)


CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}
).encode()
VERSIONS = st.sampled_from(["2025-11-25", "2025-06-18", "2024-11-05", "2026-07-28", "1999-01-01", "", "garbage"])
ACCEPTS = st.sampled_from(["application/json, text/event-stream", "text/html", "", "*/*", "application/json", "x"])
TYPES = st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1", "multipart/x"])


@st.composite
def header_sets(draw: st.DrawFn, sessions: dict[str, str], server_id: str) -> list[tuple[str, str]]:
    """Headers for a POST, some repeated with other values, some wrong."""
    headers = [("accept", draw(ACCEPTS)), ("content-type", draw(TYPES))]
    if draw(st.booleans()):
        headers.append(("content-type", draw(TYPES)))
    session_ids = st.sampled_from([sessions[server_id], sessions["local" if server_id != "local" else "web"], "x"])
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("mcp-session-id", draw(session_ids)))
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("mcp-protocol-version", draw(VERSIONS)))
    return headers


def fuzz_headers_and_lengths(f: Fuzzed) -> None:

    @FUZZ
    @given(data=st.data(), server_id=st.sampled_from(["web", "local", "shared"]))
    def run(data: st.DataObject, server_id: str) -> None:
        headers = data.draw(header_sets(f.sessions, server_id))
        length = data.draw(st.sampled_from(["exact", "exact", "short", "long", "twice"]))
        declared = {"exact": len(CALL), "short": len(CALL) // 2, "long": len(CALL) + 50, "twice": len(CALL)}[length]
        headers.append(("content-length", str(declared)))
        if length == "twice":
            headers.append(("content-length", str(len(CALL) + 1)))
        target = f"/{server_id}/mcp".encode()
        answer = raw_exchange(f.port, http_request("POST", target, headers, CALL), half_close=length == "long")
        if answer is None or uvicorn_refused(answer):
            assert length in ("long", "twice", "short"), f"no answer to a well-framed request: {headers}"
            return
        f.seen[answer.status] = f.seen.get(answer.status, 0) + 1
        assert answer.status < 500, answer
        if server_id not in SERVED:
            return  # the http server's answer (it may refuse a Content-Type in plain text, say)
        if answer.status >= 400:
            assert_json_rpc_error(answer)
        if length == "exact" and answer.status < 300:
            # Served: in its session (one Mcp-Session-Id, the right one), or as a 2026-07-28 request (none, and
            # one MCP-Protocol-Version that is not of the handshake era).
            sessions = [v for k, v in headers if k == "mcp-session-id"]
            versions = [v for k, v in headers if k == "mcp-protocol-version"]
            stateless = not sessions and len(versions) == 1 and versions[0] not in HANDSHAKE_VERSIONS
            assert sessions == [f.sessions[server_id]] or stateless, f"served with {sessions} and {versions}"

    run()


FORGERIES = ["random", "flipped", "other server", "long", "empty"]


def fuzz_session_ids(f: Fuzzed) -> None:
    """A session id that the gateway did not issue for this server is never served: 404 (or 400), everywhere."""

    @FUZZ
    @given(data=st.data(), server_id=st.sampled_from(["web", "local", "shared"]), how=st.sampled_from(FORGERIES))
    def run(data: st.DataObject, server_id: str, how: str) -> None:
        real = f.sessions[server_id]
        if how == "random":
            forged = data.draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=200))
        elif how == "flipped":
            raw = bytearray(base64.urlsafe_b64decode(real + "=" * (-len(real) % 4)))
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
            forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        elif how == "other server":
            forged = f.sessions[data.draw(st.sampled_from([s for s in f.sessions if s != server_id]))]
        elif how == "long":
            forged = real + "A" * data.draw(st.sampled_from([1_000, 10_000, 60_000]))
        else:
            forged = ""
        method = data.draw(st.sampled_from(["POST", "GET", "DELETE"]))
        target = f"/{server_id}/mcp".encode()
        if server_id == "local" and data.draw(st.booleans()):
            method, target = "POST", f"/local/messages/?session_id={forged}".encode()
        headers = [("accept", "application/json, text/event-stream"), ("content-type", "application/json")]
        headers += [
            ("mcp-session-id", forged),
            ("mcp-protocol-version", "2025-11-25"),
            ("content-length", str(len(CALL))),
        ]
        answer = raw_exchange(f.port, http_request(method, target, headers, CALL))
        if uvicorn_refused(answer):
            return  # a header line too long for its parser
        assert answer is not None, f"no answer to {how} session id"
        f.seen[answer.status] = f.seen.get(answer.status, 0) + 1
        assert answer.status in (400, 404), (how, forged[:80], answer)
        assert_json_rpc_error(answer)

    run()


SEGMENT_TRICKS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e",
    "%2F",
    "%2f",
    "a%2Fb",
    "%5C",
    "%5c",
    "",
    "%00",
    "a%00b",
    "%C3%A9",
    "\u00e9",
    "\u202e",
    "\U0001f600",
    "x" * 5000,
    "%",
    "%zz",
    "~",
    "a;b",
    "a b",
]


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    """A raw request target built from tricky and ordinary segments."""
    first = draw(st.sampled_from(["web", "local", "shared", "healthz", "servers", "admin", *SEGMENT_TRICKS]))
    rest = draw(st.lists(st.sampled_from(["mcp", "sse", "messages", "ws", "x", "", *SEGMENT_TRICKS]), max_size=3))
    path = "/" + "/".join([first, *rest])
    if draw(st.booleans()):
        path = path.replace("/", "//", 1)
    raw = path.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        raw += b"\x00"
    return raw + draw(st.sampled_from([b"", b"?session_id=x", b"?a=%00"]))


def refused_path(raw: bytes) -> bool:
    """What the path check (section 9.12) must refuse with 400: NUL, encoded separators, dot or empty segments."""
    path = raw.split(b"?", 1)[0]
    if b"\x00" in path or any(code in path.lower() for code in (b"%2f", b"%5c", b"%00")):
        return True
    segments = path[1:].split(b"/")
    dots = {b".", b"..", b"%2e", b"%2e%2e", b".%2e", b"%2e."}
    return any(s.lower() in dots or (s == b"" and i != len(segments) - 1) for i, s in enumerate(segments))


def fuzz_paths(f: Fuzzed) -> None:

    @FUZZ
    @given(target=paths(), method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]))
    def run(target: bytes, method: str) -> None:
        headers = [("accept", "application/json, text/event-stream"), ("content-type", "application/json")]
        headers.append(("content-length", str(len(CALL))))
        answer = raw_exchange(f.port, http_request(method, target, headers, CALL))
        if uvicorn_refused(answer):
            return  # a request line its parser refuses (raw NUL, spaces, bytes that are not a target)
        assert answer is not None, target
        f.seen[answer.status] = f.seen.get(answer.status, 0) + 1
        assert answer.status < 500, (target, answer)
        if refused_path(target):
            assert answer.status == 400, (target, answer)
        first = target.split(b"?")[0].split(b"/")[1]
        forwarded = first == b"web" and not refused_path(target)  # `/web/<path>` reaches the http server
        if answer.status >= 400 and not forwarded:
            assert_json_rpc_error(answer)

    run()


def fuzz_status_and_admin_routes(f: Fuzzed) -> None:
    routes = ["/", "/healthz", "/readyz", "/servers", "/metrics", "/admin/reload", "/admin/x", "/admin", "/nope"]

    @FUZZ
    @given(
        route=st.sampled_from(routes),
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        body=st.one_of(st.just(b""), bodies(), st.binary(max_size=2048)),
        extra=st.lists(
            st.sampled_from(
                [
                    ("x-forwarded-for", "10.0.0.1"),
                    ("forwarded", "for=1.2.3.4"),
                    ("origin", "http://evil.example"),
                    ("host", "evil.example"),
                ]
            ),
            max_size=2,
        ),
    )
    def run(route: str, method: str, body: bytes, extra: list[tuple[str, str]]) -> None:
        headers = [("content-length", str(len(body))), *extra]
        answer = raw_exchange(f.port, http_request(method, route.encode(), headers, body))
        if uvicorn_refused(answer):
            return  # e.g. a second Host header
        assert answer is not None, (method, route)
        f.seen[answer.status] = f.seen.get(answer.status, 0) + 1
        assert answer.status < 500, (method, route, answer)
        if answer.status >= 400 and method != "HEAD":
            assert_json_rpc_error(answer)

    run()


def fuzz_bodies_over_the_limit(f: Fuzzed) -> None:
    routes = ["/web/mcp", "/local/mcp", "/shared/mcp", "/local/messages/?session_id=x", "/servers", "/admin/reload"]

    @settings(FUZZ, max_examples=20)
    @given(route=st.sampled_from(routes), size=st.integers(LIMIT + 1, 4 * LIMIT), chunked=st.booleans())
    def run(route: str, size: int, chunked: bool) -> None:
        body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"y" * size + b'"}}'
        headers = [("accept", "application/json, text/event-stream"), ("content-type", "application/json")]
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
            payload = (
                b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:LIMIT], body[LIMIT:])) + b"0\r\n\r\n"
            )
        else:
            headers.append(("content-length", str(len(body))))
            payload = body
        answer = raw_exchange(f.port, http_request("POST", route.encode(), headers, payload))
        assert answer is not None, route
        f.seen[answer.status] = f.seen.get(answer.status, 0) + 1
        if route == "/servers" and chunked:  # a route that reads no body never counts an undeclared one
            assert answer.status in (200, 413), answer
            return
        assert answer.status == 413, (route, answer)
        assert "max_message_bytes" in assert_json_rpc_error(answer)["error"]["message"] or route == "/admin/reload"

    run()


# One gateway for many runs: starting one, and checking it afterwards, takes longer than the runs.


def test_malformed_json_rpc(fuzzed: Fuzzed) -> None:
    fuzz_bodies_on_every_server_and_era(fuzzed)
    fuzz_bodies_on_the_legacy_and_websocket_routes(fuzzed)


def test_raw_http_faults(fuzzed: Fuzzed) -> None:
    fuzz_headers_and_lengths(fuzzed)
    fuzz_session_ids(fuzzed)
    fuzz_paths(fuzzed)
    fuzz_status_and_admin_routes(fuzzed)
    fuzz_bodies_over_the_limit(fuzzed)
