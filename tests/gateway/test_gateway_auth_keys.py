"""API keys and access rules on a running `mcpfleet serve`: every route, every way of getting it wrong.

The registry names two keys: `ops` (given as `${OPS_KEY}`, in group `ops`, reaches every server) and
`reader` (given as its SHA-256, reaches the `web` server only). Without a credential, with a wrong one or a
malformed one, every route but the probes and the metadata documents answers 401 with a JSON-RPC error and a
`WWW-Authenticate` challenge; a principal reaching a server no rule gives it gets 403, on HTTP and on the
WebSocket handshake. The gateway's key never reaches a backend. Off loopback, a gateway that asks for no
credentials does not start, and a reload that would make it so is rejected.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from mcpfleet.client.websocket import websocket_client
from mcpfleet.gateway.app import Gateway
from mcpfleet.registry import load_registry

from support import ACCEPT, INIT, free_port, run_cli, running
from test_gateway_headers import SERVER as ECHO_HEADERS

OPS_KEY = "ops-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
REGISTRY = f"""
gateway:
  auth:
    api_keys:
      - {{name: ops, key: "${{OPS_KEY}}", groups: [ops]}}
      - {{name: reader, sha256: {hashlib.sha256(READER_KEY.encode()).hexdigest()}}}
  access:
    - {{principals: ["group:ops"], servers: ["*"]}}
    - {{principals: ["key:reader"], servers: [web]}}
servers:
  local: {{command: {DEMO_STDIO}}}
  web: {{endpoint: "{{web}}"}}
"""
CHALLENGE = 'Bearer realm="mcpfleet"'
TIMEOUT = 30.0


@dataclass
class Served:
    url: str
    registry: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A gateway with the two keys, in front of a stdio demo (`local`) and an echo-headers SDK server (`web`)."""
    script = tmp_path / "echo_headers.py"
    script.write_text(ECHO_HEADERS)
    echo_port, port = free_port(), free_port()
    registry = tmp_path / "registry.yaml"
    with running([sys.executable, str(script), str(echo_port)], echo_port) as echo:
        registry.write_text(REGISTRY.replace("{web}", f"{echo}/mcp"))
        argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(port)]
        with running(argv, port, env={**os.environ, "OPS_KEY": OPS_KEY}) as url:
            yield Served(url, registry)


# Every route a client can take, as (method, path, body); WebSocket handshakes are tried separately.
ROUTES = [
    ("POST", "/local/mcp", INIT),
    ("GET", "/local/mcp", None),
    ("DELETE", "/local/mcp", None),
    ("GET", "/local/sse", None),
    ("POST", "/local/messages/?session_id=0123", INIT),
    ("POST", "/web/mcp", INIT),
    ("GET", "/web/other/path", None),
    ("GET", "/", None),
    ("GET", "/servers", None),
    ("GET", "/metrics", None),
    ("POST", "/admin/reload", None),
]
WRONG = [
    pytest.param({}, 401, "needs credentials", id="none"),
    pytest.param({"authorization": "Bearer not-a-key-of-this-gateway"}, 401, "not valid", id="wrong-bearer"),
    pytest.param({"x-api-key": "not-a-key-of-this-gateway"}, 401, "not valid", id="wrong-x-api-key"),
    pytest.param({"authorization": f"Basic {OPS_KEY}"}, 401, "not base64", id="basic-not-base64"),
    pytest.param({"authorization": f"Digest {OPS_KEY}"}, 401, "must be 'Bearer", id="digest-scheme"),
    pytest.param({"authorization": "Bearer"}, 401, "must be 'Bearer", id="empty-bearer"),
    pytest.param({"authorization": f"Bearer {OPS_KEY[:-1]}"}, 401, "not valid", id="key-less-a-character"),
    pytest.param({"authorization": f"Bearer {OPS_KEY.upper()}"}, 401, "not valid", id="key-in-other-case"),
    pytest.param({"x-api-key": OPS_KEY, "authorization": f"Bearer {OPS_KEY}"}, 400, "send one", id="two-headers"),
]


