"""What a caller learns of others on a gateway with API keys and access rules (trial 2 N6, N11), and what
the CLI says when the gateway refuses it.

Three keys: `ops` (group `ops`: every server), `reader` (`web` only) and `idle` (no rule names it: no
server). Each caller's error messages, status page and admin rights follow its own rules: an unknown id's
404 lists only the servers it may reach, a recent error of another caller does not name that caller, and
only a caller that reaches every server reloads.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable

import httpx2
import pytest

from support import ACCEPT, INIT, RunningGateway, run_cli

OPS_KEY = "ops-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
IDLE_KEY = "idle-key-0123456789abcdef"
DEMO_STDIO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


REGISTRY = f"""
gateway:
  auth:
    api_keys:
      - {{name: ops, sha256: {_sha(OPS_KEY)}, groups: [ops]}}
      - {{name: reader, sha256: {_sha(READER_KEY)}}}
      - {{name: idle, sha256: {_sha(IDLE_KEY)}}}
  access:
    - {{principals: ["group:ops"], servers: ["*"]}}
    - {{principals: ["key:reader"], servers: [web]}}
  limits:
    rate_per_principal: {{rps: 0.001, burst: 2}}
servers:
  local: {{command: {DEMO_STDIO}}}
  web: {{command: {DEMO_STDIO}}}
"""


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def gw(gateway: Callable[[str], RunningGateway]) -> RunningGateway:
    return gateway(REGISTRY)


def test_an_unknown_servers_404_lists_only_what_the_caller_may_reach(gw: RunningGateway) -> None:
    def message(key: str | None, path: str = "/nope/mcp") -> str:
        headers = {**ACCEPT, **(bearer(key) if key else {})}
        answer = httpx2.post(gw.url + path, json=INIT, headers=headers, timeout=30)
        assert answer.status_code == 404, answer.text
        return str(answer.json()["error"]["message"])

    assert message(OPS_KEY) == "unknown server 'nope'; servers you may reach here: local, web"
    assert message(READER_KEY) == "unknown server 'nope'; servers you may reach here: web"
    assert message(IDLE_KEY) == "unknown server 'nope'"
    # The metadata documents are open: their caller is anonymous, which reaches no server here.
    metadata = httpx2.get(f"{gw.url}/.well-known/oauth-protected-resource/nope/mcp", timeout=30)
    assert metadata.status_code == 404 and metadata.json()["error"]["message"] == "unknown server 'nope'"
    listed = run_cli("tools", "nope", "--gateway", gw.url, env={"MCPFLEET_TOKEN": IDLE_KEY})
    assert listed.returncode == 3, listed.stderr
    assert "unknown server 'nope'" in listed.stderr and "local" not in listed.stderr, listed.stderr


def test_a_recent_error_names_its_caller_to_that_caller_only(gw: RunningGateway) -> None:
    """`reader` goes over its rate on `web`, which `ops` shares: `ops`'s status page shows the error, with
    "another caller" where the reader's principal was."""
    statuses = [
        httpx2.post(f"{gw.url}/web/mcp", json=INIT, headers={**ACCEPT, **bearer(READER_KEY)}, timeout=30).status_code
        for _ in range(3)
    ]
    assert statuses[-1] == 429, statuses

    def errors(key: str) -> list[str]:
        page = httpx2.get(f"{gw.url}/", headers={"accept": "application/json", **bearer(key)}, timeout=30).json()
        return [e["message"] for e in page["recent_errors"] if e["server"] == "web" and e["code"] == -32009]

    [own] = errors(READER_KEY)
    assert own.startswith("key:reader is over"), own
    [seen] = errors(OPS_KEY)
    assert seen.startswith("another caller is over") and "reader" not in seen, seen


