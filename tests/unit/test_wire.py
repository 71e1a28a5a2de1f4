"""The passthrough's HTTP client: the gateway running out of descriptors is not the replica's fault."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from mcpfleet.gateway.upstream.wire import ConnectFailed, OutOfDescriptors, Pool


def request_with_connect_error(error: OSError) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise error

        loop.create_connection = refuse  # type: ignore[method-assign]
        await Pool("http://127.0.0.1:9", 1.0).request("GET", "/mcp", [], b"", 1.0)

    asyncio.run(main())


def test_descriptor_exhaustion_is_its_own_error() -> None:
    with pytest.raises(OutOfDescriptors):
        request_with_connect_error(OSError(errno.EMFILE, "Too many open files"))


def test_a_refused_connection_is_a_connect_failure() -> None:
    with pytest.raises(ConnectFailed, match="Connection refused"):
        request_with_connect_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
