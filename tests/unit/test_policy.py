"""The policy layers (`gateway/policy/`) at the ASGI level: plain coroutines for receive and send, no network.

Each layer is wrapped, as the gateway wraps it, in `ErrorBoundary`, so a refusal is seen as the client
sees it: a status, a JSON-RPC error body and headers. The Host/Origin rule itself is tabled in
test_security.py; here it is the layers' part: what reaches the app inside, what is answered, and that the
settings read are the ones in force.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, ErrorBoundary, Message, Receive, Scope, Send, header, read_body, respond
from mcpfleet.gateway.policy import (
    ANONYMOUS,
    IDENTITY,
    Authentication,
    BodyLimit,
    Cors,
    Credentials,
    HostOriginGuard,
    Identity,
    Policy,
    forbidden,
    unauthorized,
)
from mcpfleet.gateway.policy.credentials import GatewayAuthenticator, audience_notice, open_door
from mcpfleet.registry.model import ApiKey, Auth
from mcpfleet.registry.model import Gateway as GatewaySettings

LOOPBACK = Policy.create("127.0.0.1", (), ())
LISTED = Policy.create("127.0.0.1", ("mcp.example.com",), ("https://app.example.com",))
ACAO = "access-control-allow-origin"


def http_scope(
    headers: list[tuple[str, str]] | None = None, *, method: str = "POST", path: str = "/local/mcp"
) -> Scope:
    pairs = [("host", "127.0.0.1:8000")] if headers is None else headers
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in pairs],
    }


def ws_scope(headers: list[tuple[str, str]], *, http_response: bool = True) -> Scope:
    return {
        "type": "websocket",
        "path": "/local/ws",
        "raw_path": b"/local/ws",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "subprotocols": ["mcp"],
        "extensions": {"websocket.http.response": {}} if http_response else {},
    }


def feeding(*chunks: bytes) -> Receive:
    """A client that sends `chunks` as the body, then waits, then disconnects."""
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def never() -> Message:
    raise AssertionError("the body was read")


class Answer:
    """What went out: every message, and the HTTP (or WebSocket-denial) status, headers and body."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.messages if m["type"].endswith("response.start")))

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"].endswith("response.start"))
        return {k.decode(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"].endswith("response.body"))

    @property
    def error(self) -> dict[str, Any]:
        payload = json.loads(self.body)
        assert payload["jsonrpc"] == "2.0"
        error: dict[str, Any] = payload["error"]
        return error


class Inner:
    """The app inside the layers: records what reached it, reads the body, answers 200 with it."""

    def __init__(self, raises: GatewayError | None = None) -> None:
        self.scopes: list[Scope] = []
        self.receive: Receive | None = None
        self.send: Send | None = None
        self.raises = raises

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        self.receive, self.send = receive, send
        if self.raises is not None:
            raise self.raises
        if scope["type"] == "http":
            body = await read_body(receive) if scope["method"] == "POST" else b""
            scope["mcpfleet.body"] = body
            await respond(send, 200, body or b"{}")


class Counted:
    def __init__(self) -> None:
        self.errors: list[tuple[str, int, int]] = []

    def __call__(self, server: str, code: int, status: int, message: str, caller: str | None = None) -> None:
        self.errors.append((server, code, status))


def serve(app: App, scope: Scope, receive: Receive | None = None) -> Answer:
    answer = Answer()
    anyio.run(app, scope, receive or feeding(b"{}"), answer.send)
    return answer


def bounded(app: App, counted: Counted | None = None) -> App:
    return ErrorBoundary(app, counted or Counted())


# --- HostOriginGuard --------------------------------------------------------------------------------------


def guarded(inner: Inner, policy: Callable[[], Policy] = lambda: LOOPBACK, counted: Counted | None = None) -> App:
    return bounded(HostOriginGuard(inner, policy), counted)


@pytest.mark.parametrize(
    ("headers", "status", "starts"),
    [
        ([("host", "127.0.0.1.example.net")], 421, "Host '127.0.0.1.example.net' is not served here"),
        ([], 421, "the request has no Host header"),
        ([("host", "127.0.0.1"), ("host", "evil.example")], 421, "the request has 2 Host headers"),
        ([("host", "localhost:8000"), ("origin", "https://evil.example")], 403, "Origin 'https://evil.example'"),
        ([("host", "evil.example"), ("origin", "https://evil.example")], 421, "Host 'evil.example'"),  # Host first
        ([("host", "localhost"), ("origin", "http://localhost:3000"), ("origin", "null")], 403, "the request has 2"),
    ],
)
def test_the_guard_refuses_before_anything_inside_runs(
    headers: list[tuple[str, str]], status: int, starts: str
) -> None:
    inner, counted = Inner(), Counted()
    answer = serve(guarded(inner, counted=counted), http_scope(headers), never)
    assert answer.status == status and not inner.scopes
    assert answer.error["code"] == -32600 and answer.error["message"].startswith(starts)
    assert json.loads(answer.body)["id"] is None
    assert counted.errors == [("-", -32600, status)]


def test_the_guard_passes_what_the_policy_accepts_untouched() -> None:
    inner = Inner()
    receive = feeding(b'{"a": 1}')
    answer = Answer()
    scope = http_scope([("host", "[::1]:8000"), ("origin", "http://localhost:3000")])
    anyio.run(HostOriginGuard(inner, lambda: LOOPBACK), scope, receive, answer.send)
    assert answer.status == 200 and answer.body == b'{"a": 1}'
    assert inner.receive is receive and inner.send == answer.send  # nothing wrapped


def test_the_guard_reads_the_policy_in_force() -> None:
    in_force = [LOOPBACK]
    app = guarded(Inner(), lambda: in_force[0])
    scope = [("host", "mcp.example.com"), ("origin", "https://app.example.com")]
    assert serve(app, http_scope(scope)).status == 421
    in_force[0] = LISTED  # a reload
    assert serve(app, http_scope(scope)).status == 200


def test_a_refused_websocket_handshake_gets_the_status_and_the_body() -> None:
    inner = Inner()
    taken: list[Message] = []

    async def receive() -> Message:
        taken.append({"type": "websocket.connect"})
        return taken[-1]

    answer = Answer()
    scope = ws_scope([("host", "localhost"), ("origin", "https://evil.example")])
    anyio.run(guarded(inner), scope, receive, answer.send)
    assert not inner.scopes and len(taken) == 1  # the connect was taken before the answer
    assert answer.messages[0]["type"] == "websocket.http.response.start"
    assert answer.status == 403 and answer.error["message"].startswith("Origin 'https://evil.example'")


def test_without_the_http_response_extension_a_refused_handshake_is_closed_with_1008() -> None:
    answer = Answer()

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    anyio.run(guarded(Inner()), ws_scope([("host", "evil.example")], http_response=False), receive, answer.send)
    [close] = answer.messages
    assert close["type"] == "websocket.close" and close["code"] == 1008
    assert close["reason"].startswith("Host 'evil.example' is not served here")


# --- Cors -------------------------------------------------------------------------------------------------


def cors(inner: App, policy: Policy = LOOPBACK) -> App:
    """As the gateway stacks it: CORS outside the error boundary, the guard inside."""
    return Cors(bounded(HostOriginGuard(inner, lambda: policy)), lambda: policy)


def test_an_allowed_origin_gets_the_cors_headers_on_the_answer() -> None:
    answer = serve(cors(Inner()), http_scope([("host", "localhost:8000"), ("origin", "http://localhost:3000")]))
    assert answer.status == 200
    assert answer.headers[ACAO] == "http://localhost:3000"
    assert answer.headers["access-control-expose-headers"] == "mcp-session-id, mcp-protocol-version"
    assert answer.headers["vary"] == "origin"


def test_an_allowed_origin_can_read_the_gateways_errors() -> None:
    inner = Inner(raises=GatewayError.session_not_found())
    answer = serve(cors(inner), http_scope([("host", "localhost"), ("origin", "http://localhost:3000")]))
    assert answer.status == 404 and answer.headers[ACAO] == "http://localhost:3000"
    assert "initialize again" in answer.error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        [("host", "evil.example"), ("origin", "http://localhost:3000")],  # a good Origin does not rescue a bad Host
        [("host", "localhost"), ("origin", "https://evil.example")],
        [("host", "localhost"), ("origin", "http://localhost:3000"), ("origin", "http://localhost:3000")],
    ],
)
@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
def test_refusals_and_refused_preflights_carry_no_cors_headers(headers: list[tuple[str, str]], method: str) -> None:
    inner = Inner()
    scope = http_scope([*headers, ("access-control-request-method", "POST")], method=method)
    answer = serve(cors(inner), scope)
    assert answer.status in (403, 421) and not inner.scopes
    assert not any(name.startswith("access-control") for name in answer.headers)


