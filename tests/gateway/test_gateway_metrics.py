"""`/metrics` in the Prometheus text format, checked against traffic the test sent itself."""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio
import httpx2
from prometheus_client.parser import text_string_to_metric_families

from support import ACCEPT, INIT, RunningGateway, free_port, until
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
    port = free_port()
    dead = f"http://user:s3cret-pass@127.0.0.1:{port}"  # a password in a replica's URL: never a label value
    dead_label = f"http://user:***@127.0.0.1:{port}"
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
    assert not [key for key in samples if "s3cret-pass" in str(key)]
    # initialize + initialized + 3 calls through web, initialize + initialized on local
    assert samples[("mcpfleet_requests_total", (("method", "POST"), ("server", "web")))] == 5
    assert samples[("mcpfleet_request_duration_seconds_count", (("server", "web"),))] == 5
    # An unknown id is not a label (a client could otherwise mint any number of series): it counts under "-".
    assert samples[("mcpfleet_errors_total", (("kind", "unknown_server"), ("server", "-"), ("status", "404")))] == 1
    assert samples[("mcpfleet_replica_requests_total", (("replica", live), ("server", "web")))] == 5
    assert samples[("mcpfleet_replica_connect_failures_total", (("replica", dead_label), ("server", "web")))] >= 1
    assert samples[("mcpfleet_replica_up", (("replica", dead_label), ("server", "web")))] == 0
    assert samples[("mcpfleet_replica_ejections_total", (("replica", dead_label), ("server", "web")))] >= 1
    assert samples[("mcpfleet_processes", (("kind", "stdio"), ("server", "local"), ("state", "idle")))] == 1
    assert samples[("mcpfleet_process_starts_total", (("kind", "stdio"), ("server", "local")))] == 1
    assert samples[("mcpfleet_sessions", ())] == 1
    # The file watch may reload the broken file too, if it acts before the admin request (it skips content
    # already loaded, so after it there is nothing to do): one or two rejections, never an accepted one.
    assert samples[("mcpfleet_reloads_total", (("outcome", "rejected"),))] in (1, 2)
    assert ("mcpfleet_reloads_total", (("outcome", "ok"),)) not in samples or samples[
        ("mcpfleet_reloads_total", (("outcome", "ok"),))
    ] == 0


def test_pool_metrics_show_warm_processes_waiting_sessions_and_crashes(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(f"servers:\n  one: {{command: {DEMO}, pool: {{min: 1, max: 1, acquire_timeout: 20}}}}\n")
    warm = ("mcpfleet_pool_warm", (("server", "one"),))
    waiting = ("mcpfleet_pool_waiting", (("kind", "stdio"), ("server", "one")))
    crashes = ("mcpfleet_process_exits_unexpected_total", (("kind", "stdio"), ("server", "one")))

    async def sample(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return (await anyio.to_thread.run_sync(scrape, gw))[key]

    async def main() -> None:
        await until(lambda: sample(warm))  # pool.min started before any request
        assert scrape(gw)[("mcpfleet_pool_max", (("server", "one"),))] == 1
        async with httpx2.AsyncClient(timeout=60) as client, anyio.create_task_group() as tg:
            first = await initialize(client, gw.mcp("one"))  # takes the only process
            assert await sample(warm) == 0
            second: list[str] = []

            async def initialize_second() -> None:
                second.append(await initialize(client, gw.mcp("one")))

            busy = await anyio.to_thread.run_sync(scrape, gw)
            assert busy[waiting] == 0
            tg.start_soon(tool, client, gw.mcp("one"), first, "sleep", {"seconds": 1})
            await anyio.sleep(0.3)  # the first session is busy, so it cannot be reclaimed
            tg.start_soon(initialize_second)
            await until(lambda: sample(waiting))  # the second session waits for the slot
            await anyio.sleep(1)
            await client.delete(gw.mcp("one"), headers={"mcp-session-id": first})  # gives the slot back
            with anyio.fail_after(20):
                while not second:  # noqa: ASYNC110 (set by the task above)
                    await anyio.sleep(0.1)
            assert await sample(waiting) == 0
            assert await sample(crashes) == 0  # stopping a process on DELETE is not a crash
            await tool(client, gw.mcp("one"), second[0], "crash", {})
            await until(lambda: sample(crashes))

    anyio.run(main)


def test_a_server_that_drains_beside_its_successor_gives_each_series_once(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    """A type change keeps the old runtime draining (its session open) while a new one serves the same id:
    `/metrics` must still name each series once, or Prometheus rejects the scrape."""
    web = demo_http("a")
    gw = gateway(f"servers:\n  s: {{command: {DEMO}}}\n")

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=30) as client:
            session = await initialize(client, gw.mcp("s"))  # a stdio session on the first runtime
            gw.registry.write_text(f"servers:\n  s: {{endpoint: '{web}', command: {DEMO}}}\n")  # now http
            assert (await client.post(f"{gw.url}/admin/reload")).status_code == 200
            await initialize(client, gw.mcp("s"))  # the new runtime serves new sessions (over http)
            answer = await tool(client, gw.mcp("s"), session, "echo", {"text": "still here"})
            assert answer["result"]["content"][0]["text"] == "still here"  # the old one still serves its own
            servers = (await client.get(f"{gw.url}/servers")).json()
            assert [s["id"] for s in servers["draining"]] == ["s"]
            text = (await client.get(f"{gw.url}/metrics")).text
            seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    assert key not in seen, f"{key} appears twice"
                    seen.add(key)
            assert any(name == "mcpfleet_processes" and ("server", "s") in labels for name, labels in seen)

    anyio.run(main)
