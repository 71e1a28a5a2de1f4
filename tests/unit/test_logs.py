"""Log lines: the JSON and text formats, the request fields the `Correlation` layer gives every line logged
while a request is served, and the request id rules (taken when sane, made otherwise, echoed, sent inward)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from mcpfleet.gateway import audit, logs
from mcpfleet.gateway.asgi import Message, Receive, Scope, Send
from mcpfleet.gateway.policy import IDENTITY, Identity
from mcpfleet.gateway.policy.context import Correlation
from mcpfleet.registry.model import Logging

SEALED = "AXlkf_2xgtWn2UDpqmgDJajdAAKHQ1TipkgfqZEJ9C3qmEPTw-tHjGMl5__33RmodSSI6KZ1D8zXjOfTf1TpMAjyzQ"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A handler like the one `logs.configure` installs, on a string, on the `mcpfleet` logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("mcpfleet")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def http_scope(headers: list[tuple[bytes, bytes]], path: str = "/local/mcp", query: bytes = b"") -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": query}


async def serve(scope: Scope, inner: Any) -> list[Message]:
    """Run `Correlation(inner)` on `scope`; the messages it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await Correlation(inner)(scope, receive, send)
    return sent


def test_json_lines_carry_the_request_fields_and_never_the_session_id(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("mcpfleet.gateway")

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        scope[IDENTITY] = Identity("alice", kind="key")
        scope["mcpfleet.server"] = "local"
        log.info("served %s", "it")
        logging.getLogger("mcpfleet.audit").info("tools/call", extra={"audit": {"tool": "echo", "outcome": "ok"}})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"upstream")]})
        await send({"type": "http.response.body", "body": b""})

    headers = [(b"x-request-id", b"abc-123.X_y"), (b"mcp-session-id", SEALED.encode())]
    sent = anyio.run(serve, http_scope(headers), inner)
    log.info("after the request")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, audit, after = lines
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "INFO" and first["logger"] == "mcpfleet.gateway" and first["message"] == "served it"
    digest = logs.session_digest(SEALED)
    assert len(digest) == 16 and SEALED not in stream.getvalue()
    expected = {"request_id": "abc-123.X_y", "session_id": digest, "server": "local", "principal": "key:alice"}
    assert {k: first[k] for k in expected} == expected
    assert audit["audit"] == {"tool": "echo", "outcome": "ok"} and audit["logger"] == "mcpfleet.audit"
    assert audit["request_id"] == "abc-123.X_y"
    assert "request_id" not in after and "server" not in after  # outside any request
    # The client's sane id is the answer's, in place of the one the backend sent.
    assert [v for k, v in sent[0]["headers"] if k == b"x-request-id"] == [b"abc-123.X_y"]