def test_a_preflight_is_answered_here_with_the_mcp_headers_only() -> None:
    inner = Inner()
    requested = "Content-Type, Authorization, Mcp-Session-Id, MCP-Param-Region, X-Evil, mcp-method"
    scope = http_scope(
        [
            ("host", "mcp.example.com"),
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", requested),
        ],
        method="OPTIONS",
        path="/no-such-server/anything",  # answered whatever the path: routing comes after the preflight
    )
    answer = serve(cors(inner, LISTED), scope, never)
    assert answer.status == 204 and not inner.scopes and answer.body == b""
    assert answer.headers[ACAO] == "https://app.example.com"
    assert answer.headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    allowed = answer.headers["access-control-allow-headers"]
    assert allowed == "content-type, authorization, mcp-session-id, mcp-param-region, mcp-method"
    assert answer.headers["access-control-max-age"] == "600"


def test_without_an_origin_cors_passes_the_request_as_it_came() -> None:
    inner = Inner()
    receive, answer = feeding(b"{}"), Answer()
    anyio.run(Cors(inner, lambda: LOOPBACK), http_scope(method="OPTIONS"), receive, answer.send)
    assert inner.scopes and inner.receive is receive and inner.send == answer.send
    assert ACAO not in answer.headers


def test_cors_leaves_websockets_alone() -> None:
    inner = Inner()

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    anyio.run(Cors(inner, lambda: LOOPBACK), ws_scope([("origin", "http://localhost:3000")]), receive, Answer().send)
    assert inner.scopes


