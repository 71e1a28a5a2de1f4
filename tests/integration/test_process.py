"""StdioProcess against real child processes: framing, environment, stderr, and the stop sequence."""

from __future__ import annotations

import os
import sys
import time

import anyio
import pytest

from mcpfleet.errors import ServerStartError
from mcpfleet.process import StdioProcess, live_group_members

ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"


def test_lines_round_trip_byte_for_byte() -> None:
    async def main() -> list[bytes]:
        async with StdioProcess("echo", [sys.executable, "-c", ECHO]) as proc:
            sent = [b'{"jsonrpc":"2.0","id":1,"method":"x"}', b'{"id":"\\u00e9","big":' + b"9" * 200000 + b"}"]
            for line in sent:
                await proc.send(line)
            return [await proc.receive() for _ in sent] + sent

    got = anyio.run(main)
    assert got[:2] == got[2:]


def test_child_gets_minimal_environment_plus_entry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPFLEET_PARENT_SECRET", "must-not-leak")
    script = "import os, json; print(json.dumps(dict(os.environ)), flush=True)"

    async def main() -> bytes:
        async with StdioProcess(
            "env", [sys.executable, "-c", script], env={"MODE": "x"}, secret_env={"TOKEN": "t"}
        ) as proc:
            return await proc.receive()

    import json

    env = json.loads(anyio.run(main))
    assert "MCPFLEET_PARENT_SECRET" not in env
    assert env["MODE"] == "x" and env["TOKEN"] == "t" and "PATH" in env


def test_stderr_is_kept_apart_and_its_tail_is_available() -> None:
    script = "import sys\nfor i in range(100): print(f'log {i}', file=sys.stderr)\nprint('{}', flush=True)\n"

    async def main() -> tuple[bytes, str]:
        async with StdioProcess("err", [sys.executable, "-c", script], stderr_lines=5) as proc:
            line = await proc.receive()
            await anyio.sleep(0.2)
            return line, proc.stderr_tail()

    line, tail = anyio.run(main)
    assert line == b"{}"
    assert tail.splitlines() == [f"log {i}" for i in range(95, 100)]


def test_end_of_stdout_is_reported() -> None:
    async def main() -> None:
        async with StdioProcess("quit", [sys.executable, "-c", "print('{}')"]) as proc:
            assert await proc.receive() == b"{}"
            with pytest.raises(anyio.EndOfStream):
                await proc.receive()

    anyio.run(main)


def test_stubborn_child_and_its_grandchild_are_killed_within_bounds() -> None:
    # The child ignores stdin EOF and SIGTERM and starts a grandchild in its process group.
    script = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "print('{}', flush=True)\n"
        "time.sleep(300)\n"
    )

    async def main() -> tuple[int, float]:
        async with StdioProcess("stubborn", [sys.executable, "-c", script], shutdown_grace=0.3) as proc:
            await proc.receive()
            pid = proc.pid
            assert pid is not None
            started = time.monotonic()
        return pid, time.monotonic() - started

    pid, took = anyio.run(main)
    assert took < 10.0, "the stop sequence must be bounded (3 waits of 0.3 s here)"
    assert live_group_members(pid) == []


def test_polite_child_exits_on_stdin_close_without_signals() -> None:
    script = "import sys\nsys.stdin.read()\nprint('bye', file=sys.stderr, flush=True)\n"

    async def main() -> int | None:
        proc = StdioProcess("polite", [sys.executable, "-c", script], shutdown_grace=5)
        async with proc:
            pass
        return proc.returncode

    assert anyio.run(main) == 0


def test_cancellation_still_reaps_the_child() -> None:
    async def main() -> int | None:
        proc = StdioProcess("sleepy", ["sleep", "300"], shutdown_grace=0.2)
        with anyio.move_on_after(0.2):
            async with proc:
                await anyio.sleep(10)
        return proc.returncode

    assert anyio.run(main) is not None


def test_missing_command_names_server_and_command() -> None:
    async def main() -> None:
        async with StdioProcess("ghost", ["definitely-not-a-command-xyz", "--flag"]):
            pass

    with pytest.raises(ServerStartError, match="server 'ghost': command 'definitely-not-a-command-xyz --flag' was not"):
        anyio.run(main)


def test_non_executable_path_is_refused(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "script.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")

    async def main() -> None:
        async with StdioProcess("noexec", [path]):
            pass

    with pytest.raises(ServerStartError, match="not executable"):
        anyio.run(main)


def test_a_working_directory_that_is_not_there_is_named(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "gone")

    async def main() -> None:
        async with StdioProcess("lost", ["true"], cwd=missing):
            pass

    with pytest.raises(ServerStartError, match=f"its working directory {missing} \\(cwd\\) is not a directory"):
        anyio.run(main)
