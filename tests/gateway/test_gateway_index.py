"""`GET /` answers with an index of the servers and their URLs; an entry whose `${VAR}` is unset is shown as
failed (at `/`, at `/servers`, and 503 on its own routes) while every other server is served."""

from __future__ import annotations

import sys
from collections.abc import Callable

import httpx2

from support import ACCEPT, INIT, RunningGateway

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
REGISTRY = (
    "servers:\n"
    f"  time: {{command: {DEMO}, description: the clock}}\n"
    "  search:\n"
    "    endpoints: [http://127.0.0.1:9]\n"
    '    headers: {Authorization: "Bearer ${MCPFLEET_TEST_UNSET_TOKEN}"}\n'
)


def test_the_root_lists_every_server_with_its_urls(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(REGISTRY)
    port = gw.url.rsplit(":", 1)[1]
    index = httpx2.get(f"{gw.url}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("application/json")
    body = index.json()
    assert body["servers"] == [
        {
            "id": "time",
            "description": "the clock",
            "type": "stdio",
            "mcp": f"http://127.0.0.1:{port}/time/mcp",
            "sse": f"http://127.0.0.1:{port}/time/sse",
            "ws": f"ws://127.0.0.1:{port}/time/ws",
        }
    ]
    [failed] = body["failed"]
    assert failed["id"] == "search" and "${MCPFLEET_TEST_UNSET_TOKEN} is not set" in failed["error"]
    assert body["status"]["servers"] == f"http://127.0.0.1:{port}/servers"
    as_localhost = httpx2.get(f"http://localhost:{port}/").json()  # URLs as the client reached the gateway
    assert as_localhost["servers"][0]["mcp"] == f"http://localhost:{port}/time/mcp"


def test_an_entry_with_an_unset_variable_fails_alone(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(REGISTRY)
    shown = {s["id"]: s for s in httpx2.get(f"{gw.url}/servers").json()["servers"]}
    assert shown["search"]["health"] == "failed"
    assert "servers.search.headers.Authorization" in shown["search"]["error"]
    refused = httpx2.post(gw.mcp("search"), json=INIT, headers=ACCEPT)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == -32018 and "MCPFLEET_TEST_UNSET_TOKEN" in error["message"]
    assert "fix the registry and reload" in error["message"]
    # A served gateway reads its environment once: the advice is a restart, never "set it" alone.
    assert "set it in the gateway's environment and restart it" in error["message"]
    served = httpx2.post(gw.mcp("time"), json=INIT, headers=ACCEPT, timeout=60)
    assert served.status_code == 200 and served.headers["mcp-session-id"]


def test_admin_reload_refuses_proxied_requests_and_other_methods(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(REGISTRY)
    for claim in ({"x-forwarded-for": "10.1.2.3"}, {"forwarded": "for=10.1.2.3"}, {"x-real-ip": "127.0.0.1"}):
        refused = httpx2.post(f"{gw.url}/admin/reload", headers=claim)
        assert refused.status_code == 403, claim
        assert refused.json()["error"]["message"] == "the admin endpoints answer loopback clients only"
    wrong_method = httpx2.get(f"{gw.url}/admin/reload")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert httpx2.post(f"{gw.url}/admin/reload").json()["reloaded"] is True


def test_a_gateway_error_carries_the_id_of_the_request(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(REGISTRY)
    body = {"jsonrpc": "2.0", "id": "req-7", "method": "tools/list"}
    answer = httpx2.post(gw.mcp("time"), json=body, headers=ACCEPT)  # no session: the gateway's own 400
    assert answer.status_code == 400 and answer.json()["id"] == "req-7"
    assert "initialize first" in answer.json()["error"]["message"]
