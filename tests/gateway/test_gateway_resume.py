"""A client that loses a stream of a stdio session resumes it with `GET` + `Last-Event-ID` and misses nothing.

The gateway is the Streamable HTTP server for stdio processes, so it gives their streams event ids, opens
each with a priming event (2025-11-25), and keeps the recent events of each session.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable

import anyio
import anyio.abc
import httpx2
import mcp.types as types
from mcp import Client

from support import ACCEPT, INIT, RunningGateway

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
COUNTDOWN = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "countdown", "arguments": {"start": 6, "interval": 0.3}, "_meta": {"progressToken": "t"}},
}


def sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            if field in ("id", "data"):
                event[field] = event.get(field, "") + value.strip()
        if event:
            events.append(event)
    return events


async def open_session(client: httpx2.AsyncClient, url: str) -> dict[str, str]:
    response = await client.post(url, json=INIT, headers=ACCEPT)
    headers = {**ACCEPT, "mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def test_a_lost_post_stream_resumes_where_it_broke(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\n")
    url = gw.mcp("local")

    async def main() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        async with httpx2.AsyncClient(timeout=30) as client:
            headers = await open_session(client, url)
            before: list[dict[str, str]] = []
            async with client.stream("POST", url, json=COUNTDOWN, headers=headers) as response:
                text = ""
                async for chunk in response.aiter_text():
                    text += chunk
                    before = sse_events(text.rsplit("\n\n", 1)[0])
                    if sum(1 for event in before if event.get("data")) >= 2:
                        break  # leave with the call half done: the connection closes
            await anyio.sleep(0.7)  # progress goes on meanwhile
            resumed = await client.get(url, headers={**headers, "last-event-id": before[-1]["id"]})
            assert resumed.status_code == 200
            return before, sse_events(resumed.text)

    before, after = anyio.run(main)
    assert before[0] == {"id": "1-0", "data": ""}  # the priming event
    ids = [event["id"] for event in before + after]
    assert ids == [f"1-{n}" for n in range(len(ids))]  # nothing lost, nothing twice
    messages = [json.loads(event["data"]) for event in before + after if event.get("data")]
    assert [m["params"]["progress"] for m in messages[:-1]] == [1, 2, 3, 4, 5, 6]
    assert messages[-1]["id"] == 7 and messages[-1]["result"]["content"][0]["text"] == "counted down from 6"


def test_unknown_event_ids_get_a_clear_error(gateway: Callable[[str], RunningGateway]) -> None:
    """Malformed ids, ids of streams that never were, and ids past a stream's end are refused with 400 (not
    404, which would make the client drop a live session; not an empty 200, which the client would retry
    for ever)."""
    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\n")

    async def main() -> list[tuple[int, str]]:
        async with httpx2.AsyncClient(timeout=30) as client:
            headers = await open_session(client, gw.mcp("local"))
            answered = await client.post(gw.mcp("local"), json=COUNTDOWN, headers=headers)  # stream 1, 8 events
            assert sse_events(answered.text)[-1]["id"] == "1-7"
            refused = []
            for event_id in (b"not-an-id", "1-\u00b2".encode("latin-1"), b"99-0", b"1-8"):
                response = await client.get(gw.mcp("local"), headers={**headers, "last-event-id": event_id})
                refused.append((response.status_code, response.json()["error"]["message"]))
            return refused

    for status, message in anyio.run(main):
        assert status == 400 and "is not an event id of this session that is still kept" in message


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection through it at once (a network failure)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.resumes = 0  # requests seen carrying Last-Event-ID
        self._connections: list[anyio.CancelScope] = []

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        with anyio.CancelScope() as scope:
            self._connections.append(scope)
            async with client, await anyio.connect_tcp("127.0.0.1", self.target_port) as upstream:

                async def pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        async for data in source:
                            if source is client and b"\r\nlast-event-id:" in data.lower():
                                self.resumes += 1
                            await sink.send(data)
                    tg.cancel_scope.cancel()  # either side closing (or resetting) ends the connection

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, client, upstream)
                    tg.start_soon(pump, upstream, client)

    def cut(self) -> None:
        for scope in self._connections:
            scope.cancel()
        self._connections.clear()


def test_the_sdk_client_resumes_a_call_across_a_network_failure(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\n")
    progress: list[float] = []
    resumes: list[int] = []

    async def main() -> types.CallToolResult:
        async with anyio.create_task_group() as tg:
            proxy = CuttingProxy(int(gw.url.rsplit(":", 1)[1]))
            await tg.start(proxy.serve)
            async with Client(f"http://127.0.0.1:{proxy.port}/local/mcp", mode="legacy") as client:
                assert client.protocol_version == "2025-11-25"

                async def on_progress(done: float, total: float | None, message: str | None) -> None:
                    progress.append(done)
                    if done == 2:
                        proxy.cut()  # every connection drops mid-call, the POST stream with them

                result = await client.call_tool(
                    "countdown", {"start": 6, "interval": 0.3}, progress_callback=on_progress
                )
            resumes.append(proxy.resumes)
            tg.cancel_scope.cancel()
        return result

    result = anyio.run(main)
    assert result.content == [types.TextContent(type="text", text="counted down from 6")]
    assert progress == [1, 2, 3, 4, 5, 6]  # those sent while the client was away were replayed
    assert resumes[0] >= 1  # the call was answered through a resumed stream


async def leave_a_call(client: httpx2.AsyncClient, url: str, headers: dict[str, str], seconds: float) -> str:
    """Start a slow call and go away after its priming event; its id, for a resume."""
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"seconds": seconds}},
    }
    async with client.stream("POST", url, json=body, headers=headers) as response:
        async for chunk in response.aiter_text():
            if "\n\n" in chunk or "\r\n\r\n" in chunk:
                return sse_events(chunk)[0]["id"]
    raise AssertionError("no priming event")


def test_a_detached_call_keeps_its_session_only_for_a_while(gateway: Callable[[str], RunningGateway]) -> None:
    """A call whose client went away keeps its session (and process) for at most the session idle time:
    answered meanwhile, it can still be collected; abandoned, it does not hold the pool's only process."""
    gw = gateway(
        f"servers:\n  one: {{command: {DEMO}, pool: {{max: 1, acquire_timeout: 10}}}}\n"
        "gateway: {session_idle_timeout: 2}\n"
    )
    url = gw.mcp("one")

    async def main() -> tuple[str, float, int]:
        async with httpx2.AsyncClient(timeout=30) as client:
            first = await open_session(client, url)
            primed = await leave_a_call(client, url, first, 0.3)  # answered while nobody listens
            await anyio.sleep(0.5)
            collected = await client.get(url, headers={**first, "last-event-id": primed})
            text = json.loads(sse_events(collected.text)[-1]["data"])["result"]["content"][0]["text"]
            await leave_a_call(client, url, first, 100_000)  # then a call nobody will come back for
            started = time.monotonic()
            await open_session(client, url)  # needs the only process: waits for the grace, not for ever
            waited = time.monotonic() - started
            gone = await client.get(url, headers={**first, "last-event-id": primed})
            return text, waited, gone.status_code

    text, waited, gone = anyio.run(main)
    assert text == "slept 0.3 s"
    assert 1 <= waited < 9  # the abandoned call held the process for about the 2 s grace, then was reclaimed
    assert gone == 404  # its session ended with it