# --- BodyLimit ----------------------------------------------------------------------------------------------


def limited(inner: Inner, limit: Callable[[], int] = lambda: 1024, counted: Counted | None = None) -> App:
    return bounded(BodyLimit(inner, limit), counted)


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    inner, counted = Inner(), Counted()
    scope = http_scope([("host", "localhost"), ("content-length", "1025")])
    answer = serve(limited(inner, counted=counted), scope, never)
    assert answer.status == 413 and not inner.scopes
    assert answer.error == {
        "code": -32600,
        "message": "the body exceeds 1024 bytes (setting: gateway.max_message_bytes)",
    }
    assert counted.errors == [("-", -32600, 413)]


def test_a_declared_length_within_the_limit_costs_no_wrapper() -> None:
    inner = Inner()
    receive = feeding(b"x" * 1024)
    answer = Answer()
    scope = http_scope([("host", "localhost"), ("content-length", "1024")])
    anyio.run(BodyLimit(inner, lambda: 1024), scope, receive, answer.send)
    assert answer.status == 200 and len(answer.body) == 1024
    assert inner.receive is receive  # the server frames a declared length: nothing to count


def test_a_chunked_body_is_counted_and_refused_once_it_grows_past_the_limit() -> None:
    inner = Inner()
    scope = http_scope([("host", "localhost"), ("transfer-encoding", "chunked")])
    answer = serve(limited(inner), scope, feeding(b"x" * 600, b"x" * 600, b"x" * 600))
    assert inner.scopes and answer.status == 413  # refused while the app inside was reading it
    assert answer.error["message"] == "the body exceeds 1024 bytes (setting: gateway.max_message_bytes)"


def test_a_chunked_body_within_the_limit_arrives_whole() -> None:
    scope = http_scope([("host", "localhost"), ("transfer-encoding", "chunked")])
    answer = serve(limited(Inner()), scope, feeding(b"x" * 512, b"y" * 512))
    assert answer.status == 200 and answer.body == b"x" * 512 + b"y" * 512


def test_chunked_framing_is_counted_even_with_a_content_length() -> None:
    scope = http_scope([("host", "localhost"), ("content-length", "10"), ("transfer-encoding", "chunked")])
    assert serve(limited(Inner()), scope, feeding(b"x" * 2000)).status == 413


