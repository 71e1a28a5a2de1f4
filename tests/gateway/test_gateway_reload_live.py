"""Reloads that keep sessions (issue 9, item 2; plan sections 9.13 and 10.8).

A reload that changes an entry's replicas, weights, strategy, timeouts, health or pool sizes applies to the
live server and ends no session. A change of what runs (command, args, env, cwd) gives new sessions the new
configuration, while open sessions keep their process. Only a removed server ends its sessions, once its
`timeouts.drain` has passed; a session pinned on a removed replica is served there until then.

Everything runs for real: `mcpfleet serve` (its file watch reloads a rewritten registry, `POST /admin/reload`
where a test needs to know when the reload was applied), demo HTTP replicas, demo stdio processes, and the
SDK's `ClientSession` over `streamable_http_client` as the client. Outcomes are asserted, never speed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from reload_layout import CYCLE, Layout, yaml_list

from support import ACCEPT, INIT, RunningGateway, until, wait_for

PYTHON = sys.executable
DEMO = [PYTHON, "-m", "mcpfleet.demo", "stdio"]
CALL_TIMEOUT = 60.0  # one call; far above what a busy 2-core machine needs


# --- the SDK client, with what its HTTP exchanges showed --------------------------------------------------


@dataclass
class Seen:
    """One client's HTTP exchanges: the session ids it was given, and every error status it got."""

    session_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def on_response(self, response: httpx2.Response) -> None:
        issued = response.headers.get("mcp-session-id")
        if issued and issued not in self.session_ids:
            self.session_ids.append(issued)
        if response.status_code >= 400:
            self.errors.append(f"{response.request.method} {response.status_code}")


@contextlib.asynccontextmanager
async def sdk_session(url: str) -> AsyncIterator[tuple[ClientSession, Seen]]:
    """An initialized SDK session over Streamable HTTP, and the record of its HTTP exchanges."""
    seen = Seen()
    timeout = httpx2.Timeout(30, read=300)
    async with (
        httpx2.AsyncClient(timeout=timeout, event_hooks={"response": [seen.on_response]}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT) as session,
    ):
        await session.initialize()
        yield session, seen


async def echo(session: ClientSession, text: str) -> str | None:
    """Call echo; None when the answer is right, else what was wrong with it (an exception propagates)."""
    with anyio.fail_after(CALL_TIMEOUT):
        result = await session.call_tool("echo", {"text": text})
    got = [getattr(block, "text", None) for block in result.content]
    return None if not result.is_error and got == [text] else f"sent {text!r}, got {result.model_dump()}"


async def whoami(session: ClientSession) -> dict[str, Any]:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await session.call_tool("whoami", {})
    assert not result.is_error and result.structured_content is not None, result
    return result.structured_content


def describe(exc: BaseException) -> str:
    """An exception as text, with task-group wrappers taken off (the first exception inside each)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


# --- the gateway and its processes ------------------------------------------------------------------------


def status(gw: RunningGateway) -> dict[str, Any]:
    return httpx2.get(f"{gw.url}/servers", timeout=30).json()  # type: ignore[no-any-return]


async def status_async(gw: RunningGateway) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(status, gw)


def reload_now(gw: RunningGateway, text: str) -> None:
    """Write the registry and reload it: when this returns, the new registry is in force. The file is replaced
    in one step, so that the file watch never reads half of it."""
    replace_atomically(gw.registry, text)
    answer = httpx2.post(f"{gw.url}/admin/reload", timeout=60)
    assert answer.status_code == 200, answer.text


def replace_atomically(path: Path, text: str) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def argv_of(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


async def call_until_it_ends(
    seen: Seen, call: Callable[[int], Awaitable[None]], within: float
) -> tuple[int, list[str]]:
    """Call every 0.2 s until a call fails: the number of calls answered, and how the failed one failed (its
    HTTP error statuses, then the exception). `call(n)` checks its answer: an AssertionError propagates."""
    answered = 0
    with anyio.fail_after(within):
        while True:
            errors_before = len(seen.errors)
            try:
                await call(answered)
            except AssertionError:
                raise
            except Exception as exc:
                return answered, [*seen.errors[errors_before:], describe(exc)]
            answered += 1
            await anyio.sleep(0.2)


async def initialize_status(url: str) -> int:
    async with httpx2.AsyncClient(timeout=30) as client:
        return (await client.post(url, json=INIT, headers=ACCEPT)).status_code


def condition(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """`predicate` as the awaitable check `until` takes."""

    async def check() -> bool:
        return predicate()

    return check


@dataclass
class Client:
    """One of the measurement's callers: its tally, and what it saw."""

    name: str
    url: str
    ok: int = 0
    sessions: int = 0
    answered: bool = False  # an answer since the last reload was applied
    done: bool = False  # stopped calling
    failures: list[str] = field(default_factory=list)
    identities: list[dict[str, Any]] = field(default_factory=list)  # whoami at its session's start and end