@pytest.mark.parametrize(("credentials", "status", "words"), WRONG)
def test_every_route_refuses_missing_wrong_and_malformed_credentials(
    served: Served, credentials: dict[str, str], status: int, words: str
) -> None:
    problems = []
    with httpx2.Client(timeout=TIMEOUT) as http:
        for method, path, body in ROUTES:
            headers = {**ACCEPT, "content-type": "application/json", **credentials}
            answer = http.request(method, served.url + path, headers=headers, content=json.dumps(body or {}))
            document = answer.json()
            error = document.get("error", {})
            if answer.status_code != status or document.get("jsonrpc") != "2.0" or words not in error.get("message"):
                problems.append(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
            elif status == 401 and not answer.headers.get("www-authenticate", "").startswith(CHALLENGE):
                problems.append(f"{method} {path}: challenge {answer.headers.get('www-authenticate')!r}")
        for path in ("/healthz", "/readyz"):  # probes never ask
            if http.get(served.url + path, headers=credentials).status_code != 200:
                problems.append(f"GET {path} was refused")
    assert not problems, "\n".join(problems)

    async def handshake() -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(served, "local"), subprotocols=["mcp"], additional_headers=credentials):
                pass
        return refused.value.response.status_code

    assert anyio.run(handshake) == status


def ws_url(served: Served, server_id: str) -> str:
    return served.url.replace("http://", "ws://") + f"/{server_id}/ws"


def test_a_principal_reaches_only_the_servers_its_rules_name(served: Served) -> None:
    reader = {"authorization": f"Bearer {READER_KEY}"}
    with httpx2.Client(timeout=TIMEOUT) as http:
        for method, path, body in ROUTES[:5]:  # the `local` routes: no rule gives them to `reader`
            headers = {**ACCEPT, "content-type": "application/json", **reader}
            answer = http.request(method, served.url + path, headers=headers, content=json.dumps(body or {}))
            assert answer.status_code == 403, (path, answer.text)
            message = answer.json()["error"]["message"]
            assert message == "key:reader may not use server 'local' (setting: gateway.access)"
            # An API key cannot step up: no `insufficient_scope` challenge invites a client to log in again.
            assert "www-authenticate" not in answer.headers
        # The gateway's own routes answer, showing the servers the caller may reach only.
        for path, key in (("/servers", "servers"), ("/", "servers"), ("/", "traffic")):
            for who, expected in ((reader, ["web"]), ({"authorization": f"Bearer {OPS_KEY}"}, ["local", "web"])):
                document = http.get(f"{served.url}{path}", headers=who).json()
                found = document[key]["servers"] if key == "traffic" else [s["id"] for s in document[key]]
                if key != "traffic":
                    assert sorted(found) == expected, (path, document)
                else:
                    assert set(found) - {"-"} <= set(expected), (path, document)  # -: the gateway's own routes

    async def run() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(served, "local"), subprotocols=["mcp"], additional_headers=reader):
                pass
        assert refused.value.response.status_code == 403
        # `web` is `reader`'s: through the SDK client, on the passthrough.
        async with (
            httpx2.AsyncClient(headers=reader, timeout=TIMEOUT) as http,
            Client(streamable_http_client(f"{served.url}/web/mcp", http_client=http), mode="legacy") as client,
        ):
            assert [tool.name for tool in (await client.list_tools()).tools] == ["headers"]

    anyio.run(run)


