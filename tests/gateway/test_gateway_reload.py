"""Registry reload while serving: file watch (atomic rename), SIGHUP, POST /admin/reload, bad files, drain."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

from support import RunningGateway, wait_for

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def registry(*ids: str, extra: str = "") -> str:
    return "servers:\n" + "".join(f"  {i}: {{command: {DEMO}, description: '{i}'}}\n" for i in ids) + extra


def status(gw: RunningGateway) -> dict[str, Any]:
    return httpx2.get(f"{gw.url}/servers").json()  # type: ignore[no-any-return]


async def echo(url: str) -> str:
    async with Client(url, mode="legacy") as client:
        result = await client.call_tool("echo", {"text": "ok"})
        return result.content[0].text  # type: ignore[union-attr]


def replace_atomically(path: Path, text: str) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


def test_file_watch_sees_an_atomic_rename(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(registry("a"))
    replace_atomically(gw.registry, registry("a", "b"))
    wait_for(lambda: [s["id"] for s in status(gw)["servers"]] == ["a", "b"])
    assert anyio.run(echo, gw.mcp("b")) == "ok"


def test_admin_reload_and_sighup(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(registry("a"))
    before = status(gw)["generation"]
    gw.registry.write_text(registry("a", "c"))
    answer = httpx2.post(f"{gw.url}/admin/reload")
    assert answer.status_code == 200 and answer.json()["reloaded"] is True
    assert "c" in [s["id"] for s in status(gw)["servers"]]

    # The same content again changes nothing but the generation; SIGHUP reloads too.
    gw.registry.write_text(registry("d"))
    os.kill(status(gw)["pid"], signal.SIGHUP)
    wait_for(lambda: [s["id"] for s in status(gw)["servers"]] == ["d"])
    assert status(gw)["generation"] > before
    assert httpx2.post(gw.mcp("a"), json={}).status_code == 404


def test_invalid_registry_leaves_the_one_in_force(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(registry("a"))
    gw.registry.write_text(registry("a") + "  broken: {command: [x], colour: red}\n")
    answer = httpx2.post(f"{gw.url}/admin/reload")
    assert answer.status_code == 422
    assert any("servers.broken.colour: unknown field" in e for e in answer.json()["errors"])
    shown = status(gw)
    assert [s["id"] for s in shown["servers"]] == ["a"]
    assert any("servers.broken.colour" in e for e in shown["last_reload_error"])
    # The file watch may have rejected the same content first (one or two rejections); nothing was accepted.
    assert shown["reloads"]["rejected"] in (1, 2) and shown["reloads"]["ok"] == 0
    assert anyio.run(echo, gw.mcp("a")) == "ok"

    gw.registry.write_text(registry("a", "b"))
    assert httpx2.post(f"{gw.url}/admin/reload").status_code == 200
    assert status(gw)["last_reload_error"] is None


def test_removed_server_drains_in_flight_calls_then_stops(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(registry("a", "b"))

    async def slow_call_across_reload() -> tuple[str, int]:
        async with Client(gw.mcp("b"), mode="legacy") as client:
            await client.list_tools()  # the SDK validates results against the listed output schemas
            async with anyio.create_task_group() as tg:
                result: dict[str, Any] = {}

                async def call() -> None:
                    answer = await client.call_tool("sleep", {"seconds": 2})
                    result["text"] = answer.content[0].text  # type: ignore[union-attr]

                tg.start_soon(call)
                await anyio.sleep(0.5)
                gw.registry.write_text(registry("a"))
                reloaded = await anyio.to_thread.run_sync(lambda: httpx2.post(f"{gw.url}/admin/reload"))
                assert reloaded.status_code == 200
            after = await anyio.to_thread.run_sync(lambda: httpx2.post(gw.mcp("b"), json={}))
            return result["text"], after.status_code

    text, after = anyio.run(slow_call_across_reload)
    assert text == "slept 2 s"
    assert after == 404
    wait_for(lambda: all(s["id"] != "b" for s in status(gw)["servers"]))
