"""`mcpfleet adapter -- COMMAND`: a stdio server as a Streamable HTTP endpoint, run as a user (or a pod) runs
it: a real adapter process in front of the real demo server, reached with the official SDK's client."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcpfleet.errors import UsageError
from mcpfleet.gateway.adapter import Adapter, server_id_for
from mcpfleet.registry.model import StdioServer

from support import ACCEPT, INIT, free_port, run_cli, wait_for, wait_for_port

DEMO = [sys.executable, "-m", "mcpfleet.demo", "stdio"]


@contextlib.contextmanager
def adapter(*options: str, command: list[str] = DEMO) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `mcpfleet adapter --port <free> OPTIONS -- COMMAND` until the block ends; yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "mcpfleet", "adapter", "--port", str(port), *options, "--", *command]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process, timeout=60)
            yield f"http://127.0.0.1:{port}", process
        except BaseException:
            log.seek(0)
            print("--- adapter output ---", log.read().decode(errors="replace")[-4000:], sep="\n")
            raise
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


@contextlib.asynccontextmanager
async def session(url: str, mode: Any = "legacy") -> Any:
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def whoami(client: Any) -> int:
    return int((await client.call_tool("whoami", {})).structured_content["pid"])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_serves_the_stdio_server_at_mcp_with_a_process_per_session() -> None:
    with adapter() as (base, _):
        assert httpx2.get(f"{base}/readyz").status_code == 200
        assert httpx2.get(f"{base}/healthz").status_code == 200

        async def main() -> tuple[int, int]:
            async with session(f"{base}/mcp") as first, session(f"{base}/mcp") as second:
                names = {tool.name for tool in (await first.list_tools()).tools}
                assert {"echo", "whoami", "sleep"} <= names
                echoed = await first.call_tool("echo", {"text": "through the adapter"})
                assert echoed.content[0].text == "through the adapter"
                pids = (await whoami(first), await whoami(second))
                assert pids[0] == await whoami(first)  # a session keeps its process
            async with session(f"{base}/mcp", mode="auto") as modern:  # 2026-07-28, no handshake: works too
                assert (await modern.call_tool("echo", {"text": "2026"})).content[0].text == "2026"
            return pids

        first_pid, second_pid = anyio.run(main)
        assert first_pid != second_pid  # session mode: two sessions, two processes
        # Only the MCP path and the status paths: the gateway's own routes are not exposed.
        for path in ("/", "/adapter/mcp", "/sse", "/admin/reload"):
            answer = httpx2.post(f"{base}{path}", json=INIT, headers=ACCEPT)
            assert answer.status_code == 404, path
            assert "serves MCP (Streamable HTTP) at /mcp only" in answer.json()["error"]["message"]


def test_a_killed_process_fails_only_its_session() -> None:
    with adapter() as (base, _):

        async def main() -> None:
            async with session(f"{base}/mcp") as doomed, session(f"{base}/mcp") as other:
                victim = await whoami(doomed)
                survivor = await whoami(other)
                os.kill(victim, signal.SIGKILL)
                with pytest.raises(MCPError):
                    await doomed.call_tool("echo", {"text": "lost"})
                assert (await other.call_tool("echo", {"text": "still here"})).content[0].text == "still here"
                assert await whoami(other) == survivor
            async with session(f"{base}/mcp") as fresh:  # and a new session gets a new process
                assert await whoami(fresh) not in (victim, survivor)

        anyio.run(main)


def test_sigterm_turns_readiness_finishes_the_call_and_stops_every_child() -> None:
    with adapter() as (base, process):

        async def main() -> tuple[int, str, float]:
            async with session(f"{base}/mcp") as client:
                pid = await whoami(client)
                result: dict[str, Any] = {}

                async def slow_call() -> None:
                    answer = await client.call_tool("sleep", {"seconds": 1.5})
                    result["text"] = answer.content[0].text

                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow_call)
                    await anyio.sleep(0.5)
                    signalled = time.monotonic()
                    process.send_signal(signal.SIGTERM)
            return pid, result["text"], time.monotonic() - signalled

        pid, text, _ = anyio.run(main)
        assert "1.5" in text  # the call under way when SIGTERM came finished
        assert process.wait(timeout=30) == 0
        # Readiness: nothing answers once the adapter stops accepting (a probe fails from the signal on).
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{base}/readyz")
        wait_for(lambda: not alive(pid), timeout=5)  # the server's process was stopped, not orphaned


def test_path_option_serves_there_and_not_at_mcp() -> None:
    with adapter("--path", "/x") as (base, _):

        async def main() -> str:
            async with session(f"{base}/x") as client:
                return str((await client.call_tool("echo", {"text": "at /x"})).content[0].text)

        assert anyio.run(main) == "at /x"
        assert httpx2.post(f"{base}/mcp", json=INIT, headers=ACCEPT).status_code == 404
        assert httpx2.get(f"{base}/readyz").status_code == 200


def test_host_and_origin_on_a_pod_bind() -> None:
    # Bound to every interface, as in a pod: the gateway's Host is the pod's IP, which passes; a DNS name
    # must be listed; a browser's Origin must be listed.
    with adapter("--host", "0.0.0.0", "--allowed-host", "time.tools.svc") as (base, _):
        for host in ("10.1.2.3:8080", "time.tools.svc:8080", "[fd00::7]:8080"):
            answer = httpx2.post(f"{base}/mcp", json=INIT, headers={**ACCEPT, "host": host})
            assert answer.status_code == 200, (host, answer.text)
        assert httpx2.post(f"{base}/mcp", json=INIT, headers={**ACCEPT, "host": "evil.example"}).status_code == 421
        origin = {**ACCEPT, "host": "10.1.2.3:8080", "origin": "http://evil.example"}
        assert httpx2.post(f"{base}/mcp", json=INIT, headers=origin).status_code == 403
    with adapter() as (base, _):  # the default loopback bind: loopback names only
        assert httpx2.post(f"{base}/mcp", json=INIT, headers={**ACCEPT, "host": "10.1.2.3:8080"}).status_code == 421


def test_argument_errors_are_one_line() -> None:
    nothing = run_cli("adapter", "--")
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines() == [
        "error: give the server's command after '--': mcpfleet adapter [OPTIONS] -- COMMAND [ARGS]..."
    ]
    assert run_cli("adapter").returncode == 2
    # A command that does not exist is found out at start (the pod fails, rather than turning ready and
    # failing every session): exit 3, as for any stdio server that cannot start.
    missing = run_cli("adapter", "--", "/nonexistent")
    assert missing.returncode == 3
    assert missing.stderr.strip().splitlines() == [
        "error: server 'nonexistent': command '/nonexistent' cannot be run: the file does not exist or is not"
        " executable"
    ]
    unknown = run_cli("adapter", "--", "no-such-mcp-server")
    assert unknown.returncode == 3 and "'no-such-mcp-server' was not found" in unknown.stderr
    shared = run_cli("adapter", "--mode", "shared", "--", *DEMO)
    assert shared.returncode == 2 and shared.stderr.startswith("error: --mode shared needs --stateless")


def test_the_registry_it_serves() -> None:
    # Pure: the one-server registry the options make. The environment passes to the server (as secret_env:
    # never printed), but for the adapter's own session keys; the pool options are the registry's.
    served = Adapter.create(
        [*DEMO, "--replica", "pod"],
        pool={"mode": "shared", "min": 1, "max": 3},
        stateless=True,
        environ={"PATH": os.environ["PATH"], "API_TOKEN": "s3cret", "MCPFLEET_SESSION_KEYS": "k1"},
    )
    entry = served.registry.servers[served.server_id]
    assert isinstance(entry, StdioServer) and entry.command == (*DEMO, "--replica", "pod")
    assert dict(entry.secret_env) == {"PATH": os.environ["PATH"], "API_TOKEN": "s3cret"} and not entry.env
    assert (entry.pool.mode, entry.pool.min, entry.pool.max, entry.stateless) == ("shared", 1, 3, True)
    assert served.registry.gateway.host == "127.0.0.1" and served.path == b"/mcp"
    assert server_id_for(["/usr/local/bin/mcp-server-time"]) == "mcp-server-time"
    assert server_id_for(["/opt/My Server"]) == "my-server" and server_id_for(["metrics"]) == "server"
    for path in ("mcp", "/a//b", "/a/../b", "/healthz", "/a%2Fb"):
        with pytest.raises(UsageError, match="--path"):
            Adapter.create(DEMO, path=path)
    with pytest.raises(UsageError, match=r"--min \(4\) is greater than --max \(2\)"):
        Adapter.create(DEMO, pool={"min": 4, "max": 2})
