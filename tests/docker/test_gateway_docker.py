"""The gateway serving `docker` HTTP entries through a real engine: it starts the replicas, balances across
them (the demo's `whoami` names its container), follows a scale 1 -> 3 -> 1, drains, ejects and replaces a
killed container, scales to zero after `idle_timeout` and starts again on the next request (once for
concurrent ones), answers 503 + Retry-After naming the fault (no engine, a missing image, a container that
exits at once) while serving its other servers, and removes the containers it started when it stops."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from docker_support import DockerImages
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from support import ACCEPT, INIT, wait_for

pytestmark = pytest.mark.timeout(240)


def registry(images: DockerImages, **fields: Any) -> str:
    web = {"type": "docker", "image": images.demo, "port": 8080, "pull": "never", **fields}
    return json.dumps({"servers": {"web": web, "local": {"command": ["mcpfleet-demo", "stdio"]}}})


def containers(project: str, *, every: bool = True) -> list[str]:
    """Names of the project's containers (stopped ones too unless `every` is False), by the docker CLI."""
    argv = ["docker", "ps", "--filter", f"label=mcpfleet.project={project}", "--format", "{{.Names}}"]
    listed = subprocess.run([*argv, "-a"] if every else argv, capture_output=True, text=True, check=True)
    return sorted(listed.stdout.split())


def created(project: str, since: float) -> int:
    """How many containers of the project the engine created since `since` (its event log, by the CLI)."""
    argv = ["docker", "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}"]
    argv += ["--filter", f"label=mcpfleet.project={project}", "--filter", "event=create", "--format", "{{.ID}}"]
    listed = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    return len(listed.stdout.split())