def test_good_keys_work_on_every_transport_and_never_reach_the_backend(served: Served) -> None:
    async def run() -> None:
        by_header = {"x-api-key": OPS_KEY}
        bearer = {"authorization": f"Bearer {OPS_KEY}"}
        seen: list[list[list[str]]] = []
        async with httpx2.AsyncClient(headers=by_header, timeout=TIMEOUT) as http:
            async with Client(streamable_http_client(f"{served.url}/local/mcp", http_client=http)) as client:
                result = await client.call_tool("echo", {"text": "by X-API-Key"})
                assert result.content[0].text == "by X-API-Key"  # type: ignore[union-attr]
            async with Client(streamable_http_client(f"{served.url}/web/mcp", http_client=http)) as client:
                seen.append((await client.call_tool("headers", {})).structured_content["result"])  # type: ignore[index]
        async with Client(sse_client(f"{served.url}/web/sse", headers=bearer)) as client:
            seen.append((await client.call_tool("headers", {})).structured_content["result"])  # type: ignore[index]
        async with Client(websocket_client(ws_url(served, "web"), headers=list(bearer.items()))) as client:
            seen.append((await client.call_tool("headers", {})).structured_content["result"])  # type: ignore[index]
        for headers in seen:
            names = {name.lower() for name, _ in headers}
            assert "authorization" not in names and "x-api-key" not in names, headers
            assert not any(OPS_KEY in value for _, value in headers)

    anyio.run(run)


def test_a_reload_swaps_keys_and_rules_from_the_next_request(served: Served) -> None:
    ops = {**ACCEPT, "authorization": f"Bearer {OPS_KEY}"}
    reader = {**ACCEPT, "authorization": f"Bearer {READER_KEY}"}
    with httpx2.Client(timeout=TIMEOUT) as http:
        assert http.post(f"{served.url}/local/mcp", json=INIT, headers=reader).status_code == 403
        # `reader` gets `local` too; `ops` is gone.
        text = served.registry.read_text()
        text = text.replace('      - {name: ops, key: "${OPS_KEY}", groups: [ops]}\n', "")
        text = text.replace('    - {principals: ["group:ops"], servers: ["*"]}\n', "")
        served.registry.write_text(text.replace("servers: [web]", "servers: [web, local]"))
        # Reloaded by `ops`, whose rules give it every server (`reader` may not reload: Plan 9.17).
        reloaded = http.post(f"{served.url}/admin/reload", headers=ops).json()
        assert reloaded["reloaded"] is True, reloaded
        assert http.post(f"{served.url}/local/mcp", json=INIT, headers=reader).status_code == 200
        assert http.post(f"{served.url}/local/mcp", json=INIT, headers=ops).status_code == 401


