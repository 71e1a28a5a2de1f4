"""The audit line: exactly one record per `tools/call`, on the logger `mcpfleet.audit`, with its outcome.

Two ways of looking: a gateway process's stderr in the default text format (`tool call <principal> ->
<server>/<tool> <outcome> <ms> ms`), and an in-process gateway with a handler on the logger, which sees the
structured fields (`record.audit`) the JSON log format renders. To extend: add a call to `CALLS` with the
outcome it must produce; when `gateway.logging.format: json` exists, the stderr test can parse the lines'
`audit` fields too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcpfleet.gateway.app import Gateway
from mcpfleet.gateway.logs import session_digest
from mcpfleet.registry import load_registry

from support import ACCEPT, INIT, RunningGateway, rpc_messages, serving_in_process, wait_for

DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
CI_KEY = "ci-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
LINE = re.compile(r"mcpfleet\.audit(?: \[[^\]]*\])?: tool call (\S+) -> (\S+)/(\S+) (\S+) (\d+\.\d) ms$")


def registry(web: str | None = None, *, audit: bool = True, arguments: bool = False) -> str:
    text = (
        "gateway:\n"
        f"  logging: {{audit: {json.dumps(audit)}, audit_arguments: {json.dumps(arguments)}}}\n"
        "  auth:\n"
        f"    api_keys: [{{name: ci, key: {CI_KEY}}}, {{name: admin, key: {ADMIN_KEY}}}]\n"
        "  access:\n"
        "    - {principals: ['key:admin'], servers: ['*']}\n"
        "    - {principals: ['key:ci'], servers: ['*'], tools: [echo, fail, crash]}\n"
        "servers:\n"
        f"  local: {{command: {DEMO_STDIO}}}\n"
    )
    return text + (f"  web: {{endpoint: '{web}'}}\n" if web else "")


def call(request_id: int, name: str, arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


# (request, the outcome its audit record must have); `crash` ends the session's process, so it goes last.
CALLS = [
    (call(2, "echo", {"text": "hello"}), "ok"),
    (call(3, "fail", {"message": "expected"}), "tool_error"),
    (call(4, "countdown", {"start": 1}), "denied"),
    (call(5, "echo", "not an object"), "error"),  # the server's JSON-RPC error (invalid params)
    (call(6, "crash", {}), "failed"),  # the process exits: the gateway answers -32014
]


async def run_calls(http: httpx2.AsyncClient, url: str, key: str, calls: list[tuple[dict[str, Any], str]]) -> str:
    """Open a session at `url` with `key`, make `calls` one by one; returns the gateway's session id."""
    headers = ACCEPT | {"authorization": f"Bearer {key}"}
    opened = await http.post(url, json=INIT, headers=headers)
    assert opened.status_code == 200, opened.text
    token = opened.headers["mcp-session-id"]
    in_session = headers | {"mcp-session-id": token, "mcp-protocol-version": "2025-11-25"}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(url, json=initialized, headers=in_session)).status_code == 202
    for request, _ in calls:
        answer = await http.post(url, json=request, headers=in_session)
        assert answer.status_code == 200, answer.text
        assert [m.get("id") for m in rpc_messages(answer)][-1] == request["id"]
    return token


