"""`/metrics` in the Prometheus text format, checked against traffic the test sent itself."""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio
import httpx2
from prometheus_client.parser import text_string_to_metric_families

from conftest import RunningGateway
from support import ACCEPT, INIT, free_port
from test_gateway_balancing import initialize, tool

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def scrape(gw: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx2.get(f"{gw.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_what_happened(gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]) -> None:
    live = demo_http("a")
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway(
        f"servers:\n  web: {{endpoints: ['{dead}', '{live}'], health: {{failures_to_eject: 1}}}}\n"
        f"  local: {{command: {DEMO}}}\n"
    )

    async def traffic() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:
            web = await initialize(client, gw.mcp("web"))
            for call in range(3):
                await tool(client, gw.mcp("web"), web, "echo", {"text": "m"}, rid=call + 2)
            await initialize(client, gw.mcp("local"))
            assert (await client.post(f"{gw.url}/nope/mcp", json=INIT, headers=ACCEPT)).status_code == 404

    anyio.run(traffic)
    gw.registry.write_text(gw.registry.read_text() + "  broken: {colour: red}\n")
    assert httpx2.post(f"{gw.url}/admin/reload").status_code == 422

    samples = scrape(gw)
    # initialize + initialized + 3 calls through web, initialize + initialized on local
    assert samples[("mcpfleet_requests_total", (("method", "POST"), ("server", "web")))] == 5
    assert samples[("mcpfleet_request_duration_seconds_count", (("server", "web"),))] == 5
    # An unknown id is not a label (a client could otherwise mint any number of series): it counts under "-".
    assert samples[("mcpfleet_errors_total", (("kind", "unknown_server"), ("server", "-"), ("status", "404")))] == 1
    assert samples[("mcpfleet_replica_requests_total", (("replica", live), ("server", "web")))] == 5
    assert samples[("mcpfleet_replica_connect_failures_total", (("replica", dead), ("server", "web")))] >= 1
    assert samples[("mcpfleet_replica_up", (("replica", dead), ("server", "web")))] == 0
    assert samples[("mcpfleet_replica_ejections_total", (("replica", dead), ("server", "web")))] >= 1
    assert samples[("mcpfleet_processes", (("kind", "stdio"), ("server", "local"), ("state", "idle")))] == 1
    assert samples[("mcpfleet_process_starts_total", (("kind", "stdio"), ("server", "local")))] == 1
    assert samples[("mcpfleet_sessions", ())] == 1
    assert samples[("mcpfleet_reloads_total", (("outcome", "rejected"),))] == 1
