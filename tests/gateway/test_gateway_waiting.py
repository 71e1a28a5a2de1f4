"""Waiting for a stdio process: every waiter gets a process, or its 503, within `pool.acquire_timeout` of its
own arrival, in arrival order, however many wait; capacity is what is in flight, not idle sessions; a burst of
new sessions is started a few at a time, so none fails for lack of CPU while the pool has room.

Bounds here are the gateway's own settings (`acquire_timeout`, `timeouts.startup`), each with seconds of
slack for a loaded machine: before this was fixed, the k-th waiter was answered after k x acquire_timeout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest

from support import ACCEPT, INIT, RunningGateway, rpc_messages, until
from test_gateway_balancing import initialize, tool

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
WAIT = 2.0  # pool.acquire_timeout in these tests
SLACK = 4.0  # seconds a loaded machine may add to a bound (the old code missed it by (k-1) x WAIT)
MODERN_HEADERS = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}


def modern_echo(text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": text},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "waiting-test", "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }


async def servers(client: httpx2.AsyncClient, gw: RunningGateway) -> dict[str, Any]:
    return (await client.get(f"{gw.url}/servers")).json()["servers"][0]  # type: ignore[no-any-return]


async def occupy(client: httpx2.AsyncClient, gw: RunningGateway, tg: anyio.abc.TaskGroup, sessions: int = 1) -> None:
    """Open `sessions` sessions, each with a long call in flight (cancelled when the test is done)."""
    opened = [await initialize(client, gw.mcp("one")) for _ in range(sessions)]
    for session in opened:
        tg.start_soon(tool, client, gw.mcp("one"), session, "sleep", {"seconds": 50})

    async def all_busy() -> bool:
        shown = await servers(client, gw)
        return shown["sessions"] == sessions

    await until(all_busy)
    await anyio.sleep(0.5)  # the calls reached their processes


async def waiters(gw: RunningGateway, count: int, kind: str) -> list[tuple[float, httpx2.Response]]:
    """`count` concurrent requests that each need a process, on connections of their own: (seconds from
    its own send to its answer, the answer)."""
    results: list[tuple[float, httpx2.Response]] = []

    async def one(index: int) -> None:
        async with httpx2.AsyncClient(timeout=120) as own:
            sent = time.monotonic()
            if kind == "2026":
                response = await own.post(gw.mcp("one"), json=modern_echo(f"w{index}"), headers=MODERN_HEADERS)
            else:
                response = await own.post(gw.mcp("one"), json=INIT, headers=ACCEPT)
            results.append((time.monotonic() - sent, response))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(one, index)
    return results


@pytest.mark.parametrize("count", [1, 5, 50])
@pytest.mark.parametrize(
    ("mode", "kind"),
    [("session", "2026"), ("session", "2025"), ("shared", "2026")],  # shared 2025 sessions share the busy process
)
def test_every_waiter_gets_its_503_within_acquire_timeout_of_its_arrival(
    gateway: Callable[[str], RunningGateway], count: int, mode: str, kind: str
) -> None:
    stateless = ", stateless: true" if mode == "shared" else ""
    gw = gateway(
        f"servers:\n  one: {{command: {DEMO}{stateless}, pool: {{mode: {mode}, max: 1, acquire_timeout: {WAIT}}}}}\n"
    )

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=120) as client, anyio.create_task_group() as busy:
            await occupy(client, gw, busy)
            answered = await waiters(gw, count, kind)
            busy.cancel_scope.cancel()
        assert len(answered) == count
        for elapsed, response in answered:
            assert response.status_code == 503, response.text
            assert WAIT - 0.2 <= elapsed <= WAIT + SLACK, sorted(e for e, _ in answered)
        for _, response in answered:
            error = response.json()["error"]
            assert error["code"] == -32016 and response.headers["retry-after"] == "1"
            assert "no process within 2 s" in error["message"] and "pool.acquire_timeout" in error["message"]

    anyio.run(main)


def test_the_503_says_what_holds_the_processes(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(
        f"servers:\n  one: {{command: {DEMO}, stateless: true,"
        f" pool: {{mode: shared, max: 3, acquire_timeout: {WAIT}}}}}\n"
    )

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=120) as client, anyio.create_task_group() as busy:
            await occupy(client, gw, busy, sessions=3)
            [(_, response)] = await waiters(gw, 1, "2026")
            busy.cancel_scope.cancel()
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert "all 3 processes are in use" in message and "3 by shared sessions" in message, message

    anyio.run(main)


def test_idle_shared_sessions_do_not_hold_the_pool(gateway: Callable[[str], RunningGateway]) -> None:
    """Three idle sessions on a `max: 3` shared pool: a 2026-07-28 call still gets a process at once (one
    process's sessions move to another), and every session goes on working."""
    gw = gateway(
        f"servers:\n  one: {{command: {DEMO}, stateless: true, pool: {{mode: shared, max: 3, acquire_timeout: 10}}}}\n"
    )

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=60) as client:
            sessions = [await initialize(client, gw.mcp("one")) for _ in range(3)]
            pids = {
                (await tool(client, gw.mcp("one"), s, "whoami", {}))["result"]["structuredContent"]["pid"]
                for s in sessions
            }
            assert len(pids) == 3  # one process each: the pool is at max
            sent = time.monotonic()
            response = await client.post(gw.mcp("one"), json=modern_echo("now"), headers=MODERN_HEADERS)
            assert response.status_code == 200, response.text
            assert rpc_messages(response)[-1]["result"]["content"][0]["text"] == "now"
            assert time.monotonic() - sent < 10  # not after acquire_timeout: nothing was in flight
            for index, session in enumerate(sessions):
                answer = await tool(client, gw.mcp("one"), session, "echo", {"text": f"s{index}"})
                assert answer["result"]["content"][0]["text"] == f"s{index}"
            shown = await servers(client, gw)
            assert shown["processes"]["live"] <= 3 and shown["sessions"] == 3

    anyio.run(main)