@pytest.mark.parametrize(
    "given", [None, b"", b"has space", b"x" * 129, b"semi;colon", "caf\u00e9".encode(), b"a\r\nSet-Cookie: x=1"]
)
def test_a_missing_or_insane_request_id_is_replaced_everywhere(given: bytes | None) -> None:
    seen: dict[str, Any] = {}

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen["inward"] = [v for k, v in scope["headers"] if k == b"x-request-id"]
        seen["logged"] = logs.current_request_id()
        await send({"type": "http.response.start", "status": 204, "headers": []})

    headers = [(b"x-request-id", given)] if given is not None else []
    sent = anyio.run(serve, http_scope([(b"host", b"gw"), *headers]), inner)
    made = seen["logged"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert seen["inward"] == [made.encode()]  # one header, the gateway's: what an HTTP backend receives
    assert [v for k, v in sent[0]["headers"] if k == b"x-request-id"] == [made.encode()]
    assert logs.current_request_id() is None


def test_each_request_gets_its_own_id_and_the_longest_sane_one_is_kept() -> None:
    ids: list[str | None] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        ids.append(logs.current_request_id())

    for _ in range(3):
        anyio.run(serve, http_scope([]), inner)
    anyio.run(serve, http_scope([(b"x-request-id", b"y" * 128)]), inner)
    assert len(set(ids)) == 4 and ids[-1] == "y" * 128


def test_legacy_sse_sessions_are_logged_by_digest(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        logging.getLogger("mcpfleet.gateway").warning("message posted")

    anyio.run(serve, http_scope([], "/local/messages/", b"session_id=" + SEALED.encode()), inner)
    line = json.loads(stream.getvalue())
    assert line["session_id"] == logs.session_digest(SEALED) and SEALED not in stream.getvalue()


def test_text_lines_gain_the_request_id_where_there_is_one(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(logs.TextFormatter())
    log = logging.getLogger("mcpfleet.gateway")

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        log.info("inside")

    anyio.run(serve, http_scope([(b"x-request-id", b"req-7")]), inner)
    log.info("outside")
    inside, outside = stream.getvalue().splitlines()
    assert re.fullmatch(r"\S+ \S+ INFO mcpfleet.gateway \[req-7\]: inside", inside)
    assert re.fullmatch(r"\S+ \S+ INFO mcpfleet.gateway: outside", outside)


def test_configure_puts_every_logger_through_one_handler_and_reload_applies() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logs._handler)
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_state = (list(uvicorn_error.handlers), uvicorn_error.propagate)
    try:
        logs._handler = None
        uvicorn_error.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's own config would
        uvicorn_error.propagate = False
        logs.configure(Logging(format="json", level="warning"), stream)
        logging.getLogger("mcpfleet.gateway").info("not at warning")
        uvicorn_error.warning("from uvicorn")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(line["logger"], line["message"]) for line in lines] == [("uvicorn.error", "from uvicorn")]
        logs.reconfigure(_gateway("json"), _gateway("text"))
        logging.getLogger("mcpfleet.gateway").info("now text")
        assert stream.getvalue().splitlines()[-1].endswith("INFO mcpfleet.gateway: now text")
    finally:
        if logs._handler is not None:
            root.removeHandler(logs._handler)
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        logs._handler = before[2]
        uvicorn_error.handlers[:] = uvicorn_state[0]
        uvicorn_error.propagate = uvicorn_state[1]


def _gateway(form: str) -> Any:
    from mcpfleet.registry.model import Gateway

    return Gateway.model_validate({"logging": {"format": form}})


def test_a_task_started_for_a_request_outlives_it_without_its_fields(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    """A long-lived task a request starts (a process's reader, say) logs with no request's fields; an audit
    line it writes about another request carries that request's, captured in that request's task."""
    stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("mcpfleet.gateway.relay")
    audit_log = logging.getLogger("mcpfleet.audit")
    audit_level = audit_log.level
    audit_log.setLevel(logging.INFO)
    contexts: list[logs.RequestContext | None] = []
    answer = anyio.Event()

    async def reader() -> None:  # started by the first request, it serves the second one's answer too
        log.info("reader started")
        await answer.wait()
        audit.emit(
            principal="key:bob",
            server="local",
            tool="echo",
            outcome="ok",
            duration_ms=1.0,
            session=None,
            request_id=2,
            context=contexts[-1],
        )
        log.info("reader ends")

    async def main() -> None:
        async with anyio.create_task_group() as pool:  # the gateway's: made outside any request

            async def first(scope: Scope, receive: Receive, send: Send) -> None:
                scope[IDENTITY] = Identity("alice", kind="key")
                pool.start_soon(logs.detached(reader))

            async def second(scope: Scope, receive: Receive, send: Send) -> None:
                scope[IDENTITY] = Identity("bob", kind="key")
                contexts.append(logs.REQUEST.get())
                answer.set()

            await serve({**http_scope([(b"x-request-id", b"first")]), "client": ("10.0.0.7", 5123)}, first)
            await serve({**http_scope([(b"x-request-id", b"second")]), "client": ("10.0.0.8", 6000)}, second)

    try:
        anyio.run(main)
    finally:
        audit_log.setLevel(audit_level)
    started, audited, ended = (json.loads(line) for line in stream.getvalue().splitlines())
    assert started["message"] == "reader started" and "request_id" not in started and "principal" not in started
    assert "request_id" not in ended and "client" not in ended
    expected = {"request_id": "second", "principal": "key:bob", "client": "10.0.0.8"}
    assert {k: audited.get(k) for k in expected} == expected and audited["audit"]["principal"] == "key:bob"


def test_watchfiles_stays_at_warning_whatever_the_level() -> None:
    """At `debug`, the libraries' per-request lines are let through, but not watchfiles' line per change in
    the registry's directory (the gateway's own log file may be there)."""
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logs._handler)
    try:
        logs._handler = None
        logs.configure(Logging(format="json", level="debug"), stream)
        assert logging.getLogger("watchfiles.main").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("mcp.client").getEffectiveLevel() == logging.DEBUG
        logging.getLogger("watchfiles.main").info("1 change detected")
        assert stream.getvalue() == ""
    finally:
        if logs._handler is not None:
            root.removeHandler(logs._handler)
        root.handlers[:] = before[0]
        root.setLevel(before[1])
        logs._handler = before[2]
        for name in (*logs.CHATTY, *logs.QUIET):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_a_text_record_is_one_line_and_its_traceback_is_indented(captured: tuple[io.StringIO, logging.Handler]) -> None:
    """Control characters and line breaks in a record are escaped; a traceback follows, every line of it
    indented, so no text inside it (an exception message a client chose) passes for a record."""
    stream, handler = captured
    handler.setFormatter(logs.TextFormatter())
    log = logging.getLogger("mcpfleet.gateway")
    log.warning("tool %s", "a\r\nb\tc\x00d\x85e\u2029f")
    try:
        raise ValueError("boom\n2026-01-01 00:00:00,000 INFO mcpfleet.audit: forged")
    except ValueError:
        log.exception("failed")
    first, second, *traceback = stream.getvalue().splitlines()
    assert first.endswith(r"WARNING mcpfleet.gateway: tool a\r\nb\tc\x00d\x85e\u2029f"), first
    assert second.endswith("ERROR mcpfleet.gateway: failed"), second
    assert (
        traceback[0] == "  Traceback (most recent call last):"
        and traceback[-1] == "  2026-01-01 00:00:00,000 INFO mcpfleet.audit: forged"
    )
    assert all(line.startswith("  ") for line in traceback), traceback
