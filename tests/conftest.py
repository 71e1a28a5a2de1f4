"""Shared fixtures: real processes on 127.0.0.1, and a check that no test leaves a process behind.

pytest makes itself a child subreaper, so every process a test starts, even one orphaned by its parent,
stays its descendant and is found by `no_leftover_processes`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_become_subreaper()


def _descendants(root: int) -> dict[int, str]:
    """Live descendants of `root` (pid -> command line), zombies reaped and left out."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        after = stat.rsplit(")", 1)[1].split()
        state, ppid = after[0], int(after[1])
        children.setdefault(ppid, []).append(int(entry))
        info[int(entry)] = (state, cmdline.strip())
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        state, cmdline = info.get(pid, ("?", ""))
        if state == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        else:
            found[pid] = cmdline
        stack.extend(children.get(pid, []))
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = set(_descendants(os.getpid()))
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = {pid: cmd for pid, cmd in _descendants(os.getpid()).items() if pid not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


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
def running(argv: list[str], port: int, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[str]:
    """Run a server process until the block ends; yields its base URL on 127.0.0.1."""
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def demo_argv(port: int, replica: str) -> list[str]:
    return [sys.executable, "-m", "mcpfleet.demo", "http", "--port", str(port), "--replica", replica]


@pytest.fixture
def demo_http() -> Iterator[Callable[[str], str]]:
    """Start demo HTTP replicas on free ports: `url = demo_http("a")`. All stop when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(replica: str) -> str:
            port = free_port()
            return stack.enter_context(running(demo_argv(port, replica), port))

        yield start


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