def test_waiters_get_processes_in_arrival_order(gateway: Callable[[str], RunningGateway]) -> None:
    """Session mode, `max: 1`: five sessions that arrive 0.5 s apart while the process is busy are served in
    the order they came, each as the one before it ends."""
    gw = gateway(f"servers:\n  one: {{command: {DEMO}, pool: {{max: 1, acquire_timeout: 60}}}}\n")
    served: list[int] = []

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=120) as client:
            first = await initialize(client, gw.mcp("one"))

            async def waiter(index: int) -> None:
                await anyio.sleep(0.5 * index)
                async with httpx2.AsyncClient(timeout=120) as own:
                    session = await initialize(own, gw.mcp("one"))
                    served.append(index)
                    await tool(own, gw.mcp("one"), session, "echo", {"text": str(index)})
                    await own.delete(gw.mcp("one"), headers={"mcp-session-id": session})

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(tool, client, gw.mcp("one"), first, "sleep", {"seconds": 3.5})
                    for index in range(1, 6):
                        tg.start_soon(waiter, index)
                    await anyio.sleep(3.8)  # the first session's call is over: it is idle, and freed for a waiter

    anyio.run(main)
    assert served == [1, 2, 3, 4, 5]


def test_a_burst_of_32_new_sessions_all_open(gateway: Callable[[str], RunningGateway]) -> None:
    """32 sessions at once on a pool with room (`min: 4, max: 128`): processes start a few at a time, so each
    start-up fits its own `timeouts.startup` (5 s here, far more than one start needs, far less than 32 at
    once on 2 cores), and the queue fits `acquire_timeout`."""
    gw = gateway(
        f"servers:\n  one: {{command: {DEMO}, timeouts: {{startup: 5}},"
        " pool: {min: 4, max: 128, acquire_timeout: 120}}\n"
    )
    answers: list[str] = []
    failures: list[str] = []

    async def main() -> None:
        async def one(index: int) -> None:
            async with httpx2.AsyncClient(timeout=180) as own:
                response = await own.post(gw.mcp("one"), json=INIT, headers=ACCEPT)
                if response.status_code != 200:
                    failures.append(response.text)
                    return
                session = response.headers["mcp-session-id"]
                answer = await tool(own, gw.mcp("one"), session, "echo", {"text": f"b{index}"})
                answers.append(answer["result"]["content"][0]["text"])
                await own.delete(gw.mcp("one"), headers={"mcp-session-id": session})

        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for index in range(32):
                    tg.start_soon(one, index)

    anyio.run(main)
    assert failures == []
    assert sorted(answers) == sorted(f"b{index}" for index in range(32))


def test_a_silent_legacy_sse_client_does_not_hold_the_start_ups(gateway: Callable[[str], RunningGateway]) -> None:
    """A legacy SSE client that opens its stream and sends nothing has a process whose first message waits
    for that client: its start-up turn ends after a measured start-up, so other sessions still start."""
    gw = gateway(f"servers:\n  one: {{command: {DEMO}, pool: {{max: 4, max_starting: 1, acquire_timeout: 15}}}}\n")

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=60) as client, client.stream("GET", f"{gw.url}/one/sse") as idle:
            assert idle.status_code == 200
            session = await initialize(client, gw.mcp("one"))  # before: 503, "1 process start-ups"
            answer = await tool(client, gw.mcp("one"), session, "echo", {"text": "started"})
            assert answer["result"]["content"][0]["text"] == "started"

    anyio.run(main)


def test_a_session_just_opened_is_not_ended_for_a_waiter(gateway: Callable[[str], RunningGateway]) -> None:
    """`max: 1`: while another client waits, the session that just initialized keeps its process for its
    first calls (it is idle only once unused for a moment after its handshake, not since its process started)."""
    gw = gateway(f"servers:\n  one: {{command: {DEMO}, pool: {{max: 1, acquire_timeout: 30}}}}\n")

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=60) as first, httpx2.AsyncClient(timeout=60) as second:
            session = await initialize(first, gw.mcp("one"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(initialize, second, gw.mcp("one"))  # waits for the one process
                await anyio.sleep(0.3)
                answer = await tool(first, gw.mcp("one"), session, "echo", {"text": "still mine"})
                assert answer["result"]["content"][0]["text"] == "still mine"
                await first.delete(gw.mcp("one"), headers={"mcp-session-id": session})

    anyio.run(main)
