"""ContainerProcess against a real Docker engine: an MCP session through a container's attach stream, lines
rebuilt across frames, the stop sequence, exit codes and stderr, and no container left behind.

The engine, the images, project names and the leak check are the shared fixtures of tests/docker/conftest.py.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
from docker_support import DockerImages
from mcp import ClientSession

from mcpfleet.client.transport import process_transport
from mcpfleet.deploy.docker import spec
from mcpfleet.deploy.docker.attach import ContainerProcess, owner_id
from mcpfleet.deploy.docker.deployer import DockerDeployer
from mcpfleet.deploy.docker.engine import Engine
from mcpfleet.errors import DeployError
from mcpfleet.framing import MessageTooLarge
from mcpfleet.gateway.upstream.backend import ProcessBackend
from mcpfleet.registry.model import DockerServer

BASE = "mcpfleet/base:bookworm"  # Debian with python3 (the build's tag, set by `images`)
DEMO = "mcpfleet/demo:dev"  # ENTRYPOINT mcpfleet-demo
ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
BOUND = 30.0  # seconds any one test's Docker work may take

T = TypeVar("T")
_projects = itertools.count(1)


def run(main: Callable[[Engine], Awaitable[T]]) -> T:
    """`main(engine)` on a connected engine, bounded."""

    async def connected() -> T:
        with anyio.fail_after(BOUND):
            async with Engine() as engine:
                return await main(engine)

    return anyio.run(connected)


@pytest.fixture(autouse=True)
def images(docker_images: DockerImages) -> None:
    """The images of this session's build (the shared fixtures skip without an engine, and check for leaks)."""
    global BASE, DEMO
    BASE, DEMO = docker_images.base, docker_images.demo


def entry(image: str | None = None, **fields: Any) -> DockerServer:
    return DockerServer.model_validate({"id": "box", "image": image or BASE, "pull": "never", **fields})


def python(script: str, **fields: Any) -> DockerServer:
    return entry(command=["python3", "-c", script], **fields)


def test_mcp_session_through_a_container(docker_project: str) -> None:
    async def main(engine: Engine) -> tuple[Any, ...]:
        process = ContainerProcess(engine, entry(DEMO, args=["stdio"]), project=docker_project, owner=owner_id())
        async with (
            process,
            process_transport(process) as (read, write),  # type: ignore[arg-type]
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            echoed = await session.call_tool("echo", {"text": "through the attach stream"})
            who = await session.call_tool("whoami", {})
            labels = (await engine.inspect(process.container_id or ""))["Config"]["Labels"]  # type: ignore[index]
        gone = await engine.inspect(process.container_id or "")
        return init.server_info.name, tools, echoed, who.structured_content, labels, gone, process.returncode

    name, tools, echoed, who, labels, gone, code = run(main)
    assert name == "mcpfleet-demo"
    assert {"echo", "whoami", "stats"} <= tools
    assert [block.text for block in echoed.content] == ["through the attach stream"]
    assert who["replica"] == "stdio" and who["transport"] == "stdio"
    assert labels[spec.ROLE] == "session" and labels[spec.PROJECT] == docker_project
    assert labels[spec.OWNER] == owner_id()
    assert gone is None, "aclose removes the container"
    assert code == 0, "the demo server ends by itself when its stdin closes"


def test_a_4_mb_line_comes_through_whole_both_ways(docker_project: str) -> None:
    big = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"text": "x" * (4 * 1024 * 1024)}}).encode()
    small = [json.dumps({"jsonrpc": "2.0", "id": n, "method": "ping"}).encode() for n in range(50)]

    async def main(engine: Engine) -> list[bytes]:
        async with ContainerProcess(engine, python(ECHO), project=docker_project) as process:
            await process.send(small[0])
            await process.send(big)
            for line in small[1:]:
                await process.send(line)
            return [await process.receive() for _ in range(len(small) + 1)]

    got = run(main)
    assert got[1] == big, f"the 4 MB line came back as {len(got[1])} bytes"
    assert [got[0], *got[2:]] == small


