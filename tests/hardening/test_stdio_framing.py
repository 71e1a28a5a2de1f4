"""stdio framing faults through the gateway (`faulty_server.py`): a line that is not JSON, half a line and then
silence, a 50 MiB line, bytes that are not UTF-8, stdout closed mid-answer (the process exiting or not).

The session whose call met the fault gets a JSON-RPC error that says what happened, within a bound; another
session of the same server keeps working all along: another process in session mode; in pool mode `shared`,
the very same process, except when the fault ends that process, which (section 10.5 of the Plan Document)
fails what was in flight there and ends its sessions, whose clients initialize again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import FAULTY, LoggedGateway

IDLE = 3  # timeouts.idle_stream of the faulty entries: how long a request may get nothing
TOO_LARGE, EXITED, TIMEOUT = -32019, -32014, -32015


def registry(mode: str) -> str:
    pool = "{mode: shared, max: 1}, stateless: true" if mode == "shared" else "{max: 8}"
    return f"servers:\n  faulty: {{command: {FAULTY}, pool: {pool}, timeouts: {{idle_stream: {IDLE}}}}}\n"


async def call(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    result = await client.call_tool(tool, arguments or {})
    assert not result.is_error, result
    return result.structured_content["result"] if result.structured_content else result.content[0].text  # type: ignore[union-attr]


async def fault(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> tuple[MCPError, float]:
    """Call a faulty tool: the error it gets and how long that took."""
    started = time.monotonic()
    with pytest.raises(MCPError) as caught:
        await call(client, tool, arguments)
    return caught.value, time.monotonic() - started


@contextlib.asynccontextmanager
async def bystander(gw: LoggedGateway) -> AsyncIterator[Callable[[], list[str]]]:
    """Another session calling `echo` without pause while the block runs; yields what went wrong so far.
    Each call carries its own text and must get that text back."""
    wrong: list[str] = []
    calls = 0

    async def loop(client: Client) -> None:
        nonlocal calls
        while True:
            calls += 1
            text = f"bystander-{calls}"
            try:
                got = await call(client, "echo", {"text": text})
            except MCPError as exc:
                wrong.append(f"{text}: {exc}")
                return
            if got != text:
                wrong.append(f"sent {text!r}, got {got!r}")
            await anyio.sleep(0.05)

    async with Client(gw.mcp("faulty"), mode="legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(loop, client)
        yield lambda: wrong
        tg.cancel_scope.cancel()
    assert calls > 1


def test_session_mode_faults_fail_only_their_own_call(logged_gateway: Callable[[str], LoggedGateway]) -> None:
    gw = logged_gateway(registry("session"))

    async def main() -> None:
        with anyio.fail_after(150):
            async with bystander(gw) as wrong:
                async with Client(gw.mcp("faulty"), mode="legacy") as client:
                    # A line that is not JSON-RPC is skipped (servers print banners): the answer after it arrives.
                    assert await call(client, "garbage", {"text": "after garbage"}) == "after garbage"
                    # One line over gateway.max_message_bytes: only that request fails, the session goes on.
                    error, _ = await fault(client, "huge")
                    assert error.code == TOO_LARGE and "gateway.max_message_bytes" in error.message
                    assert await call(client, "echo", {"text": "after huge"}) == "after huge"
                    # An answer that is not UTF-8 is not an answer: the request times out with the setting named.
                    error, took = await fault(client, "bad_utf8")
                    assert error.code == TIMEOUT and "timeouts.idle_stream" in error.message, error
                    assert IDLE <= took < IDLE + 20
                async with Client(gw.mcp("faulty"), mode="legacy") as client:
                    # Half a line, then silence: bounded by timeouts.idle_stream, never a hang.
                    error, took = await fault(client, "stall")
                    assert error.code == TIMEOUT and f"within {IDLE} s" in error.message, error
                    assert IDLE <= took < IDLE + 20
                for exits in (True, False):
                    async with Client(gw.mcp("faulty"), mode="legacy") as client:
                        # stdout closed mid-answer: the call fails at once, whether the process exits or not.
                        error, took = await fault(client, "cut", {"exit": exits})
                        assert error.code == EXITED and "'faulty' exited" in error.message, error
                        assert took < IDLE, took  # EOF, not the idle timeout
                        if exits:
                            assert "exit code 3" in error.message, error
                assert wrong() == []

    anyio.run(main)
    gw.assert_unhurt("faulty")


def test_shared_mode_faults_spare_the_other_sessions_of_the_process(
    logged_gateway: Callable[[str], LoggedGateway],
) -> None:
    """pool.max 1: every session is on the same process. Faults that leave the process running hurt no other
    session; closing its stdout ends the process, its sessions with it, and the next session gets a new one."""
    gw = logged_gateway(registry("shared"))

    async def main() -> None:
        with anyio.fail_after(150):
            async with Client(gw.mcp("faulty"), mode="legacy") as client:
                async with bystander(gw) as wrong:
                    shared_pid = await call(client, "pid")
                    assert await call(client, "garbage", {"text": "after garbage"}) == "after garbage"
                    error, _ = await fault(client, "huge")
                    assert error.code == TOO_LARGE and "gateway.max_message_bytes" in error.message
                    error, took = await fault(client, "bad_utf8")
                    assert error.code == TIMEOUT and "timeouts.idle_stream" in error.message, error
                    assert IDLE <= took < IDLE + 20
                    assert await call(client, "pid") == shared_pid  # the same process all along
                    assert wrong() == []
                error, took = await fault(client, "cut", {"exit": True})
                assert error.code == EXITED and "exit code 3" in error.message, error
                assert took < IDLE, took
            async with Client(gw.mcp("faulty"), mode="legacy") as client:
                assert await call(client, "pid") != shared_pid

    anyio.run(main)
    gw.assert_unhurt("faulty")