def test_http2_without_a_declared_length_is_counted() -> None:
    scope = http_scope([("host", "localhost")])
    scope["http_version"] = "2"
    assert serve(limited(Inner()), scope, feeding(b"x" * 2000)).status == 413


def test_the_body_limit_in_force_is_read_per_request() -> None:
    in_force = [1024]
    app = limited(Inner(), lambda: in_force[0])
    scope = [("host", "localhost"), ("content-length", "2000")]
    assert serve(app, http_scope(scope), feeding(b"x" * 2000)).status == 413
    in_force[0] = 4096  # a reload
    assert serve(app, http_scope(scope), feeding(b"x" * 2000)).status == 200


# --- ErrorBoundary --------------------------------------------------------------------------------------------


def test_errors_carry_the_requests_id_and_the_server_they_were_counted_for() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["mcpfleet.server"] = "local"
        scope["mcpfleet.body"] = await read_body(receive)
        raise GatewayError(406, -32600, "must accept application/json and text/event-stream")

    counted = Counted()
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}).encode()
    answer = serve(bounded(app, counted), http_scope(), feeding(body))
    assert answer.status == 406 and json.loads(answer.body)["id"] == 7
    assert counted.errors == [("local", -32600, 406)]


def test_an_error_after_the_response_started_is_logged_not_answered(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise GatewayError.unreachable("local", "connection reset")

    counted = Counted()
    with caplog.at_level(logging.WARNING, logger="mcpfleet.gateway"):
        answer = serve(bounded(app, counted), http_scope())
    assert [m["type"] for m in answer.messages] == ["http.response.start"]
    assert counted.errors == [("-", -32012, 502)]
    assert "error after the response started" in caplog.text


# --- Authentication ---------------------------------------------------------------------------------------------


class Tokens:
    """An in-memory authenticator: bearer tokens to subjects; `admin` may call, others are forbidden."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.calls = 0

    async def authenticate(self, scope: Scope) -> Identity:
        self.calls += 1
        value = header(scope, b"authorization")
        if value is None:
            raise unauthorized("this gateway needs a bearer token", 'Bearer realm="mcpfleet"')
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise unauthorized("the bearer token is not valid", 'Bearer realm="mcpfleet", error="invalid_token"')
        if self.tokens[token] != "admin":
            raise forbidden(f"{self.tokens[token]!r} may not call this gateway")
        return Identity(self.tokens[token], {"token": token})


def authenticated(inner: Inner, tokens: Tokens) -> App:
    return bounded(Authentication(inner, lambda: Credentials(tokens, consumes=False)))


@pytest.mark.parametrize(
    ("credentials", "status", "challenge"),
    [
        ([], 401, 'Bearer realm="mcpfleet"'),
        ([("authorization", "Bearer nope")], 401, 'Bearer realm="mcpfleet", error="invalid_token"'),
        ([("authorization", "Basic YTpi")], 401, 'Bearer realm="mcpfleet", error="invalid_token"'),
        ([("authorization", "Bearer guest-token")], 403, 'Bearer error="insufficient_scope"'),
    ],
)
def test_a_request_without_good_credentials_is_refused_with_a_challenge(
    credentials: list[tuple[str, str]], status: int, challenge: str
) -> None:
    inner = Inner()
    tokens = Tokens({"admin-token": "admin", "guest-token": "guest"})
    answer = serve(authenticated(inner, tokens), http_scope([("host", "localhost"), *credentials]), never)
    assert answer.status == status and not inner.scopes
    assert answer.headers["www-authenticate"] == challenge
    assert answer.error["code"] == -32600 and json.loads(answer.body)["id"] is None


def test_good_credentials_reach_the_app_with_the_identity_in_the_scope() -> None:
    inner = Inner()
    tokens = Tokens({"admin-token": "admin"})
    answer = serve(
        authenticated(inner, tokens), http_scope([("host", "localhost"), ("authorization", "Bearer admin-token")])
    )
    assert answer.status == 200
    assert inner.scopes[0][IDENTITY] == Identity("admin", {"token": "admin-token"})


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_are_not_authenticated(path: str) -> None:
    inner, tokens = Inner(), Tokens({})
    assert serve(authenticated(inner, tokens), http_scope(method="GET", path=path)).status == 200
    assert tokens.calls == 0 and inner.scopes[0][IDENTITY] == ANONYMOUS


@pytest.mark.parametrize("path", ["/servers", "/metrics", "/", "/admin/reload", "/healthz/", "/local/mcp"])
def test_everything_else_is_authenticated(path: str) -> None:
    assert serve(authenticated(Inner(), Tokens({})), http_scope(method="GET", path=path)).status == 401


def test_a_websocket_handshake_is_authenticated_and_refused_with_the_challenge() -> None:
    async def receive() -> Message:
        return {"type": "websocket.connect"}

    inner, answer = Inner(), Answer()
    anyio.run(authenticated(inner, Tokens({})), ws_scope([("host", "localhost")]), receive, answer.send)
    assert not inner.scopes and answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="mcpfleet"'


def test_the_whole_stack_in_the_gateways_order() -> None:
    """CORS, boundary, guard, limit, authentication: a refused origin is a 403 before credentials are asked
    for; an allowed one reads the 401 and its challenge (a browser page must learn to log in)."""
    inner, tokens = Inner(), Tokens({"admin-token": "admin"})
    policy = LOOPBACK
    stack = Cors(
        bounded(
            HostOriginGuard(
                BodyLimit(Authentication(inner, lambda: Credentials(tokens, consumes=False)), lambda: 1024),
                lambda: policy,
            )
        ),
        lambda: policy,
    )
    refused = serve(stack, http_scope([("host", "localhost"), ("origin", "https://evil.example")]), never)
    assert refused.status == 403 and tokens.calls == 0 and ACAO not in refused.headers
    too_big = serve(stack, http_scope([("host", "localhost"), ("content-length", "5000")]), never)
    assert too_big.status == 413 and tokens.calls == 0  # refused on its headers before any token check
    page = [("host", "localhost"), ("origin", "http://localhost:3000")]
    challenged = serve(stack, http_scope(page), never)
    assert challenged.status == 401 and challenged.headers[ACAO] == "http://localhost:3000"
    assert challenged.headers["www-authenticate"] == 'Bearer realm="mcpfleet"'
    passed = serve(stack, http_scope([*page, ("authorization", "Bearer admin-token")]))
    assert passed.status == 200 and passed.headers[ACAO] == "http://localhost:3000"
    assert inner.scopes[-1][IDENTITY].subject == "admin"


# --- the gateway's own authenticator (policy/credentials.py) ----------------------------------------------


def test_the_auth_module_exports_what_others_import_from_it() -> None:
    import mcpfleet.gateway.policy.auth as auth

    for name in ("forbidden", "unauthorized", "CONSUMED", "PROBES", "Credentials", "Identity"):
        assert name in auth.__all__
    assert all(hasattr(auth, name) for name in auth.__all__)


NON_ASCII_KEY = "clé-très-secrète-0123456789"


@pytest.mark.parametrize(
    "pair",
    [
        (b"x-api-key", NON_ASCII_KEY.encode()),
        (b"authorization", b"Bearer " + NON_ASCII_KEY.encode()),
        (b"authorization", b"Basic " + base64.b64encode(b"anyone:" + NON_ASCII_KEY.encode())),
    ],
    ids=["X-API-Key", "Bearer", "Basic"],
)
def test_a_key_beyond_ascii_matches_when_sent_as_utf8(pair: tuple[bytes, bytes]) -> None:
    """The header's bytes are hashed as they came; the configured key is hashed as UTF-8 (RFC 7617's charset
    for Basic, what curl and browsers send): the same bytes, so the key matches."""
    auth = Auth(api_keys=(ApiKey(name="ops", key=NON_ASCII_KEY),))
    authenticator = GatewayAuthenticator(auth, lambda _: "http://127.0.0.1:8000")
    scope = {"type": "http", "path": "/local/mcp", "headers": [(b"host", b"127.0.0.1:8000"), pair]}
    assert anyio.run(authenticator.authenticate, scope).principal == "key:ops"
    # The same characters in another encoding are other bytes: refused, not a traceback.
    latin1 = [(b"host", b"127.0.0.1:8000"), (b"x-api-key", NON_ASCII_KEY.encode("latin-1"))]
    with pytest.raises(GatewayError) as refused:
        anyio.run(authenticator.authenticate, {"type": "http", "path": "/local/mcp", "headers": latin1})
    assert refused.value.status == 401


@pytest.mark.parametrize(
    ("settings", "loopback", "warned"),
    [
        ({"auth": {"jwt": {"issuer": "https://login.example.com"}}}, False, True),
        ({"auth": {"jwt": {"issuer": "https://login.example.com"}}}, True, False),
        (
            {"auth": {"jwt": {"issuer": "https://login.example.com"}}, "public_url": "https://mcp.example.com"},
            False,
            False,
        ),
        ({"auth": {"jwt": {"issuer": "https://login.example.com", "audience": ["api://mcp"]}}}, False, False),
        ({"auth": {"api_keys": [{"name": "ci", "sha256": "0" * 64}]}}, False, False),
    ],
    ids=["jwt off loopback", "loopback", "public_url", "fixed audience", "keys only"],
)
def test_jwt_audiences_from_host_off_loopback_are_warned_about(
    settings: dict[str, Any], loopback: bool, warned: bool
) -> None:
    notice = audience_notice(GatewaySettings.model_validate(settings), loopback)
    assert (notice is not None) is warned
    if notice is not None:
        assert "gateway.public_url" in notice and "Host" in notice


@pytest.mark.parametrize(
    ("bind", "words"),
    [
        ("127.0.0.1", None),
        ("localhost", None),
        ("[::1]", None),
        ("0.0.0.0", "on 0.0.0.0 (--host), beyond this machine,"),
        ("10.1.2.3", "on 10.1.2.3 (--host), beyond this machine,"),
        ("[2001:db8::1]", "beyond this machine,"),
        ("vm", "on vm (--host), a name other than localhost (write 127.0.0.1 to stay on this machine),"),
    ],
)
def test_an_open_door_is_refused_off_loopback_and_the_message_says_why(bind: str, words: str | None) -> None:
    """No credentials on a bind beyond loopback; a name (whatever it resolves to now) is not loopback."""
    problem = open_door(Auth(), bind, "--host")
    assert (problem is None) is (words is None)
    if words is not None:
        assert problem is not None and words in problem and "gateway.auth.anonymous: true" in problem
    assert open_door(Auth(anonymous=True), bind, "--host") is None
    assert open_door(Auth(api_keys=(ApiKey(name="ci", key="k" * 32),)), bind, "--host") is None


def test_a_handshake_is_checked_in_full_at_the_first_message() -> None:
    """A reload may land between the grant and the `Handshake` (authentication awaits): the first message
    runs the full check whatever the generation, then only a new generation does."""
    from mcpfleet.gateway.policy.access import EVERYTHING
    from mcpfleet.gateway.policy.handshake import Handshake

    checks: list[str] = []

    def lapsed(identity: Identity, grant: Any, server_id: str) -> str | None:
        checks.append(server_id)
        return "revoked (gateway.auth changed)"

    generation = 7
    handshake = Handshake(Identity("ci", kind="key"), EVERYTHING, "demo", lambda: generation, lapsed)
    assert handshake.revoked() == "revoked (gateway.auth changed)" and checks == ["demo"]
    assert handshake.revoked() is None and checks == ["demo"]  # the same generation: no second check
    generation = 8
    assert handshake.revoked() == "revoked (gateway.auth changed)" and checks == ["demo", "demo"]


def test_a_jwt_caller_is_accepted_again_only_with_the_scopes_now_required() -> None:
    from mcpfleet.registry.model import Jwt

    issuer = "https://login.example.com"
    identity = Identity("alice", {"iss": issuer}, kind="jwt", scopes=frozenset({"mcp"}))
    for required, accepted in (((), True), (("mcp",), True), (("mcp", "admin"), False)):
        auth = Auth(jwt=Jwt(issuer=issuer, required_scopes=required))
        assert GatewayAuthenticator(auth, lambda scope: "http://gw").accepts(identity) is accepted
    assert not GatewayAuthenticator(Auth(jwt=Jwt(issuer="https://other.example.com")), lambda s: "").accepts(identity)
