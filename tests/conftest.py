"""Shared fixtures: real processes on 127.0.0.1, and a check that no test leaves a process behind.

pytest makes itself a child subreaper, so every process a test starts, even one orphaned by its parent,
stays its descendant and is found by `no_leftover_processes`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import RunningGateway, demo_argv, free_port, running

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


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[[str], RunningGateway]]:
    """`gw = gateway(registry_yaml)` runs `mcpfleet serve` on a free port until the test ends."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(registry_text: str) -> RunningGateway:
            nonlocal count
            count += 1
            registry = tmp_path / f"gateway-{count}.yaml"
            registry.write_text(registry_text)
            port = free_port()
            argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(port)]
            log = tmp_path / f"gateway-{count}.log"
            return RunningGateway(stack.enter_context(running(argv, port, output=log)), registry, log)

        yield start


@pytest.fixture
def demo_http() -> Iterator[Callable[[str], str]]:
    """Start demo HTTP replicas on free ports: `url = demo_http("a")`. All stop when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(replica: str) -> str:
            port = free_port()
            return stack.enter_context(running(demo_argv(port, replica), port))

        yield start
