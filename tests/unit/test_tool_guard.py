"""The tool filter and the audit line as pure code (policy/tools.py, audit.py): plain bytes in, bytes and log
records out."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.audit import outcome_of
from mcpfleet.gateway.logs import session_digest
from mcpfleet.gateway.policy.access import GRANT, Grant
from mcpfleet.gateway.policy.auth import IDENTITY, Identity
from mcpfleet.gateway.policy.tools import DENIED, ToolGuard, may_name_tools
from mcpfleet.gateway.protocol import map_event_data, parse_message
from mcpfleet.registry.model import Logging

TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "whoami", "countdown", "fail")]


def guard(tools: tuple[str, ...] | None = ("echo", "who*"), **logging: bool) -> ToolGuard:
    scope = {GRANT: Grant(tools), IDENTITY: Identity("ci", kind="key")}
    made = ToolGuard.of(scope, "demo", Logging(**logging), "s-1")
    assert made is not None
    return made


def request(request_id: Any, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def listed(request_id: Any, cursor: str | None = "next") -> bytes:
    result: dict[str, Any] = {"tools": TOOLS}
    if cursor:
        result["nextCursor"] = cursor
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if r.name == "mcpfleet.audit"]  # type: ignore[attr-defined]


def test_no_guard_when_every_tool_is_allowed_and_auditing_is_off() -> None:
    scope = {GRANT: Grant(None), IDENTITY: Identity("ci", kind="key")}
    assert ToolGuard.of(scope, "demo", Logging(audit=False)) is None
    assert ToolGuard.of(scope, "demo", Logging()) is not None  # auditing is on by default
    assert ToolGuard.of(scope, "demo", Logging(audit=False)) is None


def test_a_list_answer_loses_the_tools_not_allowed_and_keeps_the_rest() -> None:
    g = guard()
    g.expect(request(1, "tools/list"))
    data = json.loads(g.answer_data(listed(1)))
    assert [t["name"] for t in data["result"]["tools"]] == ["echo", "whoami"]
    assert data["result"]["nextCursor"] == "next" and data["id"] == 1
    assert data["result"]["tools"][0] == TOOLS[0]
    # Once answered, the id is no longer awaited, but a list answer it did not ask for is filtered all the
    # same (a resumed stream replays answers to other exchanges' requests); other results pass untouched.
    assert [t["name"] for t in json.loads(g.answer_data(listed(1)))["result"]["tools"]] == ["echo", "whoami"]
    other = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": ["countdown"], "n": 1}}).encode()
    assert g.answer_data(other) is other  # not tool objects: not a list answer
    audit_only = guard(None)
    raw = listed(1)
    assert audit_only.answer_data(raw) is raw  # no tool restricted: nothing to filter


def test_an_answer_nothing_is_removed_from_is_passed_as_it_came() -> None:
    g = guard(("*",))
    g.expect(request("a", "tools/list"))
    raw = listed("a")
    assert g.answer_data(raw) is raw and not g.pending


def test_a_denied_call_gets_invalid_params_naming_the_setting(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mcpfleet.audit")
    g = guard()
    refusal = g.check(request(5, "tools/call", name="countdown", arguments={"start": 3}))
    assert refusal is not None
    error = json.loads(refusal)
    assert error["id"] == 5 and error["error"]["code"] == DENIED
    assert error["error"]["message"] == (
        "tool 'countdown' is not allowed for key:ci on server 'demo' (setting: gateway.access)"
    )
    assert g.check(request(6, "tools/call", name="echo", arguments={})) is None
    [record] = audit_records(caplog)
    assert record == {
        "principal": "key:ci",
        "server": "demo",
        "tool": "countdown",
        "outcome": "denied",
        "duration_ms": 0.0,
        "session": session_digest("s-1"),
        "request_id": 5,
    }


def test_the_audit_line_of_each_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mcpfleet.audit")
    g = guard(None, audit_arguments=True)
    answers = {
        1: {"result": {"content": []}},
        2: {"result": {"content": [], "isError": True}},
        3: {"error": {"code": -32603, "message": "boom"}},
        4: {"error": {"code": -32015, "message": "no answer within 5 s"}},
        5: {"error": {"code": -32014, "message": "server 'demo' exited"}},
        6: {"result": {"resultType": "input_required", "requestState": "x"}},
    }
    for request_id in [*answers, 7]:
        g.expect(request(request_id, "tools/call", name="echo", arguments={"text": str(request_id)}), f"k{request_id}")
    for request_id, answer in answers.items():
        raw = json.dumps({"jsonrpc": "2.0", "id": request_id, **answer}).encode()
        assert g.answer(raw, f"k{request_id}") is raw
    g.close("cancelled")
    records = audit_records(caplog)
    assert [(r["request_id"], r["outcome"]) for r in records] == [
        (1, "ok"),
        (2, "tool_error"),
        (3, "error"),
        (4, "timeout"),
        (5, "failed"),
        (6, "input_required"),
        (7, "cancelled"),
    ]
    assert all(r["arguments"] == {"text": str(r["request_id"])} and r["duration_ms"] >= 0 for r in records)
    text = next(r.getMessage() for r in caplog.records if r.name == "mcpfleet.audit")
    assert text.startswith("tool call key:ci -> demo/echo ok ") and text.endswith(" ms")


def test_arguments_stay_out_unless_enabled_and_nothing_is_written_with_auditing_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "mcpfleet.audit")
    g = guard(None)
    g.expect(request(1, "tools/call", name="echo", arguments={"secret": "s3cret"}))
    g.answer_data(b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}')
    [record] = audit_records(caplog)
    assert "arguments" not in record and "s3cret" not in caplog.text
    quiet = guard(("echo",), audit=False)
    assert quiet.check(request(2, "tools/call", name="fail")) is not None  # still refused
    quiet.expect(request(3, "tools/call", name="echo"))
    assert not quiet.pending  # calls are not watched when nobody audits them
    assert len(audit_records(caplog)) == 1


def test_a_passthrough_body_a_denied_call_alone_is_answered_by_the_gateway() -> None:
    g = guard()
    body = json.dumps(request(9, "tools/call", name="fail", arguments={})).encode()
    sent, own = g.screen_body(body)
    assert sent == b"" and own is not None and json.loads(own)["error"]["code"] == DENIED


def test_a_batch_loses_its_denied_calls_and_their_answers_join_the_servers() -> None:
    g = guard()
    batch = [
        request(1, "tools/list"),
        request(2, "tools/call", name="fail"),
        request(3, "tools/call", name="echo", arguments={"text": "x"}),
    ]
    sent, own = g.screen_body(json.dumps(batch).encode())
    assert own is None and [m["id"] for m in json.loads(sent)] == [1, 3]
    server = json.dumps([json.loads(listed(1, None)), {"jsonrpc": "2.0", "id": 3, "result": {"content": []}}]).encode()
    answers = {m["id"]: m for m in json.loads(g.answer_body(server))}
    assert [t["name"] for t in answers[1]["result"]["tools"]] == ["echo", "whoami"]
    assert answers[2]["error"]["code"] == DENIED and answers[3]["result"] == {"content": []}
    # Denied calls only: the whole answer is the gateway's.
    sent, own = guard().screen_body(json.dumps(batch[1:2]).encode())
    assert sent == b"" and own is not None and [m["id"] for m in json.loads(own)] == [2]


def test_bodies_that_cannot_name_a_tools_method_are_not_parsed() -> None:
    assert not may_name_tools(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert may_name_tools(b'{"method":"tools/list"}')
    assert may_name_tools(b'{"method":"tools\\/call"}')  # an escape could spell it
    g = guard()
    sent, own = g.screen_body(b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"fai\\u006c"}}')
    assert sent == b"" and own is not None


def test_event_streams_are_filtered_event_by_event_other_events_kept_byte_for_byte() -> None:
    g = guard()
    g.expect(request(4, "tools/list"))
    progress = b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\r\n\r\n'
    answer = b"event: message\r\nid: 7\r\ndata: " + listed(4) + b"\r\n\r\n"
    priming = b"id: 0\ndata: \n\n"
    run = priming + progress + answer
    out = g.answer_events(run)
    assert out.startswith(priming + progress)
    rest = out[len(priming + progress) :]
    assert rest.startswith(b"event: message\r\nid: 7\r\ndata: ") and rest.endswith(b"\r\n\r\n")
    data = json.loads(rest[len(b"event: message\r\nid: 7\r\ndata: ") : -4])
    assert [t["name"] for t in data["result"]["tools"]] == ["echo", "whoami"]
    plain = priming + progress
    assert g.answer_events(plain) is plain  # nothing awaited, no `tools` in it: untouched
    # A list answer nobody awaits (a resumed stream) is filtered too.
    again = g.answer_events(run)
    assert b'"countdown"' not in again and again.startswith(priming + progress)
    assert guard(None).answer_events(run) is run  # restricts nothing, awaits nothing: untouched


def test_map_event_data_keeps_unchanged_events_and_an_unfinished_tail() -> None:
    run = b"data: a\n\ndata: b\ndata: c\n\ndata: par"
    assert map_event_data(run, lambda d: d) == run
    assert map_event_data(run, lambda d: d.upper() if d == b"a" else d) == b"data: A\n\ndata: b\ndata: c\n\ndata: par"
    assert map_event_data(b"data: x", lambda d: b"changed") == b"data: x"  # no boundary yet: nothing whole


def test_the_relay_screen_uses_the_parsed_message_and_the_key_given() -> None:
    g = guard()
    message = parse_message(json.dumps(request(1, "tools/call", name="echo")).encode())
    assert message is not None and g.screen(message, "p1") is None and "p1" in g.pending
    ping = parse_message(b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
    assert ping is not None and g.screen(ping) is None and set(g.pending) == {"p1"}


def test_outcome_of_reads_results_and_errors() -> None:
    assert outcome_of({"result": {}}) == "ok"
    assert outcome_of({"result": {"isError": False}}) == "ok"
    assert outcome_of({"error": {"code": -32012}}) == "failed"
    assert outcome_of({"error": {"code": -32602}}) == "error"
    assert outcome_of({"error": "odd"}) == "error"


def test_a_denied_call_sent_as_a_notification_is_dropped_and_audited(caplog: pytest.LogCaptureFixture) -> None:
    """A server may run a call that has no id (it cannot answer it): a denied one goes nowhere."""
    caplog.set_level(logging.INFO, "mcpfleet.audit")
    g = guard()
    note = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "countdown", "arguments": {}}}
    assert g.check(note) == b""
    assert g.screen_body(json.dumps(note).encode()) == (b"", b"")
    batch = [note, request(1, "tools/list")]
    sent, own = g.screen_body(json.dumps(batch).encode())
    assert own is None and json.loads(sent) == [request(1, "tools/list")] and g.refusals == []
    message = parse_message(json.dumps(note).encode())
    assert message is not None and g.screen(message) == b""
    assert [r["outcome"] for r in audit_records(caplog)] == ["denied"] * 4
    assert guard().check({**note, "params": {"name": "echo"}}) is None


CALL_OPENING = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (CALL_OPENING + b'{"a":' * 99_999 + b"1" + b"}" * 100_000, -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fail","n":' + b"1" * 5000 + b"}}", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fail","x":"\xff"}}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fail","x":NaN}}', -32700),
        (b'{"jsonrpc":"2.0","id":3.0,"method":"tools/list"}', -32600),
        (b'{"jsonrpc":"2.0","id":1e0,"method":"tools/call","params":{"name":"echo"}}', -32600),
        (b'{"jsonrpc":"2.0","id":true,"method":"tools/list"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}', -32600),
    ],
    ids=["deep", "digits", "not-utf8", "nan", "float-id", "exponent-id", "bool-id", "params-array"],
)
def test_a_body_the_guard_cannot_read_as_the_server_may_is_refused(body: bytes, code: int) -> None:
    """Fails closed: each of these is a call or list some server's parser takes (a JavaScript server reads
    every one but the last two) and Python's does not, or answers with an id the guard would not know."""
    with pytest.raises(GatewayError) as refused:
        guard().screen_body(body)
    assert refused.value.status == 400 and refused.value.code == code


