"""stdio process pools: warm processes, the cap under load, a killed process, nothing left behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2

from support import ACCEPT, INIT, RunningGateway, rpc_messages, wait_for
from test_gateway_balancing import initialize, tool

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def status(gw: RunningGateway) -> dict[str, Any]:
    return httpx2.get(f"{gw.url}/servers").json()  # type: ignore[no-any-return]


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def test_warm_processes_serve_new_sessions_and_are_replaced(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  pooled: {{command: {DEMO}, pool: {{min: 2, max: 6}}}}\n")
    pid = status(gw)["pid"]
    wait_for(lambda: len(children(pid)) == 2)  # started before any request
    warm = children(pid)

    async def lease() -> int:
        async with httpx2.AsyncClient(timeout=30) as client:
            session = await initialize(client, gw.mcp("pooled"))
            answer = await tool(client, gw.mcp("pooled"), session, "whoami", {})
            return int(answer["result"]["structuredContent"]["pid"])

    served_by = anyio.run(lease)
    assert served_by in warm  # no cold start: the session got a process started ahead of it
    wait_for(lambda: status(gw)["servers"][0]["processes"]["warm"] == 2)  # and the pool refilled
    assert status(gw)["servers"][0]["processes"]["live"] == 3


def test_killed_process_fails_its_call_at_once_and_the_pool_refills(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(f"servers:\n  pooled: {{command: {DEMO}, pool: {{min: 1, max: 4}}}}\n")

    async def main() -> tuple[dict[str, Any], float]:
        async with httpx2.AsyncClient(timeout=60) as client:
            session = await initialize(client, gw.mcp("pooled"))
            who = await tool(client, gw.mcp("pooled"), session, "whoami", {})
            victim = int(who["result"]["structuredContent"]["pid"])
            async with anyio.create_task_group() as tg:
                result: dict[str, Any] = {}

                async def slow_call() -> None:
                    result["answer"] = await tool(client, gw.mcp("pooled"), session, "sleep", {"seconds": 30}, rid=7)

                tg.start_soon(slow_call)
                await anyio.sleep(0.5)
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
            return result["answer"], time.monotonic() - killed_at

    answer, took = anyio.run(main)
    assert answer["id"] == 7 and answer["error"]["code"] == -32014
    assert took < 5  # at once, not after the 30 s the call would have taken
    wait_for(lambda: status(gw)["servers"][0]["processes"]["warm"] == 1)


def test_fifty_concurrent_sessions_never_exceed_the_cap(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  capped: {{command: {DEMO}, pool: {{max: 8, acquire_timeout: 2}}}}\n")
    pid = status(gw)["pid"]
    most = 0
    outcomes: dict[int, int] = {}
    done = False

    async def watch() -> None:
        nonlocal most
        while not done:
            most = max(most, len(children(pid)))
            await anyio.sleep(0.02)

    async def main() -> None:
        nonlocal done
        async with httpx2.AsyncClient(timeout=60) as client, anyio.create_task_group() as tg:
            tg.start_soon(watch)

            async def one() -> None:
                response = await client.post(gw.mcp("capped"), json=INIT, headers=ACCEPT)
                outcomes[response.status_code] = outcomes.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    session = response.headers["mcp-session-id"]
                    body = {
                        "jsonrpc": "2.0",
                        "id": 2,
                        "method": "tools/call",
                        "params": {"name": "sleep", "arguments": {"seconds": 0.5}},
                    }
                    call = await client.post(gw.mcp("capped"), json=body, headers={**ACCEPT, "mcp-session-id": session})
                    outcomes[call.status_code] = outcomes.get(call.status_code, 0) + 1

            with anyio.fail_after(120):
                async with anyio.create_task_group() as clients:
                    for _ in range(50):
                        clients.start_soon(one)
            done = True

    anyio.run(main)
    assert 1 <= most <= 8, most
    assert set(outcomes) <= {200, 404, 503}, outcomes  # served, reclaimed (re-initialize), or told to retry
    assert outcomes.get(200, 0) >= 8


def test_shared_mode_multiplexes_64_clients_over_4_processes_with_exact_ids(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(f"servers:\n  shared: {{command: {DEMO}, stateless: true, pool: {{mode: shared, max: 4}}}}\n")
    pids: set[int] = set()
    wrong: list[str] = []

    async def client_job(client: httpx2.AsyncClient, worker: int) -> None:
        session = await initialize(client, gw.mcp("shared"))
        for rid in (f"req-{worker}", worker, "same-id-for-everyone", 0):
            answer = await tool(client, gw.mcp("shared"), session, "echo", {"text": f"w{worker}"}, rid=rid)  # type: ignore[arg-type]
            if answer.get("id") != rid or type(answer.get("id")) is not type(rid):
                wrong.append(f"worker {worker}: sent id {rid!r}, got {answer.get('id')!r}")
            elif answer["result"]["content"][0]["text"] != f"w{worker}":
                wrong.append(f"worker {worker}: got {answer['result']['content'][0]['text']!r}")
        body = {
            "jsonrpc": "2.0",
            "id": 99,
            "method": "tools/call",
            "params": {
                "name": "countdown",
                "arguments": {"start": 3, "interval": 0},
                "_meta": {"progressToken": "tok"},
            },
        }
        response = await client.post(gw.mcp("shared"), json=body, headers={**ACCEPT, "mcp-session-id": session})
        events = rpc_messages(response)
        progress = [e["params"]["progress"] for e in events if e.get("method") == "notifications/progress"]
        if progress != [1, 2, 3] or any(e.get("params", {}).get("progressToken", "tok") != "tok" for e in events):
            wrong.append(f"worker {worker}: progress {progress}")
        who = await tool(client, gw.mcp("shared"), session, "whoami", {}, rid=100)
        pids.add(int(who["result"]["structuredContent"]["pid"]))

    async def main() -> None:
        with anyio.fail_after(120):
            async with httpx2.AsyncClient(timeout=60) as client, anyio.create_task_group() as tg:
                for worker in range(64):
                    tg.start_soon(client_job, client, worker)

    anyio.run(main)
    assert wrong == []
    assert len(pids) == 4, pids  # 64 sessions, 4 processes


def test_shared_mode_needs_a_stateless_server(tmp_path: Path) -> None:
    from support import run_cli

    registry = tmp_path / "r.yaml"
    registry.write_text(f"servers:\n  s: {{command: {DEMO}, pool: {{mode: shared}}}}\n")
    result = run_cli("registry", "validate", str(registry))
    assert result.returncode == 2 and "needs 'stateless: true'" in result.stderr


async def whoami_in_new_session(client: httpx2.AsyncClient, url: str) -> tuple[str, int]:
    session = await initialize(client, url)
    who = await tool(client, url, session, "whoami", {})
    return session, int(who["result"]["structuredContent"]["pid"])


def test_spare_shared_processes_stop_after_the_idle_timeout(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(
        f"servers:\n  shared: {{command: {DEMO}, stateless: true,"
        " pool: {mode: shared, min: 1, max: 4, idle_timeout: 1}}\n"
    )
    pid = status(gw)["pid"]
    wait_for(lambda: len(children(pid)) == 1)  # pool.min, started before any request
    warm = children(pid)

    async def main() -> set[int]:
        async with httpx2.AsyncClient(timeout=60) as client:
            opened = [await whoami_in_new_session(client, gw.mcp("shared")) for _ in range(4)]
            for session, _ in opened:
                response = await client.delete(gw.mcp("shared"), headers={"mcp-session-id": session})
                assert response.status_code == 200
            return {pid for _, pid in opened}

    served = anyio.run(main)
    assert len(served) == 4 and warm <= served  # the first session took the warm process
    wait_for(lambda: len(children(pid)) == 1)  # the three spares stopped after a second idle
    assert status(gw)["servers"][0]["processes"]["warm"] == 1


def test_shared_processes_are_recycled_after_max_sessions(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(
        f"servers:\n  shared: {{command: {DEMO}, stateless: true,"
        " pool: {mode: shared, max: 2, max_sessions_per_process: 2}}\n"
    )
    pid = status(gw)["pid"]

    async def sessions(count: int) -> list[tuple[str, int]]:
        async with httpx2.AsyncClient(timeout=60) as client:
            return [await whoami_in_new_session(client, gw.mcp("shared")) for _ in range(count)]

    async def end(opened: list[tuple[str, int]]) -> None:
        async with httpx2.AsyncClient(timeout=60) as client:
            for session, _ in opened:
                await client.delete(gw.mcp("shared"), headers={"mcp-session-id": session})

    first = anyio.run(sessions, 4)
    per_process = Counter(pid for _, pid in first)
    assert sorted(per_process.values()) == [2, 2]  # two processes, two sessions each, then they are worn out
    anyio.run(end, first)
    wait_for(lambda: not children(pid))  # worn processes stop once their last session ends
    later = anyio.run(sessions, 1)
    assert later[0][1] not in per_process  # a new process
    anyio.run(end, later)


def test_max_lifetime_replaces_warm_processes_and_ends_sessions_between_calls(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(f"servers:\n  pooled: {{command: {DEMO}, pool: {{min: 1, max: 4, max_lifetime: 2}}}}\n")
    pid = status(gw)["pid"]
    wait_for(lambda: len(children(pid)) == 1)
    first_warm = children(pid)
    wait_for(lambda: len(children(pid)) == 1 and children(pid) != first_warm)  # replaced once 2 s old

    async def main() -> tuple[dict[str, Any], int]:
        async with httpx2.AsyncClient(timeout=60) as client:
            session = await initialize(client, gw.mcp("pooled"))
            # A call that runs past the process's lifetime is not cut short...
            slow = await tool(client, gw.mcp("pooled"), session, "sleep", {"seconds": 3})
            # ...the session ends at the first moment nothing is in flight: the client initializes again.
            body = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                response = await client.post(gw.mcp("pooled"), json=body, headers={**ACCEPT, "mcp-session-id": session})
                if response.status_code == 404:
                    return slow, 404
                await anyio.sleep(0.2)
            return slow, response.status_code

    slow, status_after = anyio.run(main)
    assert slow["result"]["content"][0]["text"] == "slept 3 s"
    assert status_after == 404


def test_idle_sessions_expire_together_and_their_processes_stop(gateway: Callable[[str], RunningGateway]) -> None:
    """40 never-closed stdio sessions with a 2 s idle timeout all end, and every process stops (the table ends
    them together: tests/unit/test_session_expiry.py shows the concurrency with a few hundred)."""
    gw = gateway(f"servers:\n  one: {{command: {DEMO}, pool: {{max: 64}}}}\ngateway: {{session_idle_timeout: 2}}\n")
    pid = status(gw)["pid"]

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=120) as client:
            limiter = anyio.CapacityLimiter(8)

            async def one() -> None:
                async with limiter:
                    session = await initialize(client, gw.mcp("one"))
                    await tool(client, gw.mcp("one"), session, "echo", {"text": "x"})

            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(one)

    anyio.run(main)
    wait_for(lambda: status(gw)["servers"][0]["sessions"] == 0, timeout=60)
    wait_for(lambda: not children(pid), timeout=60)
    assert status(gw)["servers"][0]["processes"]["live"] == 0
