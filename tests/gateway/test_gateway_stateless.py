"""2026-07-28 traffic across replicas and processes: what must stay where it started.

- Retries carrying `requestState` go back to the replica or process that asked for input. The demo's
  `confirm` tool elicits: at 2026-07-28 the SDK server answers `input_required` with a `requestState` sealed
  by a key of its own process, and the SDK client retries the call with the answer.
- A `subscriptions/listen` stream stays on the replica or process that accepted it, and its events reach
  the client that opened it (the demo's `announce` tool publishes them).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable

import anyio
import httpx2
import mcp.types as types
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated

from support import RunningGateway, until
from test_gateway_balancing import run_bounded

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


async def say_yes(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"ok": True})


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each request to the next gateway in turn, as an ingress in front of gateway replicas would."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = itertools.cycle(ports)
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=next(self._ports))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def confirm_through(gateways: list[RunningGateway], server_id: str, calls: int) -> tuple[list[str], list[str]]:
    """`calls` confirm calls by one 2026-07-28 SDK client whose requests alternate between `gateways`:
    (the answers, the errors)."""
    answers: list[str] = []
    errors: list[str] = []
    ports = [int(gw.url.rsplit(":", 1)[1]) for gw in gateways]

    async def main() -> None:
        async with (
            httpx2.AsyncClient(transport=Alternating(ports), timeout=30) as http,
            Client(
                streamable_http_client(gateways[0].mcp(server_id), http_client=http),
                mode="auto",
                elicitation_callback=say_yes,
            ) as client,
        ):
            assert client.protocol_version == "2026-07-28"
            for index in range(calls):
                try:
                    result = await client.call_tool("confirm", {"question": f"question {index}?"})
                except Exception as exc:  # the SDK raises the server's "Invalid or expired requestState"
                    errors.append(str(exc))
                    continue
                assert isinstance(result.content[0], types.TextContent)
                answers.append(result.content[0].text)

    anyio.run(main)
    return answers, errors


def test_retries_return_to_the_issuing_replica_through_two_gateways(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    replicas = ", ".join(f"'{demo_http(name)}'" for name in ("a", "b", "c"))

    def registry(request_state: str) -> str:
        return (
            f"servers:\n  web: {{endpoints: [{replicas}], balancer: {{request_state: {request_state}}}}}\n"
            "gateway: {session_keys: ['fleet-secret-1-0123456789abcdef0123456789']}\n"
        )

    pinned = [gateway(registry("pin")), gateway(registry("pin"))]
    answers, errors = confirm_through(pinned, "web", 12)
    assert errors == []
    assert len(answers) == 12
    assert all(answer.startswith("yes (answered on ") for answer in answers)
    assert len(set(answers)) == 3  # new calls are still spread over the replicas

    # The same run with pinning off: retries follow round robin, so the demo replicas, which each seal
    # their state with a key of their own, reject them.
    spread = [gateway(registry("any")), gateway(registry("any"))]
    answers, errors = confirm_through(spread, "web", 6)
    assert errors and all("requestState" in error for error in errors)


def live_processes(gw: RunningGateway, server_id: str) -> int:
    servers = httpx2.get(f"{gw.url}/servers").json()["servers"]
    return int(next(s for s in servers if s["id"] == server_id)["processes"]["live"])


async def pid_of(client: Client) -> int:
    identity = await client.call_tool("whoami", {})
    assert identity.structured_content is not None
    return int(identity.structured_content["pid"])


def test_busy_stdio_traffic_spreads_over_more_processes(gateway: Callable[[str], RunningGateway]) -> None:
    """2026-07-28 requests share a stdio server's processes; when every one is busy, another starts."""
    gw = gateway(f"servers:\n  local: {{command: {DEMO}, pool: {{max: 3}}}}\n")
    pids: list[int] = []

    async def main() -> None:
        async with Client(gw.mcp("local"), mode="auto") as client:
            pids.append(await pid_of(client))

            async def slow(_: int) -> None:
                result = await client.call_tool("sleep", {"seconds": 3})
                assert not result.is_error

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_bounded, 40, 40, slow)

                async def newcomer() -> int | None:  # new work goes to another process once one has started
                    pid = await pid_of(client)
                    return pid if pid != pids[0] else None

                pids.append(await until(newcomer, interval=0.2))

    anyio.run(main)
    assert 2 <= live_processes(gw, "local") <= 3