@dataclass
class Measurement:
    clients: list[Client]
    kind: str = "start"  # the change in force
    reloads: list[str] = field(default_factory=list)  # kinds applied, in order
    problems: list[str] = field(default_factory=list)
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    stop: anyio.Event = field(default_factory=anyio.Event)

    def fail(self, client: Client, what: str) -> None:
        client.failures.append(f"[{self.kind}] {what}")
        self.failed_by_kind[self.kind] += 1


async def keep_calling(run: Measurement, client: Client, max_sessions: int = 10) -> None:
    """Call echo without pause in one session. A failed call is recorded; after a 404 (the session ended) the
    client initializes again, as a client following the spec would. Bounded by `run.stop` and `max_sessions`."""
    count = 0
    try:
        while not run.stop.is_set() and client.sessions < max_sessions:
            try:
                async with sdk_session(client.url) as (session, seen):
                    client.sessions += 1
                    client.identities.append(await whoami(session))
                    ended = False
                    while not run.stop.is_set() and not ended:
                        count += 1
                        text = f"{client.name}-{count}"
                        errors_before = len(seen.errors)
                        try:
                            wrong = await echo(session, text)
                        except Exception as exc:
                            http = seen.errors[errors_before:]
                            run.fail(client, f"{text}: {describe(exc)} (HTTP {http})")
                            ended = any(e.endswith(" 404") for e in http)  # the session ended: initialize again
                            continue
                        if wrong is not None:
                            run.fail(client, wrong)
                            continue
                        client.ok += 1
                        client.answered = True
                    if not ended:
                        client.identities.append(await whoami(session))
            except Exception as exc:
                run.fail(client, f"session: {describe(exc)}")
                await anyio.sleep(0.2)
    finally:
        client.done = True


async def rewrite_registry(
    run: Measurement, gw: RunningGateway, layout: Layout, rewrites: int, interval: float
) -> None:
    """Rewrite the registry file `rewrites` times, one change each, about every `interval` seconds. Before the
    next rewrite: the reload is applied (the generation advanced) and every client had an answer since."""
    try:
        shown = await status_async(gw)
        generation, rejected = shown["generation"], shown["reloads"]["rejected"]
        for n in range(rewrites):
            began = time.monotonic()
            kind = CYCLE[n % len(CYCLE)]
            layout = layout.changed(kind)
            run.kind = kind  # from the moment the file changes: a session may end before the reload shows
            await anyio.to_thread.run_sync(replace_atomically, gw.registry, layout.render())

            async def applied(generation: int = generation, rejected: int = rejected) -> dict[str, Any] | None:
                shown = await status_async(gw)
                return shown if shown["generation"] > generation or shown["reloads"]["rejected"] > rejected else None

            shown = await until(applied, within=60, interval=0.05)
            if shown["reloads"]["rejected"] > rejected:
                run.problems.append(f"rewrite {n + 1} ({kind}) rejected: {shown['last_reload_error']}")
            elif shown["generation"] != generation + 1:
                run.problems.append(f"rewrite {n + 1} ({kind}): generation {generation} -> {shown['generation']}")
            else:
                run.reloads.append(kind)
            generation, rejected = shown["generation"], shown["reloads"]["rejected"]
            for client in run.clients:
                client.answered = False
            await anyio.sleep(max(0.0, began + interval - time.monotonic()))
            with anyio.move_on_after(60):
                while not all(c.answered or c.done for c in run.clients):  # noqa: ASYNC110 - callers set the flags
                    await anyio.sleep(0.02)
            if silent := [c.name for c in run.clients if not c.answered]:
                run.problems.append(f"after rewrite {n + 1} ({kind}): no answer from {silent}")
    finally:
        run.stop.set()


