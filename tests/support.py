"""Helpers shared by the tests: free ports, real server processes, the CLI as a process, npm test packages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
# A Streamable HTTP client's request headers and a 2025-11-25 initialize, for tests that speak raw HTTP.
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
}
NODE_DIR = ROOT / "tests" / "node"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def running(
    argv: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    output: Path | None = None,
) -> Iterator[str]:
    """Run a server process until the block ends; yields its base URL on 127.0.0.1.

    Its output goes to a file (`output`, which the test may read meanwhile, else a temporary one), never to
    an unread pipe (a full pipe would stall the server), and the file's tail is printed when the server
    fails to start or the block fails.
    """
    with output.open("w+b") if output is not None else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, process)
            yield f"http://127.0.0.1:{port}"
        except BaseException:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-40:]
            print(f"--- output of {' '.join(argv)} (last lines) ---", *tail, sep="\n")
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


def demo_argv(port: int, replica: str) -> list[str]:
    return [sys.executable, "-m", "mcpfleet.demo", "http", "--port", str(port), "--replica", replica]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run `mcpfleet ARGS` as a real process; returns the completed process (never raises on exit code)."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mcpfleet", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def node_package(name: str) -> Path:
    """Path of an npm test package installed under tests/node (by `make test` via `npm ci`)."""
    path = NODE_DIR / "node_modules" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `npm ci --prefix tests/node` (make test does)")
    return path


def rpc_messages(response: Any) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a Streamable HTTP answer, whether JSON or Server-Sent Events."""
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        return body if isinstance(body, list) else [body]
    # A priming event (an id and empty data, for resumption) carries no message. Lines end at CR, LF or CRLF
    # only (the SSE grammar): `str.splitlines` would also cut at U+0085 or U+2028 inside a JSON string.
    lines = re.split(r"\r\n|\r|\n", response.text)
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line[6:].strip()]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


async def until(check: Callable[[], Awaitable[Any]], within: float = 20.0, interval: float = 0.1) -> Any:
    """Await `check()` until it returns something true (and return that); fail after `within` seconds."""
    with anyio.fail_after(within):
        while True:
            if result := await check():
                return result
            await anyio.sleep(interval)


@dataclass
class RunningGateway:
    url: str
    registry: Path
    log: Path | None = None  # the gateway's output (stdout and stderr), as it is written

    def mcp(self, server_id: str) -> str:
        return f"{self.url}/{server_id}/mcp"


@contextlib.asynccontextmanager
async def serving_in_process(app: Any, listening: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve the ASGI `app` (an entered `Gateway`, say) with uvicorn in this process until the block ends,
    on `listening` (a socket already listening: nothing waits for uvicorn to start) or a new one on
    127.0.0.1; yields its URL. In process, so the test sees the app's log records and spans."""
    with contextlib.ExitStack() as stack:
        if listening is None:
            listening = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [listening])
            try:
                yield f"http://127.0.0.1:{listening.getsockname()[1]}"
            finally:
                server.should_exit = True
