"""What a running gateway logs: never a secret, and the request fields on the lines of a request.

`mcpfleet serve` runs with secrets in every place a registry holds them (API keys from `${VAR}`, session
keys, an upstream `Authorization` header, a stdio entry's `secret_env`, a password in an endpoint URL) and
clients that send them (`Authorization: Bearer`, `X-API-Key`, tool arguments with `audit_arguments` off).
The traffic includes failures: no key and wrong keys (401), a backend that is down (502), a stdio server that
dies at start, a reload of an invalid file that holds secrets, and a reload that changes the secrets. Then
the whole output of the process is searched for every secret, as it is and base64- and URL-encoded, and for
every session id the gateway issued (bearer capabilities too).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest

from support import ACCEPT, INIT, free_port, rpc_messages, running

SERVER_ARGS = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
DIES = f"[{sys.executable}, -c, 'import sys; sys.exit(3)']"


def secret(kind: str) -> str:
    # '+', '/' and '=' make the encoded forms differ from the plain one.
    return f"{kind}-{secrets.token_hex(10)}+/="


def encodings(value: str) -> set[str]:
    raw = value.encode()
    return {
        value,
        quote(value, safe=""),
        quote(value),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        json.dumps(value)[1:-1],
    }


def registry(env: dict[str, str], down_port: int, web: str, literal: dict[str, str] | None = None) -> str:
    """The registry; `literal`: secrets written into the file itself (the reload that changes them)."""
    literal = literal or {}
    key = literal.get("key", "${KEY_ALICE}")
    upstream = literal.get("upstream", "${UPSTREAM_TOKEN}")
    password = quote(env["URL_PASSWORD"], safe="")
    return f"""
gateway:
  logging: {{format: {env["FORMAT"]}, level: {env["LEVEL"]}, audit_arguments: false}}
  session_keys: ["{literal.get("session", "${SESSION_KEY}")}"]
  auth:
    api_keys:
      - {{name: alice, key: "{key}"}}
      - {{name: bob, key: "${{KEY_BOB}}", groups: [ops]}}
servers:
  local:
    command: {SERVER_ARGS}
    secret_env: {{TOKEN: "${{STDIO_TOKEN}}"}}
  dies:
    command: {DIES}
    secret_env: {{TOKEN: "${{STDIO_TOKEN}}"}}
  web:
    endpoint: "{web}"
    headers: {{Authorization: "Bearer {upstream}"}}
  down:
    endpoint: "http://admin:{password}@127.0.0.1:{down_port}/mcp"
"""


INVALID = """
gateway:
  session_keys: [{session}]
  auth:
    api_keys:
      - {{name: "not a name!", key: "{key}"}}
      - {{name: short, key: "{short}"}}
servers:
  local:
    command: [python3]
    secret_env: {{TOKEN: ["{token}"]}}
    headers: {{Authorization: 42}}
  web:
    endpoint: "http://admin:{password}@127.0.0.1:1/mcp"
    headers: {{Authorization: ["Bearer {upstream}"]}}
    unknown_key: "{upstream}"