@pytest.mark.timeout(420)
def test_reloads_of_every_kind_end_no_session(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    """The issue's measurement: 8 clients (4 on an http entry with 3 replicas, 4 on a stdio entry) call echo
    without pause, each in one session, while the registry is rewritten every 0.5 s with each kind of change
    (two cycles of ten). No call fails, no client initializes again, every rewrite is one reload."""
    layout = Layout(urls=tuple(demo_http(name) for name in ("a", "b", "c")))
    gw = gateway(layout.render())
    generation = status(gw)["generation"]
    clients = [Client(f"{server}{i}", gw.mcp(server)) for server in ("web", "local") for i in range(4)]
    rewrites = 2 * len(CYCLE)

    async def main() -> Measurement:
        run = Measurement(clients)
        with anyio.fail_after(360):
            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(keep_calling, run, client)
                # Every client in its session and answered before the first change.
                await until(condition(lambda: all(c.answered for c in clients)), within=120)
                tg.start_soon(rewrite_registry, run, gw, layout, rewrites, 0.5)
        return run

    run = anyio.run(main)
    for client in clients:
        print(client.name, client.ok, client.sessions, client.identities, client.failures[:3])
    print("failed by kind:", dict(run.failed_by_kind), "reloads:", run.reloads)
    failures = {c.name: c.failures[:5] for c in clients if c.failures}
    assert failures == {}, failures
    assert run.problems == []
    assert {c.name: c.sessions for c in clients} == {c.name: 1 for c in clients}  # no re-initialization
    assert run.reloads == [CYCLE[n % len(CYCLE)] for n in range(rewrites)]
    assert status(gw)["generation"] == generation + rewrites
    assert all(c.ok >= rewrites for c in clients), {c.name: c.ok for c in clients}  # calls in every round
    for client in clients:
        # Each session stayed where it began: the same replica, or the same process of the first configuration.
        first, last = client.identities
        assert first == last, client
        if client.name.startswith("local"):
            assert first["replica"] == "tag-1", client
    assert {c.identities[0]["replica"] for c in clients[:4]} == {"a", "b", "c"}  # sessions on the removed one too


def test_what_runs_change_keeps_open_sessions_on_their_process(
    gateway: Callable[[str], RunningGateway], tmp_path: Path
) -> None:
    """A change of command, args, env or cwd of a stdio entry: each session opened before keeps its process
    (same pid, its configuration as it was); each session opened after gets a process of the new one."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    configs = [
        {"command": DEMO, "tag": "v1", "mark": "one", "cwd": one},
        {"command": DEMO, "tag": "v1", "mark": "two", "cwd": one},  # env
        {"command": DEMO, "tag": "v2", "mark": "two", "cwd": one},  # args
        {"command": DEMO, "tag": "v2", "mark": "two", "cwd": two},  # cwd
        {"command": [PYTHON, "-B", *DEMO[1:]], "tag": "v2", "mark": "two", "cwd": two},  # command
    ]
    changes = ["nothing", "env", "args", "cwd", "command"]

    def render(config: dict[str, Any]) -> str:
        return (
            f"servers:\n  local: {{command: {yaml_list(config['command'])}, args: [--replica, {config['tag']}],"
            f" env: {{MARK: {config['mark']}}}, cwd: '{config['cwd']}'}}\n"
        )

    def runs_as(pid: int, config: dict[str, Any]) -> None:
        assert argv_of(pid)[: len(config["command"])] == config["command"]
        assert environ(pid).get("MARK") == config["mark"]
        assert Path(f"/proc/{pid}/cwd").resolve() == config["cwd"].resolve()

    gw = gateway(render(configs[0]))

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            opened: list[tuple[ClientSession, Seen, dict[str, Any], dict[str, Any]]] = []
            for n, config in enumerate(configs):
                if n:
                    await anyio.to_thread.run_sync(reload_now, gw, render(config))
                session, seen = await stack.enter_async_context(sdk_session(gw.mcp("local")))
                who = await whoami(session)
                assert who["replica"] == config["tag"]
                assert who["pid"] not in [w["pid"] for _, _, w, _ in opened]  # a process of its own, a new one
                runs_as(who["pid"], config)
                opened.append((session, seen, who, config))
                # Every session opened before: its process, its configuration as it was.
                for m, (earlier, earlier_seen, earlier_who, earlier_config) in enumerate(opened):
                    try:
                        now = await whoami(earlier)
                        wrong = await echo(earlier, f"{m}-{n}")
                    except Exception as exc:
                        pytest.fail(
                            f"session {m} (opened after the change of {changes[m]}) failed after the change of"
                            f" {changes[n]}: {exc} (HTTP {earlier_seen.errors})"
                        )
                    assert now == earlier_who and wrong is None, f"session {m} after the change of {changes[n]}"
                    runs_as(earlier_who["pid"], earlier_config)
                    assert earlier_seen.session_ids[1:] == [] and earlier_seen.errors == [], earlier_seen

    anyio.run(main)


def test_what_runs_change_ends_old_processes_after_the_drain(gateway: Callable[[str], RunningGateway]) -> None:
    """After a change of what runs, a session on a process of the old configuration is served until
    `timeouts.drain` (3 s) has passed, then gets 404 and its process stops; sessions on the new configuration
    go on."""
    drain = 3.0

    def render(mark: str) -> str:
        entry = f"{{command: {yaml_list(DEMO)}, env: {{MARK: {mark}}}, timeouts: {{drain: {drain:g}}}}}"
        return f"servers:\n  local: {entry}\n"

    gw = gateway(render("one"))

    async def main() -> None:
        async with sdk_session(gw.mcp("local")) as (old, old_seen):
            old_pid = (await whoami(old))["pid"]
            changed_at = time.monotonic()
            await anyio.to_thread.run_sync(reload_now, gw, render("two"))
            assert (await whoami(old))["pid"] == old_pid
            async with sdk_session(gw.mcp("local")) as (new, new_seen):
                new_pid = (await whoami(new))["pid"]
                assert new_pid != old_pid and environ(new_pid).get("MARK") == "two"

                async def draining(n: int) -> None:
                    assert await echo(old, f"old {n}") is None

                answered, ending = await call_until_it_ends(old_seen, draining, within=drain + 60)
                ended_after = time.monotonic() - changed_at
                assert answered >= 1
                assert "POST 404" in ending, ending
                assert ended_after >= drain, f"the session ended {ended_after:.2f} s after the change, before the drain"
                await until(condition(lambda: not alive(old_pid)), within=30)
                assert await whoami(new) == {"replica": "stdio", "pid": new_pid, "transport": "stdio"}
                assert new_seen.errors == [] and new_seen.session_ids[1:] == []

    anyio.run(main)


@pytest.mark.parametrize("kind", ["stdio", "http"])
def test_removed_server_serves_its_sessions_until_the_drain(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str], kind: str
) -> None:
    """A removed server: new requests get 404 at once; its open session is still answered, then gets 404 once
    `timeouts.drain` (2 s, from the entry as it was) has passed, and its process (stdio) is stopped. The server
    that stays is not disturbed."""
    drain = 2.0
    keep = f"  keep: {{command: {yaml_list(DEMO)}}}\n"
    target = f"command: {yaml_list(DEMO)}" if kind == "stdio" else f"endpoint: '{demo_http('gone')}'"
    gone = f"  gone: {{{target}, timeouts: {{drain: {drain:g}}}}}\n"
    gw = gateway("servers:\n" + keep + gone)

    async def main() -> None:
        async with sdk_session(gw.mcp("keep")) as (kept, kept_seen), sdk_session(gw.mcp("gone")) as (session, seen):
            pid = (await whoami(session))["pid"]
            kept_pid = (await whoami(kept))["pid"]
            removed_at = time.monotonic()
            await anyio.to_thread.run_sync(reload_now, gw, "servers:\n" + keep)
            assert await echo(session, "right after the removal") is None
            assert await initialize_status(gw.mcp("gone")) == 404
            assert alive(pid)

            # Served until the drain has passed, then 404.
            async def draining(n: int) -> None:
                assert await echo(session, f"draining {n}") is None

            answered, ending = await call_until_it_ends(seen, draining, within=drain + 60)
            ended_after = time.monotonic() - removed_at
            assert "POST 404" in ending, ending
            assert ended_after >= drain, f"the session ended {ended_after:.2f} s after the removal, before the drain"
            assert answered >= 1
            if kind == "stdio":
                await until(condition(lambda: not alive(pid)), within=30)
            assert await whoami(kept) == {"replica": "stdio", "pid": kept_pid, "transport": "stdio"}
            assert kept_seen.errors == []

    anyio.run(main)
    shown = status(gw)
    assert [s["id"] for s in shown["servers"]] == ["keep"]


def test_removed_replica_serves_its_pinned_sessions_until_the_drain(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    """A replica leaves an http entry: a session pinned there keeps being answered by that replica until
    `timeouts.drain`, then gets 404; new sessions go to the replicas that stay."""
    drain = 3.0
    a, b = demo_http("a"), demo_http("b")

    def render(urls: list[str]) -> str:
        return f"servers:\n  web: {{endpoints: {yaml_list(urls)}, timeouts: {{drain: {drain:g}}}}}\n"

    gw = gateway(render([a, b]))

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            pinned: dict[str, tuple[ClientSession, Seen]] = {}
            for _ in range(8):  # round robin: two sessions are enough; a few more if others came in between
                session, seen = await stack.enter_async_context(sdk_session(gw.mcp("web")))
                pinned.setdefault((await whoami(session))["replica"], (session, seen))
                if len(pinned) == 2:
                    break
            assert set(pinned) == {"a", "b"}
            (on_a, a_seen), (on_b, b_seen) = pinned["a"], pinned["b"]

            removed_at = time.monotonic()
            await anyio.to_thread.run_sync(reload_now, gw, render([a]))
            assert (await whoami(on_b))["replica"] == "b"
            async with sdk_session(gw.mcp("web")) as (fresh, _):
                assert (await whoami(fresh))["replica"] == "a"

            async def draining(_: int) -> None:
                assert (await whoami(on_b))["replica"] == "b"

            answered, ending = await call_until_it_ends(b_seen, draining, within=drain + 60)
            ended_after = time.monotonic() - removed_at
            assert "POST 404" in ending, ending
            assert ended_after >= drain, f"the session ended {ended_after:.2f} s after the removal, before the drain"
            assert answered >= 1
            assert (await whoami(on_a))["replica"] == "a"
            assert a_seen.errors == [] and a_seen.session_ids[1:] == []

    anyio.run(main)
    wait_for(lambda: [r["url"] for r in status(gw)["servers"][0]["replicas"]] == [a])