def test_a_refusal_for_a_named_server_is_recorded_under_that_server(gw: RunningGateway) -> None:
    """`reader` may not reach `local`: its 403 counts under `local` (an id the registry names, so a bounded
    label), in the status page's recent errors of those who may see `local` and in `/metrics`, not under "-",
    where every caller saw it (trial 4)."""
    refused = httpx2.post(f"{gw.url}/local/mcp", json=INIT, headers={**ACCEPT, **bearer(READER_KEY)}, timeout=30)
    assert refused.status_code == 403, refused.text

    def recent(key: str) -> list[tuple[str, int]]:
        page = httpx2.get(f"{gw.url}/", headers={"accept": "application/json", **bearer(key)}, timeout=30).json()
        return [(e["server"], e["status"]) for e in page["recent_errors"]]

    assert recent(OPS_KEY) == [("local", 403)]
    assert recent(READER_KEY) == []  # a server it may not reach: not in its view, its errors neither
    metrics = httpx2.get(f"{gw.url}/metrics", headers=bearer(OPS_KEY), timeout=30).text
    assert 'mcpfleet_errors_total{kind="invalid_request",server="local",status="403"} 1.0' in metrics, metrics


def test_only_a_caller_given_every_server_may_reload(gw: RunningGateway) -> None:
    for key in (READER_KEY, IDLE_KEY):
        refused = httpx2.post(f"{gw.url}/admin/reload", headers=bearer(key), timeout=30)
        assert refused.status_code == 403, refused.text
        assert "may not reload" in refused.json()["error"]["message"]
        assert "gateway.access" in refused.json()["error"]["message"]
    done = httpx2.post(f"{gw.url}/admin/reload", headers=bearer(OPS_KEY), timeout=60)
    assert done.status_code == 200 and done.json()["reloaded"] is True, done.text


@pytest.mark.parametrize(
    "command", [["servers"], ["tools", "local"], ["call", "local", "echo", "-a", "text=hi"]], ids=lambda c: c[0]
)
def test_every_cli_command_says_the_same_when_the_gateway_asks_for_credentials(
    gw: RunningGateway, command: list[str]
) -> None:
    unset = run_cli(*command, "--gateway", gw.url, env={"MCPFLEET_TOKEN": ""})
    assert unset.returncode == 3 and "HTTP 401" in unset.stderr, unset.stderr
    assert "$MCPFLEET_TOKEN is not set" in unset.stderr, unset.stderr
    wrong = run_cli(*command, "--gateway", gw.url, env={"MCPFLEET_TOKEN": "not-a-key-of-this-gateway"})
    assert wrong.returncode == 3 and "$MCPFLEET_TOKEN is refused" in wrong.stderr, wrong.stderr
    assert "is not valid here" in wrong.stderr, wrong.stderr  # the gateway's own words


def test_a_server_the_rules_refuse_is_a_refusal_not_a_request_for_credentials(gw: RunningGateway) -> None:
    for command in (["tools", "local"], ["call", "local", "echo", "-a", "text=hi"]):
        refused = run_cli(*command, "--gateway", gw.url, env={"MCPFLEET_TOKEN": READER_KEY})
        assert refused.returncode == 3, refused.stderr
        assert "refused this caller for server 'local' (HTTP 403" in refused.stderr, refused.stderr
        assert "key:reader may not use server 'local'" in refused.stderr and "gateway.access" in refused.stderr
        assert "requires authorization" not in refused.stderr and "MCPFLEET_TOKEN" not in refused.stderr


def test_a_failed_entrys_error_is_told_only_to_callers_the_rules_let_reach_it(
    gateway: Callable[[str], RunningGateway],
) -> None:
    """An entry that failed to load (an unset `${VAR}`) answers 503 with its error to a caller that may
    reach it; any other caller gets the rules' 403, as for a served entry, and learns nothing of the error."""
    broken = "  broken: {command: [mcp-broken], env: {T: '${MCPFLEET_TEST_UNSET_CALLER_VIEW}'}}\n"
    gw = gateway(REGISTRY + broken)

    def answer(key: str) -> httpx2.Response:
        return httpx2.post(f"{gw.url}/broken/mcp", json=INIT, headers={**ACCEPT, **bearer(key)}, timeout=30)

    allowed, refused = answer(OPS_KEY), answer(READER_KEY)
    assert allowed.status_code == 503 and "MCPFLEET_TEST_UNSET_CALLER_VIEW" in allowed.text, allowed.text
    assert refused.status_code == 403, refused.text
    assert "MCPFLEET_TEST_UNSET_CALLER_VIEW" not in refused.text and "gateway.access" in refused.text