def test_json_naming_no_tools_method_passes_as_it_is() -> None:
    """A body for another path of the server (any JSON) is refused only when it names a tools method."""
    body = b'{"path":"tools/x","id":1.5}'
    assert guard().screen_body(body) == (body, None)


def test_json_in_utf16_is_read_like_utf8() -> None:
    """Python's `json.loads` of bytes (so a Python server) reads UTF-16: NULs make the guard look."""
    body = json.dumps(request(1, "tools/call", name="countdown")).encode("utf-16-le")
    assert may_name_tools(body) and b"tools/" not in body
    sent, own = guard().screen_body(body)
    assert sent == b"" and own is not None and json.loads(own)["error"]["code"] == DENIED


def test_numeric_ids_are_keyed_as_a_javascript_server_writes_them_back() -> None:
    """3.0 comes back as 3; an integer beyond 2**53 as the nearest double (the relay's rule refuses the
    first at the door; the key holds for what is already awaited)."""
    g = guard(None)
    g.expect(request(2**64 + 1, "tools/call", name="echo"))
    g.expect(request(3.0, "tools/call", name="echo"))
    answer = {"jsonrpc": "2.0", "result": {"content": []}}
    g.answer_data(json.dumps([answer | {"id": 18446744073709552000}, answer | {"id": 3}]).encode())
    assert not g.pending