def test_one_text_line_per_call_on_the_gateways_stderr(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    gw = gateway(registry(demo_http("web")))
    assert gw.log is not None

    async def run() -> None:
        async with httpx2.AsyncClient(timeout=60) as http:
            await run_calls(http, gw.mcp("local"), CI_KEY, CALLS)
            await run_calls(http, gw.mcp("web"), CI_KEY, CALLS[:4])

    anyio.run(run)
    expected = [("key:ci", "local", r["params"]["name"], outcome) for r, outcome in CALLS]
    expected += [("key:ci", "web", r["params"]["name"], outcome) for r, outcome in CALLS[:4]]

    def lines() -> list[tuple[str, ...]]:
        text = gw.log.read_text() if gw.log is not None else ""
        return [m.groups()[:4] for m in map(LINE.search, text.splitlines()) if m]

    wait_for(lambda: len(lines()) >= len(expected))
    assert lines() == expected
    assert CI_KEY not in gw.log.read_text()  # the principal is the key's name, never the key


@contextlib.asynccontextmanager
async def serving(path: Path) -> AsyncIterator[str]:
    """A Gateway on uvicorn in this process (so a handler here sees its records), until the block ends."""
    async with Gateway(load_registry(path), registry_path=path) as app, serving_in_process(app) as url:
        yield url


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.audit: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.audit.append(record.audit)  # type: ignore[attr-defined]


@contextlib.contextmanager
def audit_records() -> Any:
    logger = logging.getLogger("mcpfleet.audit")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("arguments", [False, True])
def test_the_records_fields(tmp_path: Path, arguments: bool) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(registry(arguments=arguments))

    async def run() -> tuple[str, str]:
        async with serving(path) as url, httpx2.AsyncClient(timeout=60) as http:
            ci = await run_calls(http, f"{url}/local/mcp", CI_KEY, CALLS)
            admin = await run_calls(http, f"{url}/local/mcp", ADMIN_KEY, CALLS[:1])
            return ci, admin

    with audit_records() as seen:
        ci, admin = anyio.run(run)
    assert [(r["principal"], r["tool"], r["outcome"], r["request_id"]) for r in seen.audit] == [
        *[("key:ci", r["params"]["name"], outcome, r["id"]) for r, outcome in CALLS],
        ("key:admin", "echo", "ok", 2),
    ]
    for record, (request, outcome) in zip(seen.audit, [*CALLS, CALLS[0]], strict=True):
        assert record["server"] == "local"
        assert record["session"] == session_digest(admin if record["principal"] == "key:admin" else ci)
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
        assert (record["duration_ms"] == 0) == (outcome == "denied")
        if arguments:
            assert record["arguments"] == request["params"]["arguments"]
        else:
            assert "arguments" not in record


def test_no_record_with_auditing_off(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(registry(audit=False))

    async def run() -> None:
        async with serving(path) as url, httpx2.AsyncClient(timeout=60) as http:
            await run_calls(http, f"{url}/local/mcp", CI_KEY, CALLS[:3])

    with audit_records() as seen:
        anyio.run(run)
    assert seen.audit == []


def test_a_denied_call_sent_as_a_notification_is_audited_and_dropped_on_every_route(tmp_path: Path) -> None:
    """A `tools/call` without an id is still a call a server may run: denied, it goes nowhere, and has its
    record, on the relay (session mode and a shared process) as on the passthrough (tested with a server
    that writes down its calls in tests/gateway/test_gateway_tools_access.py)."""
    path = tmp_path / "registry.yaml"
    path.write_text(registry() + f"  shared: {{command: {DEMO_STDIO}, stateless: true, pool: {{mode: shared}}}}\n")
    note = {k: v for k, v in call(0, "countdown", {"start": 1}).items() if k != "id"}

    async def run() -> None:
        async with serving(path) as url, httpx2.AsyncClient(timeout=60) as http:
            for server_id in ("local", "shared"):
                token = await run_calls(http, f"{url}/{server_id}/mcp", CI_KEY, [])
                headers = ACCEPT | {
                    "authorization": f"Bearer {CI_KEY}",
                    "mcp-session-id": token,
                    "mcp-protocol-version": "2025-11-25",
                }
                sent = await http.post(f"{url}/{server_id}/mcp", json=note, headers=headers)
                assert sent.status_code == 202, (server_id, sent.text)

    with audit_records() as seen:
        anyio.run(run)
    assert [(r["tool"], r["outcome"], r["request_id"]) for r in seen.audit] == [("countdown", "denied", None)] * 2


def test_a_tool_name_cannot_forge_a_log_line(gateway: Callable[[str], RunningGateway]) -> None:
    """A caller's text (here a tool name with a line break, a forged record after it, and a NUL) stays on its
    own record's line, escaped (CWE-117)."""
    gw = gateway(registry())
    assert gw.log is not None
    forged = "2026-11-30 16:40:00,000 INFO mcpfleet.audit: tool call key:admin -> local/crash ok 0.1 ms"
    name = f"nope ok 0.5 ms\n{forged}\u2028\x00"

    async def run() -> None:
        async with httpx2.AsyncClient(timeout=60) as http:
            await run_calls(http, gw.mcp("local"), CI_KEY, [(call(2, name, {}), "denied")])

    anyio.run(run)
    wait_for(lambda: gw.log is not None and "local/nope" in gw.log.read_text())
    raw = gw.log.read_bytes()
    assert b"\x00" not in raw and "\u2028".encode() not in raw
    text = raw.decode()
    for line in text.splitlines():  # the forged record is part of the real one's line, never a line of its own
        assert not line.startswith(forged[:23]), line
        assert forged[:23] not in line or "tool call key:ci -> local/nope" in line, line
    assert f"local/nope ok 0.5 ms\\n{forged}\\u2028\\x00 denied" in text