def test_a_line_over_max_line_is_skipped_and_the_stream_goes_on(docker_project: str) -> None:
    async def main(engine: Engine) -> tuple[MessageTooLarge, bytes]:
        async with ContainerProcess(engine, python(ECHO), project=docker_project, max_line=1000) as process:
            await process.send(b'{"id":1,"x":"' + b"y" * 100_000 + b'"}')
            await process.send(b'{"id":2}')
            with pytest.raises(MessageTooLarge) as caught:
                await process.receive()
            return caught.value, await process.receive()

    too_large, after = run(main)
    assert too_large.size == 100_000 + 15 and too_large.head.startswith(b'{"id":1,')
    assert after == b'{"id":2}'


def test_stderr_is_kept_apart_and_its_tail_is_available(docker_project: str) -> None:
    script = "import sys\nfor i in range(100): print(f'log {i}', file=sys.stderr)\nprint('{}', flush=True)\ninput()\n"

    async def main(engine: Engine) -> tuple[bytes, str]:
        async with ContainerProcess(engine, python(script), project=docker_project, stderr_lines=5) as process:
            line = await process.receive()
            await anyio.sleep(0.2)
            return line, process.stderr_tail()

    line, tail = run(main)
    assert line == b"{}"
    assert tail.splitlines() == [f"log {i}" for i in range(95, 100)]


def test_half_close_ends_the_container_and_its_last_words_still_arrive(docker_project: str) -> None:
    # On stdin EOF the server writes to stderr and exits 5: both prove it saw EOF (SIGTERM would give 143)
    # and that output after the half-close is still read (a full close would keep only 'reading').
    script = (
        "import sys\nprint('reading', file=sys.stderr, flush=True)\nsys.stdin.read()\n"
        "print('saw eof', file=sys.stderr, flush=True)\nsys.exit(5)\n"
    )

    async def main(engine: Engine) -> tuple[int | None, str, Any]:
        process = ContainerProcess(engine, python(script, timeouts={"shutdown": 5}), project=docker_project)
        async with process:
            while not process.stderr_tail():  # noqa: ASYNC110 - stderr has no event to wait on
                await anyio.sleep(0.01)
        return process.returncode, process.stderr_tail(), await engine.inspect(process.container_id or "")

    started = time.monotonic()
    code, tail, gone = run(main)
    assert code == 5
    assert tail.splitlines() == ["reading", "saw eof"]
    assert gone is None
    assert time.monotonic() - started < 5, "the container ended on EOF, not after the 5 s grace"


def test_stubborn_container_is_stopped_then_killed_within_bounds(docker_project: str) -> None:
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('{}', flush=True)\ntime.sleep(300)\n"
    )

    async def main(engine: Engine) -> tuple[float, int | None, Any]:
        process = ContainerProcess(engine, python(script, timeouts={"shutdown": 1}), project=docker_project)
        async with process:
            assert await process.receive() == b"{}"
            closing = time.monotonic()
        return time.monotonic() - closing, process.returncode, await engine.inspect(process.container_id or "")

    took, code, gone = run(main)
    assert code == 137
    assert gone is None
    assert 1.5 < took < 8, f"EOF wait 1 s, SIGTERM wait 1 s, then SIGKILL; took {took:.1f} s"


def test_sigkill_from_outside_ends_receive_and_gives_137(docker_project: str) -> None:
    async def main(engine: Engine) -> tuple[int | None, bool]:
        async with ContainerProcess(engine, python(ECHO), project=docker_project) as process:
            await process.send(b"{}")
            assert await process.receive() == b"{}"
            await engine.kill(process.container_id or "")  # SIGKILL, as `docker kill -s KILL`
            with pytest.raises(anyio.EndOfStream):
                await process.receive()
            exited = await process.wait_exited(5)
            return process.returncode, exited

    code, exited = run(main)
    assert exited and code == 137