async def whoami(url: str) -> str:
    """One new session through the gateway (the SDK client, handshake era: the session stays on the replica
    its `initialize` reached), one `whoami`: the replica that answered."""
    async with (
        httpx2.AsyncClient() as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        result: Any = (await client.call_tool("whoami", {})).structured_content
        return str(result["replica"])


def replicas_answering(url: str, sessions: int) -> set[str]:
    async def main() -> set[str]:
        return {await whoami(url) for _ in range(sessions)}

    return anyio.run(main)


def answering(url: str, sessions: int) -> set[str]:
    """`replicas_answering`, or nothing while a call fails (a replica on its way in or out)."""
    try:
        return replicas_answering(url, sessions)
    except Exception:
        return set()


def test_replicas_are_balanced_scaled_replaced_and_removed(
    gateway: Callable[[str], Any], docker_images: DockerImages, docker_project: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    gw = gateway(registry(docker_images, replicas=1))
    first = f"{docker_project}-web-1"
    assert replicas_answering(gw.mcp("web"), 3) == {first}
    assert containers(docker_project) == [first]

    # 1 -> 3: a reload; round robin over new sessions reaches every replica.
    gw.registry.write_text(registry(docker_images, replicas=3))
    wait_for(lambda: len(containers(docker_project, every=False)) == 3, timeout=60)
    three = set(containers(docker_project))
    wait_for(lambda: answering(gw.mcp("web"), 6) == three, timeout=30)

    # 3 -> 1: the extra containers go; every new session lands on the one left.
    gw.registry.write_text(registry(docker_images, replicas=1))
    wait_for(lambda: len(containers(docker_project)) == 1, timeout=60)
    (left,) = containers(docker_project)
    assert replicas_answering(gw.mcp("web"), 4) == {left}

    # A killed replica is replaced by a new container, and the killed one removed; a request that comes at
    # once waits for the replacement rather than failing.
    subprocess.run(["docker", "kill", left], capture_output=True, check=True)
    (answered,) = replicas_answering(gw.mcp("web"), 1)
    wait_for(lambda: len(names := containers(docker_project)) == 1 and left not in names, timeout=60)
    assert containers(docker_project) == [answered] != [left]
    # /servers lists the new replica only: a container that is gone leaves nothing to drain.
    wait_for(lambda: len(httpx2.get(f"{gw.url}/servers").json()["servers"][0]["replicas"]) == 1, timeout=10)
    # The gateway's other servers never noticed.
    assert replicas_answering(gw.mcp("local"), 1) == {"stdio"}


def test_scale_to_zero_and_back_starting_once_for_concurrent_requests(
    gateway: Callable[[str], Any], docker_images: DockerImages, docker_project: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    gw = gateway(registry(docker_images, start="on_demand", idle_timeout=3, replicas=2))
    anyio.run(anyio.sleep, 1.0)
    assert containers(docker_project) == []  # on_demand: nothing until a request
    since = time.time()

    async def burst() -> set[str]:
        names: list[str] = []

        async def one() -> None:
            names.append(await whoami(gw.mcp("web")))

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(one)
        return set(names)

    assert len(anyio.run(burst)) >= 1
    # Eight cold requests started the entry's two replicas once: two containers created, no more.
    assert len(containers(docker_project)) == 2 and created(docker_project, since) == 2
    # No request for idle_timeout: every replica stops and is removed.
    wait_for(lambda: containers(docker_project) == [], timeout=30)
    # The next request starts them again and waits for them.
    assert len(replicas_answering(gw.mcp("web"), 1)) == 1
    assert len(containers(docker_project)) == 2


async def initialize(url: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=60) as http:
        return await http.post(url, json=INIT, headers=ACCEPT)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"image": "mcpfleet/absent:none"}, "image 'mcpfleet/absent:none' is not on the Docker engine"),
        (
            {"command": ["python3", "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]},
            "exited with code 3",
        ),
    ],
    ids=["missing-image", "exits-at-once"],
)
def test_a_replica_that_cannot_start_is_a_503_naming_why(
    gateway: Callable[[str], Any],
    docker_images: DockerImages,
    docker_project: str,
    monkeypatch: Any,
    fields: dict[str, Any],
    expected: str,
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    gw = gateway(registry(docker_images, start="on_demand", **fields))
    since = time.time()
    answer = anyio.run(initialize, gw.mcp("web"))
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == -32011 and expected in error["message"], error
    if "exits" in expected:
        assert "boom" in error["data"]["logs"]
    # Within the backoff (1 s, doubling) the same answer comes at once, and no container is made for it: five
    # more requests make at most one more attempt, not five (no retry storm).
    for _ in range(5):
        assert anyio.run(initialize, gw.mcp("web")).status_code == 503
    assert containers(docker_project) == []
    assert created(docker_project, since) <= (0 if "image" in expected else 2)
    assert replicas_answering(gw.mcp("local"), 1) == {"stdio"}


def test_no_engine_fails_only_the_docker_servers(
    gateway: Callable[[str], Any], docker_images: DockerImages, monkeypatch: Any
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    gw = gateway(registry(docker_images))
    answer = anyio.run(initialize, gw.mcp("web"))
    assert answer.status_code == 503
    assert "no Docker engine: /nonexistent/docker.sock does not exist" in answer.json()["error"]["message"]
    assert replicas_answering(gw.mcp("local"), 1) == {"stdio"}


def test_stdio_containers_one_per_session_and_a_killed_one_fails_only_its_session(
    gateway: Callable[[str], Any], docker_images: DockerImages, docker_project: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    box = {"type": "docker", "image": docker_images.demo, "args": ["stdio", "--replica", "{hostname}"], "pull": "never"}
    gw = gateway(json.dumps({"servers": {"box": box}}))

    async def main() -> None:
        async with (
            httpx2.AsyncClient() as http,
            Client(streamable_http_client(gw.mcp("box"), http_client=http), mode="legacy") as first,
            Client(streamable_http_client(gw.mcp("box"), http_client=http), mode="legacy") as second,
        ):
            names = []
            for client in (first, second):
                result: Any = (await client.call_tool("whoami", {})).structured_content
                names.append(result["replica"])
            assert names[0] != names[1]
            listed = await anyio.to_thread.run_sync(containers, docker_project)
            assert sorted(names) == listed  # one container per session, named by the session
            await anyio.run_process(["docker", "kill", "-s", "KILL", names[0]])
            # Its session fails: the call gets "exited" (-32014) if it was sent before the gateway saw the
            # container end, else the session is gone and the SDK passes on the gateway's 404 answer.
            with pytest.raises(Exception, match=r"server 'box' exited|Session not found: it ended"):
                await first.call_tool("whoami", {})
            still: Any = (await second.call_tool("whoami", {})).structured_content
            assert still["replica"] == names[1]

    anyio.run(main)
    # Sessions that end take their containers with them (the killed one included).
    wait_for(lambda: containers(docker_project) == [], timeout=30)


def test_stdio_containers_are_kept_warm_and_shared_by_stateless_sessions(
    gateway: Callable[[str], Any], docker_images: DockerImages, docker_project: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    box = {
        "type": "docker",
        "image": docker_images.demo,
        "args": ["stdio", "--replica", "{hostname}"],
        "pull": "never",
        "stateless": True,
        "pool": {"mode": "shared", "min": 1, "max": 2},
    }
    gw = gateway(json.dumps({"servers": {"box": box}}))
    wait_for(lambda: len(containers(docker_project, every=False)) == 1, timeout=60)  # warm before any request
    (warm,) = containers(docker_project)
    assert replicas_answering(gw.mcp("box"), 4) == {warm}  # four sessions, one shared container
    status = httpx2.get(f"{gw.url}/servers").json()["servers"][0]
    assert status["type"] == "docker" and status["processes"]["live"] == 1
    assert status["target"] == f"docker:{docker_images.demo} stdio --replica {{hostname}}"
    assert status["deployment"] == {"backend": "docker", "image": docker_images.demo, "pull": "never"}


# A stand-in for the engine's socket that can go away and come back: what the gateway sees of an engine
# restart (calls refused, the event stream cut), without stopping the engine other tests share.
SOCKET_PROXY = """
import asyncio, os, sys
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
async def serve(client_reader, client_writer):
    engine_reader, engine_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
    await asyncio.gather(pipe(client_reader, engine_writer), pipe(engine_reader, client_writer))
async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1])
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


class EngineSocket:
    """The proxy: `up()` starts it, `down()` kills it (its connections cut, its socket file gone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proxy: subprocess.Popen[bytes] | None = None

    def up(self) -> None:
        self.proxy = subprocess.Popen([sys.executable, "-c", SOCKET_PROXY, str(self.path)])
        wait_for(self.path.exists, timeout=10)

    def down(self) -> None:
        if self.proxy is not None:
            self.proxy.kill()
            self.proxy.wait(timeout=10)
            self.proxy = None
        self.path.unlink(missing_ok=True)


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[EngineSocket]:
    """Set up before the gateway, so it is still there when the gateway stops and removes its containers."""
    socket = EngineSocket(tmp_path / "engine.sock")
    socket.up()
    yield socket
    socket.down()


def test_the_gateway_finds_its_replicas_again_after_the_engine_comes_back(
    engine_socket: EngineSocket,
    gateway: Callable[[str], Any],
    docker_images: DockerImages,
    docker_project: str,
    monkeypatch: Any,
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine_socket.path}")
    gw = gateway(registry(docker_images, replicas=1))
    monkeypatch.delenv("DOCKER_HOST")  # the gateway has it; the test's own docker commands go to the engine
    (first,) = replicas_answering(gw.mcp("web"), 1)
    engine_socket.down()
    # While the engine is away its replica dies; once it is back, the gateway replaces it and finds the new one.
    subprocess.run(["docker", "kill", first], capture_output=True, check=True)
    anyio.run(anyio.sleep, 3.0)
    engine_socket.up()
    wait_for(lambda: len(names := containers(docker_project)) == 1 and first not in names, timeout=90)
    (second,) = containers(docker_project)
    wait_for(lambda: answering(gw.mcp("web"), 1) == {second}, timeout=60)


def test_a_reload_moves_a_server_into_docker_and_out_again(
    gateway: Callable[[str], Any],
    demo_http: Callable[[str], str],
    docker_images: DockerImages,
    docker_project: str,
    monkeypatch: Any,
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    local = demo_http("local-replica")
    as_http = json.dumps({"servers": {"web": {"endpoint": local, "transport": "streamable-http"}}})
    gw = gateway(as_http)
    assert replicas_answering(gw.mcp("web"), 1) == {"local-replica"}
    # Into Docker: a new runtime with its controller takes the id (the old one drains).
    gw.registry.write_text(registry(docker_images, timeouts={"drain": 1}))
    wait_for(lambda: answering(gw.mcp("web"), 1) == {f"{docker_project}-web-1"}, timeout=60)
    # And out again: the docker runtime drains, then its containers go.
    gw.registry.write_text(as_http)
    wait_for(lambda: answering(gw.mcp("web"), 1) == {"local-replica"}, timeout=60)
    wait_for(lambda: containers(docker_project) == [], timeout=60)


def test_a_server_removed_and_added_back_while_draining_keeps_one_set_of_replicas(
    gateway: Callable[[str], Any], docker_images: DockerImages, docker_project: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    with_web = registry(docker_images, timeouts={"drain": 2})
    gw = gateway(with_web)
    (first,) = replicas_answering(gw.mcp("web"), 1)
    gw.registry.write_text(json.dumps({"servers": {"local": {"command": ["mcpfleet-demo", "stdio"]}}}))
    wait_for(lambda: httpx2.get(f"{gw.url}/servers").json().get("draining"), timeout=30)
    gw.registry.write_text(with_web)  # back within the drain: the new runtime takes the same container
    wait_for(lambda: answering(gw.mcp("web"), 1) == {first}, timeout=60)
    anyio.run(anyio.sleep, 4.0)  # past the old runtime's drain (2 s): it ended without removing the container
    assert containers(docker_project) == [first]
    # When the gateway stops, the one controller in charge removes it (the leak check after the test).


def test_stdio_containers_of_a_crashed_process_are_collected_at_start(
    gateway: Callable[[str], Any], docker_images: DockerImages, docker_project: str, monkeypatch: Any
) -> None:
    import os
    import socket

    monkeypatch.setenv("MCPFLEET_PROJECT", docker_project)
    labels = {
        "app.kubernetes.io/managed-by": "mcpfleet",
        "mcpfleet.project": docker_project,
        "mcpfleet.server": "box",
        "mcpfleet.role": "session",
    }
    dead = subprocess.Popen(["true"])
    dead.wait()

    def session_container(name: str, owner_pid: int) -> None:
        owner = {**labels, "mcpfleet.owner": f"{socket.gethostname()}:{owner_pid}"}
        argv = ["docker", "create", "--name", name, *(f"--label={k}={v}" for k, v in owner.items())]
        subprocess.run([*argv, docker_images.base, "sleep", "60"], capture_output=True, check=True)

    session_container(f"{docker_project}-box-s-orphan", dead.pid)  # its owner is gone
    session_container(f"{docker_project}-box-s-owned", os.getpid())  # its owner (this test) lives
    box = {"type": "docker", "image": docker_images.demo, "args": ["stdio"], "pull": "never"}
    gateway(json.dumps({"servers": {"box": box}}))
    wait_for(lambda: containers(docker_project) == [f"{docker_project}-box-s-owned"], timeout=30)
    subprocess.run(["docker", "rm", "-f", f"{docker_project}-box-s-owned"], capture_output=True, check=True)