def test_registry_show_never_prints_a_key(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.replace("{web}", "http://127.0.0.1:9/mcp"))
    shown = subprocess.run(
        [sys.executable, "-m", "mcpfleet", "registry", "show", str(registry)],
        capture_output=True,
        text=True,
        env={**os.environ, "OPS_KEY": OPS_KEY},
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert OPS_KEY not in shown.stdout + shown.stderr
    assert hashlib.sha256(OPS_KEY.encode()).hexdigest() in shown.stdout  # what is kept: the hash


def test_off_loopback_a_gateway_without_credentials_does_not_start(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")
    argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--host", "0.0.0.0"]
    refused = subprocess.run([*argv, "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "asks callers for no credentials" in refused.stderr and "gateway.auth.anonymous" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "(--host)" in refused.stderr and refused.stdout == ""  # refused before any banner
    registry.write_text(f"gateway: {{host: 0.0.0.0}}\nservers:\n  local: {{command: {DEMO_STDIO}}}\n")
    refused = subprocess.run([*argv[:-2], "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and f"(gateway.host in {registry})" in refused.stderr, refused.stderr


def test_a_reload_that_would_drop_credentials_off_loopback_is_rejected(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY.replace("{web}", "http://127.0.0.1:9/mcp"))

    async def run() -> None:
        os.environ["OPS_KEY"] = OPS_KEY
        try:
            async with Gateway(load_registry(registry), registry_path=registry, host="0.0.0.0") as gateway:
                registry.write_text(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")
                assert await gateway.reload() is False
                assert "asks callers for no credentials" in gateway.reload_error[0]
                assert gateway.snapshot.gateway.auth.api_keys  # the registry in force stays
                registry.write_text(
                    f"gateway: {{auth: {{anonymous: true}}}}\nservers:\n  local: {{command: {DEMO_STDIO}}}\n"
                )
                assert await gateway.reload() is True
                assert gateway.credentials is None
        finally:
            del os.environ["OPS_KEY"]

    anyio.run(run)


def test_metrics_and_servers_open_only_when_configured(served: Served) -> None:
    ops = {"authorization": f"Bearer {OPS_KEY}"}
    with httpx2.Client(timeout=TIMEOUT) as http:
        assert [http.get(f"{served.url}{p}").status_code for p in ("/metrics", "/servers", "/")] == [401, 401, 401]
        served.registry.write_text(served.registry.read_text().replace("  auth:\n", "  auth:\n    open: [metrics]\n"))
        assert http.post(f"{served.url}/admin/reload", headers=ops).json()["reloaded"] is True
        assert [http.get(f"{served.url}{p}").status_code for p in ("/metrics", "/servers", "/")] == [200, 401, 401]
        served.registry.write_text(served.registry.read_text().replace("open: [metrics]", "open: [servers]"))
        assert http.post(f"{served.url}/admin/reload", headers=ops).json()["reloaded"] is True
        assert [http.get(f"{served.url}{p}").status_code for p in ("/metrics", "/servers", "/")] == [401, 200, 200]
        assert http.post(f"{served.url}/local/mcp", json=INIT, headers=ACCEPT).status_code == 401
        # Open, yet a credential sent there is checked: each caller gets its own view, a wrong key its 401.
        anonymous, own = (http.get(f"{served.url}/servers", headers=h).json() for h in ({}, ops))
        assert [s["id"] for s in anonymous["servers"]] == []  # no rule gives `anonymous` or `*` a server
        assert sorted(s["id"] for s in own["servers"]) == ["local", "web"]
        wrong = http.get(f"{served.url}/servers", headers={"x-api-key": "not-a-key-of-this-gateway"})
        assert wrong.status_code == 401, wrong.text


def test_a_session_id_works_only_for_the_caller_who_opened_it(served: Served) -> None:
    """A session id is bound to its opener's principal: another valid key naming it gets 404, on a held
    (stdio) session, a sealed passthrough session and a legacy SSE session's messages endpoint."""
    ops = {**ACCEPT, "authorization": f"Bearer {OPS_KEY}"}
    reader = {**ACCEPT, "authorization": f"Bearer {READER_KEY}"}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with httpx2.Client(timeout=TIMEOUT) as http:
        # `web` is open to both keys; `local` only to ops, so reader is refused there before any session check.
        for server_id, other, status in (("web", reader, 404), ("local", reader, 403)):
            opened = http.post(f"{served.url}/{server_id}/mcp", json=INIT, headers=ops)
            token = opened.headers["mcp-session-id"]
            version = {"mcp-session-id": token, "mcp-protocol-version": "2025-11-25"}
            assert http.post(f"{served.url}/{server_id}/mcp", json=listing, headers=ops | version).status_code == 200
            stolen = http.post(f"{served.url}/{server_id}/mcp", json=listing, headers=other | version)
            assert stolen.status_code == status, stolen.text
            assert http.delete(f"{served.url}/{server_id}/mcp", headers=other | version).status_code == status
            assert http.post(f"{served.url}/{server_id}/mcp", json=listing, headers=ops | version).status_code == 200
    # A held session: the reload gives reader `local` too, then reader names ops' stdio session.
    served.registry.write_text(served.registry.read_text().replace("servers: [web]", "servers: [web, local]"))
    with httpx2.Client(timeout=TIMEOUT) as http:
        assert http.post(f"{served.url}/admin/reload", headers=ops).json()["reloaded"] is True
        opened = http.post(f"{served.url}/local/mcp", json=INIT, headers=ops)
        version = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        stolen = http.post(f"{served.url}/local/mcp", json=listing, headers=reader | version)
        assert stolen.status_code == 404, stolen.text
        assert http.post(f"{served.url}/local/mcp", json=listing, headers=ops | version).status_code == 200

    async def legacy() -> None:
        async with Client(sse_client(f"{served.url}/local/sse", headers=dict(ops))) as client:
            assert (await client.call_tool("echo", {"text": "mine"})).content[0].text == "mine"  # type: ignore[union-attr]
        # The messages endpoint of an open stream, named by another caller.
        async with (
            httpx2.AsyncClient(timeout=TIMEOUT) as http,
            http.stream("GET", f"{served.url}/local/sse", headers=ops) as stream,
        ):
            lines = stream.aiter_lines()  # read with anext: leaving an `async for` early closes the stream
            endpoint = ""
            while not endpoint.startswith("/"):
                line = await anext(lines)
                endpoint = line[len("data: ") :] if line.startswith("data: ") else ""
            assert "session_id=" in endpoint
            stolen = await http.post(served.url + endpoint, json=INIT, headers=reader)
            assert stolen.status_code == 404, stolen.text
            mine = await http.post(served.url + endpoint, json=INIT, headers=ops)
            assert mine.status_code == 202, mine.text

    anyio.run(legacy)


def test_the_cli_sends_mcpfleet_token_to_the_gateway(served: Served) -> None:
    without = run_cli("call", "local", "echo", "-a", "text=hi", "--gateway", served.url, env={"MCPFLEET_TOKEN": ""})
    assert without.returncode == 3, without.stderr
    assert "HTTP 401" in without.stderr and "$MCPFLEET_TOKEN is not set" in without.stderr
    listed = run_cli("servers", "--gateway", served.url, env={"MCPFLEET_TOKEN": ""})
    assert listed.returncode == 3 and "$MCPFLEET_TOKEN is not set" in listed.stderr, listed.stderr
    wrong = run_cli("servers", "--gateway", served.url, env={"MCPFLEET_TOKEN": "not-a-key-of-this-gateway"})
    assert wrong.returncode == 3 and "$MCPFLEET_TOKEN is refused" in wrong.stderr, wrong.stderr
    for token in (OPS_KEY, f"  {OPS_KEY}\n"):
        called = run_cli(
            "call", "local", "echo", "-a", "text=hi", "--gateway", served.url, env={"MCPFLEET_TOKEN": token}
        )
        assert called.returncode == 0 and called.stdout.strip() == "hi", called.stderr
    listed = run_cli("servers", "--gateway", served.url, env={"MCPFLEET_TOKEN": READER_KEY})
    assert listed.returncode == 0 and "web" in listed.stdout and "local" not in listed.stdout  # reader's only
    for output in (without, listed, wrong):
        assert OPS_KEY not in output.stdout + output.stderr


def test_a_reload_naming_a_variable_the_gateway_lacks_says_to_restart_it(tmp_path: Path) -> None:
    """A reload reads the file again, not the environment: the advice for an unset `${VAR}` is a restart."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")

    async def run() -> None:
        async with Gateway(load_registry(registry), registry_path=registry) as gateway:
            added = "gateway:\n  auth:\n    api_keys:\n      - {name: new, key: '${MCPFLEET_TEST_UNSET_KEY}'}\n"
            registry.write_text(added + f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")
            assert await gateway.reload() is False
            (problem,) = gateway.reload_error
            assert "${MCPFLEET_TEST_UNSET_KEY} is not set" in problem
            assert "set it in the gateway's environment and restart it" in problem
            assert not gateway.snapshot.gateway.auth.required  # the registry in force stays

    anyio.run(run)


def test_an_entry_a_reload_leaves_out_for_a_variable_the_gateway_lacks_says_to_restart_it(tmp_path: Path) -> None:
    """The same advice for an entry left out (`failed`, answered 503) by a reload: chosen by the problem's
    kind (an unset variable), not by rewriting its text."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n")

    async def run() -> None:
        async with Gateway(load_registry(registry), registry_path=registry) as gateway:
            added = "  other: {command: [x], env: {TOKEN: '${MCPFLEET_TEST_UNSET_KEY}'}}\n"
            registry.write_text(f"servers:\n  local: {{command: {DEMO_STDIO}}}\n" + added)
            assert await gateway.reload() is True  # one missing token does not stop the other servers
            failed = gateway.snapshot.failed["other"]
            assert "${MCPFLEET_TEST_UNSET_KEY} is not set" in failed
            assert "set it in the gateway's environment and restart it" in failed
            assert "set it in the environment," not in failed

    anyio.run(run)