"""


@pytest.mark.parametrize(("form", "level"), [("json", "debug"), ("text", "info")])
def test_no_secret_reaches_the_logs(tmp_path: Path, demo_http: Callable[[str], str], form: str, level: str) -> None:
    names = ["KEY_ALICE", "KEY_BOB", "SESSION_KEY", "STDIO_TOKEN", "UPSTREAM_TOKEN", "URL_PASSWORD", "ARGUMENT"]
    values = {name: secret(name.lower().replace("_", "")) for name in names}
    env = {**os.environ, **values, "FORMAT": form, "LEVEL": level}
    changed = {"key": secret("newkey"), "upstream": secret("newupstream"), "session": secret("newsession")}
    invalid = {"short": "tiny" + secrets.token_hex(2), "token": secret("invalidtoken")}
    web = demo_http("web")
    down_port = free_port()
    path = tmp_path / "registry.yaml"
    path.write_text(registry(env, down_port, web))
    output = tmp_path / "gateway.log"
    port = free_port()
    argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(path), "--port", str(port), "--no-watch"]
    issued: list[str] = []
    with running(argv, port, env=env, output=output) as url, httpx2.Client(timeout=60) as http:
        alice = {"authorization": f"Bearer {values['KEY_ALICE']}"}
        bob = {"x-api-key": values["KEY_BOB"]}
        # Refused: no key, a wrong key each way, a key that is almost right, two credential headers.
        for headers in (
            {},
            {"authorization": "Bearer wrong-key-0123456789"},
            {"x-api-key": values["KEY_ALICE"][:-1]},
            {"authorization": f"Basic {values['KEY_ALICE']}"},
            {**alice, **bob},
        ):
            refused = http.post(f"{url}/local/mcp", json=INIT, headers={**ACCEPT, **headers})
            assert refused.status_code in (400, 401), refused.text
            assert refused.headers["x-request-id"]
        # Served: a stdio session and an http one, each calling a tool with a secret argument.
        for server_id, headers in (("local", alice), ("web", bob)):
            opened = http.post(f"{url}/{server_id}/mcp", json=INIT, headers={**ACCEPT, **headers})
            assert opened.status_code == 200, opened.text
            session = opened.headers["mcp-session-id"]
            issued.append(session)
            in_session = {**ACCEPT, **headers, "mcp-session-id": session}
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert http.post(f"{url}/{server_id}/mcp", json=note, headers=in_session).status_code == 202
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": values["ARGUMENT"]}},
            }
            answer = http.post(f"{url}/{server_id}/mcp", json=call, headers={**in_session, "x-request-id": "rq-1"})
            assert answer.headers["x-request-id"] == "rq-1"
            assert values["ARGUMENT"] in json.dumps(rpc_messages(answer))
            # A session id that was tampered with: 404.
            forged = {**in_session, "mcp-session-id": session[:-4] + "AAAA"}
            assert http.post(f"{url}/{server_id}/mcp", json=call, headers=forged).status_code == 404
        # Failures: a backend that is down, a stdio server that dies at start.
        assert http.post(f"{url}/down/mcp", json=INIT, headers={**ACCEPT, **alice}).status_code == 502
        assert http.post(f"{url}/dies/mcp", json=INIT, headers={**ACCEPT, **alice}).status_code in (502, 503)
        # A reload of an invalid file that holds secrets: rejected, the registry in force stays.
        path.write_text(
            INVALID.format(
                key=values["KEY_ALICE"],
                session=values["SESSION_KEY"],
                token=invalid["token"],
                short=invalid["short"],
                password=quote(values["URL_PASSWORD"], safe=""),
                upstream=values["UPSTREAM_TOKEN"],
            )
        )
        rejected = http.post(f"{url}/admin/reload", headers=alice)
        assert rejected.status_code == 422, rejected.text
        # A reload that changes the secrets (written into the file this time).
        path.write_text(registry(env, down_port, web, literal=changed))
        assert http.post(f"{url}/admin/reload", headers=alice).status_code == 200
        new_alice = {"authorization": f"Bearer {changed['key']}"}
        assert http.post(f"{url}/local/mcp", json=INIT, headers={**ACCEPT, **alice}).status_code == 401
        reopened = http.post(f"{url}/web/mcp", json=INIT, headers={**ACCEPT, **new_alice})
        assert reopened.status_code == 200
        issued.append(reopened.headers["mcp-session-id"])
    text = output.read_text(errors="replace")
    leaked = {
        name: form_
        for name, value in [*values.items(), *changed.items(), *invalid.items()]
        for form_ in encodings(value)
        if form_ in text
    }
    leaked.update({f"session id {n}": s for n, s in enumerate(issued) if s in text or s[:40] in text})
    assert "admin:" + values["URL_PASSWORD"] not in text
    assert not leaked, f"secrets in the logs: {leaked}\n{text[-3000:]}"
    assert "registry reload rejected" in text and "Traceback" not in text
    if form == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines and all(list(line)[:4] == ["time", "level", "logger", "message"] for line in lines)
        # Lines logged while serving a request (the admin reloads) carry its id and its caller.
        for start in ("registry reload rejected", "servers in force (generation 2)"):
            line = next(line for line in lines if line["message"].startswith(start))
            assert line["principal"] == "key:alice" and len(line["request_id"]) == 32, line
    else:
        assert re.search(r" ERROR mcpfleet.gateway \[[0-9a-f]{32}\]: registry reload rejected", text)
        # One event, one line: the problems follow on the same line, each located.
        (rejected,) = [line for line in text.splitlines() if "registry reload rejected" in line]
        assert rejected.count(": gateway.") + rejected.count(": servers.") >= 1, rejected
