"""stdio process pools: warm processes, the cap under load, a killed process, nothing left behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2

from conftest import RunningGateway
from support import ACCEPT, INIT, rpc_messages
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


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


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