def test_a_container_that_exits_at_once_leaves_its_code_and_stderr(docker_project: str) -> None:
    script = "import sys; print('boom', file=sys.stderr); sys.exit(3)"

    async def main(engine: Engine) -> tuple[int | None, str, str]:
        async with ContainerProcess(engine, python(script), project=docker_project) as process:
            with pytest.raises(anyio.EndOfStream):
                await process.receive()
            await process.wait_exited(5)
            code, tail = process.returncode, process.stderr_tail()
        async with ProcessBackend.of(ContainerProcess(engine, python(script), project=docker_project)) as backend:
            with pytest.raises(anyio.EndOfStream):
                await backend.receive()
            settled = await backend.settle()
        return code, tail, settled

    code, tail, settled = run(main)
    assert code == 3
    assert "boom" in tail
    assert settled == "exit code 3; stderr: boom"


def test_missing_image_is_named_quickly(docker_project: str) -> None:
    async def main(engine: Engine) -> None:
        async with ContainerProcess(engine, entry("mcpfleet/absent:nope"), project=docker_project):
            pass

    started = time.monotonic()
    with pytest.raises(DeployError, match=r"image 'mcpfleet/absent:nope' is not on the Docker engine"):
        run(main)
    assert time.monotonic() - started < 5


def test_cancelled_start_leaves_no_container(docker_project: str) -> None:
    async def main(engine: Engine) -> list[bool]:
        entered = []
        for delay in (0.0, 0.005, 0.02, 0.05, 0.1, 0.3):
            with anyio.move_on_after(delay):
                async with ContainerProcess(engine, python(ECHO), project=docker_project):
                    entered.append(True)
                    await anyio.sleep(10)
        return entered

    run(main)  # the fixture checks that none of the six containers remains


def test_a_cancelled_scope_still_ends_the_container_by_eof(docker_project: str) -> None:
    # The reader task dies with the scope the process was entered in; aclose then learns the exit by itself.
    async def main(engine: Engine) -> tuple[int | None, float, Any]:
        process = ContainerProcess(engine, python(ECHO, timeouts={"shutdown": 5}), project=docker_project)
        with anyio.CancelScope() as scope:
            async with process:
                await process.send(b"{}")
                assert await process.receive() == b"{}"
                scope.cancel()
                closing = time.monotonic()
                await anyio.sleep(10)
        return process.returncode, time.monotonic() - closing, await engine.inspect(process.container_id or "")

    code, took, gone = run(main)
    assert code == 0, "it exited on stdin EOF, not by a signal"
    assert took < 5, f"no wait for the 5 s grace: took {took:.1f} s"
    assert gone is None


def test_the_network_and_volume_it_names_are_made_labelled_and_removed_with_the_project(docker_project: str) -> None:
    network, volume = f"{docker_project}-net", f"{docker_project}-data"
    script = "import os, sys; open('/data/x', 'w').write('y'); print(sorted(os.listdir('/data')), flush=True)"

    async def main(engine: Engine) -> tuple[bytes, list[str], list[str], list[str]]:
        box = python(script, network=network, volumes=[f"{volume}:/data:rw"])
        async with ContainerProcess(engine, box, project=docker_project) as process:
            printed = await process.receive()
        ours = spec.labels(docker_project)
        made = [n["Name"] for n in await engine.networks(ours)] + [v["Name"] for v in await engine.volumes(ours)]
        removed = [change.name for change in await DockerDeployer(engine, docker_project).down()]
        left = [n["Name"] for n in await engine.networks(ours)] + [v["Name"] for v in await engine.volumes(ours)]
        return printed, sorted(made), sorted(removed), left

    printed, made, removed, left = run(main)
    assert printed == b"['x']"
    assert made == sorted([network, volume]) and removed == made and left == []
