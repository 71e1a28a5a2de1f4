"""Faults under load: 8 SDK clients call without pause while an http replica is killed mid-stream, stdio
processes get `kill -9`, a backend stops answering, or an invalid registry is pushed.

Every call carries its own argument (`echo` of a text naming the client and the call) and must get exactly
that back: an answer meant for another client would show. Every call ends, with its answer or an error, within
CALL_BOUND seconds (a hang fails the test), and a client whose call failed connects again and goes on. The
leak check of tests/conftest.py runs after each test (no process left). What tests/gateway/test_gateway_failover.py
and test_gateway_reload_under_load.py prove with one fault and no concurrency, or with reloads of valid files,
is not repeated here: these combine the fault with load.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import DEMO, LoggedGateway
from support import demo_argv, free_port, running

CLIENTS = 8
CALLS = 40  # per client
CALL_BOUND = 20.0  # seconds a call may take, answer or error, before it counts as hung
RUN_BOUND = 120.0  # seconds the whole load may take


@dataclass
class Load:
    """What the clients saw: outcomes by kind, and what must never happen."""

    outcomes: Counter[str] = field(default_factory=Counter)
    hung: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ok_after_fault: int = 0
    faulted: anyio.Event = field(default_factory=anyio.Event)


async def run_load(
    url_of: Callable[[int], str],
    fault: Callable[[Load], Awaitable[None]],
    *,
    after: int = 3 * CLIENTS,
    slow: Callable[[int, int], tuple[str, dict[str, Any]] | None] = lambda worker, call: None,
) -> Load:
    """CLIENTS clients make CALLS calls each on `url_of(client)`; `fault` runs once `after` calls succeeded.
    `slow(client, call)` names a call to make instead of `echo` (a stream, a long call), or None."""
    load = Load()

    async def one_call(client: Client, worker: int, call: int) -> None:
        extra = slow(worker, call)
        text = f"client {worker} call {call}"
        name, arguments = extra if extra is not None else ("echo", {"text": text})
        result = await client.call_tool(name, arguments)
        if name == "echo":
            got = result.content[0].text  # type: ignore[union-attr]
            if got != text:
                load.wrong.append(f"sent {text!r}, got {got!r}")
        load.outcomes["ok"] += 1
        if load.faulted.is_set():
            load.ok_after_fault += 1

    async def worker(index: int) -> None:
        server = url_of(index).rsplit("/", 2)[-2]
        call = 0
        while call < CALLS:
            try:
                async with Client(url_of(index), mode="legacy") as client:
                    while call < CALLS:
                        call += 1
                        with anyio.fail_after(CALL_BOUND):
                            await one_call(client, index, call)
            except Exception as exc:  # the call failed, or the connection (its replica is gone): connect again
                cause = leaf(exc)
                if isinstance(cause, TimeoutError):
                    load.hung.append(f"{server} client {index} call {call}")
                elif isinstance(cause, MCPError):
                    load.outcomes[f"error {cause.code}"] += 1
                    load.errors.append(f"{server} client {index} call {call}: {cause.code} {cause.message[:150]}")
                else:
                    load.outcomes[type(cause).__name__] += 1
                    load.errors.append(
                        f"{server} client {index} call {call}: {type(cause).__name__}: {str(cause)[:150]}"
                    )
            await anyio.sleep(0.05)

    async def trigger() -> None:
        while load.outcomes["ok"] < after:  # noqa: ASYNC110 - paced by answers, not by seconds
            await anyio.sleep(0.05)
        load.faulted.set()
        await fault(load)

    with anyio.fail_after(RUN_BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(trigger)
            async with anyio.create_task_group() as workers:
                for index in range(CLIENTS):
                    workers.start_soon(worker, index)
            tg.cancel_scope.cancel()
    print(dict(load.outcomes), *load.errors[:20], sep="\n")
    return load


def leaf(exc: BaseException) -> BaseException:
    """The first exception that is not a group (the SDK client raises its errors inside task groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def assert_sound(load: Load) -> None:
    assert load.faulted.is_set(), load.outcomes
    assert load.hung == [], load.hung
    assert load.wrong == [], load.wrong
    assert load.ok_after_fault >= CLIENTS, load.outcomes  # traffic went on after the fault


async def pid_of(url: str) -> int:
    async with Client(url, mode="legacy") as client:
        identity = await client.call_tool("whoami", {})
        return int(identity.structured_content["pid"])  # type: ignore[index]


def test_an_http_replica_killed_mid_stream(logged_gateway: Callable[[str], LoggedGateway]) -> None:
    """Two replicas of the demo server; one gets SIGKILL while streamed calls (progress) are in flight on it.
    Its clients' calls fail (or their sessions are gone) and they start again on the other; nothing hangs."""
    ports = free_port(), free_port()
    with running(demo_argv(ports[0], "a"), ports[0]) as a, running(demo_argv(ports[1], "b"), ports[1]) as b:
        gw = logged_gateway(
            f"servers:\n  web: {{endpoints: ['{a}/mcp', '{b}/mcp'],"
            " health: {failures_to_eject: 1, ejection_backoff: 30}}\n"
        )

        async def kill_b(load: Load) -> None:
            os.kill(await pid_of(f"{b}/mcp"), signal.SIGKILL)

        def stream(worker: int, call: int) -> tuple[str, dict[str, Any]] | None:
            return ("countdown", {"start": 10, "interval": 0.05}) if call % 3 == 0 else None

        load = anyio.run(lambda: run_load(lambda _: gw.mcp("web"), kill_b, slow=stream))
    assert_sound(load)
    assert load.errors, "no client was on the killed replica"
    # Each told why (its replica ended the stream, its session is gone), never a stream that just stops.
    assert not any(": -32000 " in e for e in load.errors), load.errors
    gw.assert_unhurt()


def test_stdio_processes_killed_under_load(logged_gateway: Callable[[str], LoggedGateway]) -> None:
    """`kill -9` of a session-mode process mid-call and of a shared-mode process (pool.max 2): the killed
    session's call fails at once with -32014; in shared mode, the sessions on that process end with it (their
    calls fail, they initialize again); every other session goes on."""
    gw = logged_gateway(
        "servers:\n"
        f"  local: {{command: {DEMO}, pool: {{max: 16}}}}\n"
        f"  shared: {{command: {DEMO}, stateless: true, pool: {{mode: shared, max: 2}}}}\n"
    )
    killed: dict[str, float] = {}

    async def victim(server_id: str, load: Load) -> None:
        """A session of its own: a long call in flight, then its process killed; the call must fail at once."""
        async with Client(gw.mcp(server_id), mode="legacy") as client:
            identity = await client.call_tool("whoami", {})
            pid = int(identity.structured_content["pid"])  # type: ignore[index]
            async with anyio.create_task_group() as tg:

                async def kill_soon() -> None:
                    await anyio.sleep(0.5)
                    os.kill(pid, signal.SIGKILL)
                    killed[server_id] = time.monotonic()

                tg.start_soon(kill_soon)
                with pytest.raises(MCPError) as failed, anyio.fail_after(CALL_BOUND):
                    await client.call_tool("sleep", {"seconds": 600})
                killed[server_id] = time.monotonic() - killed[server_id]
                assert failed.value.code == -32014 and "exited" in failed.value.message, failed.value

    async def kill_both(load: Load) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(victim, "local", load)
            tg.start_soon(victim, "shared", load)

    load = anyio.run(lambda: run_load(lambda worker: gw.mcp("local" if worker % 2 else "shared"), kill_both))
    assert_sound(load)
    assert all(seconds < 5 for seconds in killed.values()), killed  # at once, not after a timeout
    # Session mode: no other session noticed. Shared mode: only sessions on the killed process, with -32014 or 404.
    assert all(": -32014 " in e or "Session not found" in e for e in load.errors), load.errors
    assert not any(e.startswith("local ") for e in load.errors), load.errors
    gw.assert_unhurt("local", "shared")


def test_a_backend_that_stops_answering_times_out_under_load(
    logged_gateway: Callable[[str], LoggedGateway], demo_http: Callable[[str], str]
) -> None:
    """Some calls never get an answer from their server (`sleep` for 600 s): `timeouts.idle_stream` (2 s here)
    ends each with an error, on an http server and on a stdio one; the other calls are untouched."""
    web = demo_http("a")
    gw = logged_gateway(
        "servers:\n"
        f"  web: {{endpoint: '{web}/mcp', timeouts: {{idle_stream: 2}}}}\n"
        f"  local: {{command: {DEMO}, pool: {{max: 16}}, timeouts: {{idle_stream: 2}}}}\n"
    )

    def hang(worker: int, call: int) -> tuple[str, dict[str, Any]] | None:
        return ("sleep", {"seconds": 600}) if worker < 2 and call in (5, 6) else None

    async def nothing(load: Load) -> None:
        pass

    load = anyio.run(lambda: run_load(lambda worker: gw.mcp("web" if worker % 2 else "local"), nothing, slow=hang))
    assert_sound(load)
    assert len(load.errors) == 4, load.errors  # the four calls that got no answer, and nothing else
    assert all("timeouts.idle_stream" in e for e in load.errors), load.errors
    gw.assert_unhurt("web", "local")


def test_an_invalid_registry_pushed_under_load(
    logged_gateway: Callable[[str], LoggedGateway], demo_http: Callable[[str], str]
) -> None:
    """Invalid files written over the registry while clients call: each reload is refused (the last good
    registry stays in force, the error is shown at /servers), no call fails; then a valid change applies."""
    a, b = demo_http("a"), demo_http("b")
    good = f"servers:\n  web: {{endpoints: ['{a}/mcp', '{b}/mcp']}}\n  local: {{command: {DEMO}, pool: {{max: 16}}}}\n"
    invalid = [
        good.replace("endpoints:", "endpointz:"),  # an unknown field
        good[: good.index("local:") + len("local: {comm")],  # cut short mid-write (inside a mapping)
        "servers: [\n",  # not YAML
        good.replace("max: 16", "max: -1"),  # a value out of range
    ]
    gw = logged_gateway(good)
    refused: list[dict[str, Any]] = []

    async def push_invalid(load: Load) -> None:
        async with httpx2.AsyncClient(timeout=30) as admin:
            for text in invalid:
                gw.registry.write_text(text)
                answer = await admin.post(f"{gw.url}/admin/reload")
                assert answer.status_code == 422, answer.text
                refused.append(answer.json())
                status = (await admin.get(f"{gw.url}/servers")).json()
                assert status["last_reload_error"], status
                await anyio.sleep(0.3)
            gw.registry.write_text(good.replace(f"'{a}/mcp'", f"{{url: '{a}/mcp', weight: 3}}"))
            answer = await admin.post(f"{gw.url}/admin/reload")
            assert answer.status_code == 200, answer.text

    load = anyio.run(lambda: run_load(lambda worker: gw.mcp("web" if worker % 2 else "local"), push_invalid))
    assert_sound(load)
    assert load.errors == [], load.errors  # not one call failed
    assert len(refused) == len(invalid) and all(r["reloaded"] is False for r in refused), refused
    assert httpx2.get(f"{gw.url}/servers").json()["last_reload_error"] is None  # the good file cleared it
    gw.assert_unhurt("web", "local")
