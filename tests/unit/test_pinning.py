"""requestState pinning (pinning.py): the prefix, its record, and the SSE rewriting, with no network."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest

from mcpfleet.gateway.pinning import MAX_PENDING, PREFIX, rewrite_events, unwrap, wrap
from mcpfleet.gateway.sealing import Sealer

SEALER = Sealer(["test-key"])
WHERE = {"s": "web", "r": "http://127.0.0.1:9001/mcp"}
ASKING = {
    "jsonrpc": "2.0",
    "id": 3,
    "result": {"resultType": "input_required", "inputRequests": {"q": {}}, "requestState": "v1.server-sealed"},
}


def asking(**changes: object) -> bytes:
    return json.dumps({**ASKING, **changes}).encode()


def test_wrap_prefixes_the_state_and_unwrap_routes_the_retry_back() -> None:
    wrapped = json.loads(wrap(SEALER, asking(), WHERE))
    state = wrapped["result"]["requestState"]
    assert state.startswith(PREFIX) and state.endswith(".v1.server-sealed")
    retry = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "t", "requestState": state}}
    record, body = unwrap(SEALER, json.dumps(retry).encode())
    assert record is not None and {k: record[k] for k in WHERE} == WHERE
    assert json.loads(body)["params"] == {"name": "t", "requestState": "v1.server-sealed"}


@pytest.mark.parametrize(
    "message",
    [
        json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "requestState": "not asking"}}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"resultType": "input_required"}}).encode(),
        b'{"jsonrpc": "2.0", "id": 1, "result": {"text": "say \\"requestState\\": here"}}',
        b"not json at all, requestState",
    ],
)
def test_anything_else_passes_byte_for_byte(message: bytes) -> None:
    assert wrap(SEALER, message, WHERE) is message


def test_a_session_id_cannot_pass_for_a_state_record() -> None:
    session_id = SEALER.seal({"s": "web", "r": "http://127.0.0.1:9002/mcp", "u": "x"})  # sealed for sessions
    retry = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"requestState": f"{PREFIX}{session_id}.s"}}
    record, body = unwrap(SEALER, json.dumps(retry).encode())
    assert record is None and json.loads(body)["params"]["requestState"] == "s"


def test_a_body_that_cannot_be_encoded_again_is_left_alone() -> None:
    state = json.loads(wrap(SEALER, asking(), WHERE))["result"]["requestState"]
    params = '{"x":"\\ud800","requestState":"' + state + '"}'
    body = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + params + "}").encode()
    assert unwrap(SEALER, body) == (None, body)


def rewrite_stream(chunks: list[bytes]) -> bytes:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def collect() -> bytes:
        return b"".join([part async for part in rewrite_events(source(), lambda m: wrap(SEALER, m, WHERE))])

    return anyio.run(collect)


@pytest.mark.parametrize("end", [b"\r\n\r\n", b"\n\n", b"\r\r", b"\n\r\n", b"\r\n\n", b"\r\r\n"])
def test_events_are_found_whatever_their_line_ends_and_chunking(end: bytes) -> None:
    line_end = end[:2] if end.startswith(b"\r\n") else end[:1]
    before = b": keepalive" + end + b"event: message" + line_end + b'data: {"jsonrpc":"2.0","method":"n"}' + end
    event = b"id: 5" + line_end + b"data: " + asking() + end
    stream = before + event + b"retry: 10" + end
    for size in (1, 2, 3, 7, len(stream)):
        out = rewrite_stream([stream[i : i + size] for i in range(0, len(stream), size)])
        assert out.startswith(before)  # untouched, byte for byte
        assert out.endswith(b"retry: 10" + end)
        assert PREFIX.encode() in out and out.count(b"v1.server-sealed") == 1, (end, size)


def test_a_huge_event_passes_through_unrewritten_and_what_follows_is_still_rewritten() -> None:
    huge = b"data: " + b"x" * (MAX_PENDING + 10) + b"\n\n"
    stream = huge + b"data: " + asking() + b"\n\n"
    out = rewrite_stream([stream[i : i + 65536] for i in range(0, len(stream), 65536)])
    assert out.startswith(huge) and PREFIX.encode() in out[len(huge) :]