def test_retry_reaches_its_process_even_when_it_is_due_for_recycling(
    gateway: Callable[[str], RunningGateway],
) -> None:
    """The process that asked for input outlives `pool.max_lifetime` while the user answers; new work
    already goes to its replacement, yet the retry still reaches it (no other process can open its state)."""
    gw = gateway(f"servers:\n  local: {{command: {DEMO}, pool: {{max: 3, max_lifetime: 2}}}}\n")
    seen: dict[str, int] = {}

    client = Client(gw.mcp("local"), mode="auto")

    async def answer_slowly(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:

        async def replacement() -> int | None:  # the pid once a process other than the asker serves new work
            pid = await pid_of(client)
            return pid if pid != seen["asker"] else None

        seen["replacement"] = await until(replacement, interval=0.2)
        return types.ElicitResult(action="accept", content={"ok": True})

    async def main() -> None:
        client.elicitation_callback = answer_slowly
        async with client:
            seen["asker"] = await pid_of(client)
            result = await client.call_tool("confirm", {"question": "still there?"})
            assert isinstance(result.content[0], types.TextContent)
            seen["answer"] = int(result.content[0].text.rsplit("pid ", 1)[1].rstrip(")"))

    anyio.run(main)
    assert seen["answer"] == seen["asker"] != seen["replacement"]


async def listen_while_announcing(url: str, count: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Open a listen stream for `count` resources, announce a change of each: (the URIs the stream
    delivered, (URI, replica that announced it) per call)."""
    uris = [f"demo://item/{index}" for index in range(count)]
    delivered: list[str] = []
    calls: list[tuple[str, str]] = []
    async with Client(url, mode="auto") as client, client.listen(resource_subscriptions=uris) as subscription:
        assert subscription.honored.resource_subscriptions == uris

        async def read() -> None:
            async for event in subscription:
                assert isinstance(event, ResourceUpdated)
                delivered.append(event.uri)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            for uri in uris:
                result = await client.call_tool("announce", {"uri": uri})
                assert isinstance(result.content[0], types.TextContent)
                calls.append((uri, result.content[0].text.rsplit(" on ", 1)[1]))
            await anyio.sleep(1)  # the last events are on their way
            tg.cancel_scope.cancel()
    return delivered, calls


def test_a_listen_stream_stays_on_its_replica(
    gateway: Callable[[str], RunningGateway], demo_http: Callable[[str], str]
) -> None:
    """Each demo replica publishes to its own in-memory bus: the stream gets exactly the events of the
    calls that landed on the replica holding it, in order, whichever replicas the calls went to."""
    replicas = ", ".join(f"'{demo_http(name)}'" for name in ("a", "b"))
    gw = gateway(f"servers:\n  web: {{endpoints: [{replicas}]}}\n")
    delivered, calls = anyio.run(listen_while_announcing, gw.mcp("web"), 10)
    assert {replica for _, replica in calls} == {"a", "b"}  # the calls were spread
    assert delivered, "no event reached the listen stream"
    home = dict(calls)[delivered[0]]
    assert delivered == [uri for uri, replica in calls if replica == home]


def test_listen_events_from_a_shared_stdio_process_reach_their_client(
    gateway: Callable[[str], RunningGateway],
) -> None:
    """The listen request gets a new id on the shared process; its events name that id and come back to
    the client with the id it sent (the SDK client matches them by it)."""
    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\n")
    delivered, calls = anyio.run(listen_while_announcing, gw.mcp("local"), 10)
    assert delivered == [uri for uri, _ in calls]
