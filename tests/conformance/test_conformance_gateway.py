"""The official conformance suite through the gateway: the fixture as an `http` backend and as a `stdio` one.

Together with test_conformance_direct.py this runs the suite against three targets; all three must pass
every active scenario.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support import RunningGateway, free_port, running
from test_conformance_direct import MIN_SCENARIOS, _load

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixture.py"


def assert_all_passed(url: str, out: Path) -> None:
    result = _load("run").run_suite(url, out)
    print(result.summary())
    assert len(result.scenarios) >= MIN_SCENARIOS, result.summary()
    assert [scenario.name for scenario in result.failed] == [], result.summary()
    assert result.warnings == 0, result.summary()


@pytest.mark.npm
def test_suite_through_gateway_to_http_backend(gateway: Callable[[str], RunningGateway], tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, str(FIXTURE), "http", "--host", "127.0.0.1", "--port", str(port)]
    with running(argv, port) as backend:
        gw = gateway(f"servers:\n  fixture: {{endpoint: '{backend}/mcp'}}\n")
        assert_all_passed(gw.mcp("fixture"), tmp_path / "http")


@pytest.mark.npm
def test_suite_through_gateway_to_stdio_backend(gateway: Callable[[str], RunningGateway], tmp_path: Path) -> None:
    gw = gateway(f"servers:\n  fixture: {{command: [{sys.executable}, '{FIXTURE}', stdio]}}\n")
    assert_all_passed(gw.mcp("fixture"), tmp_path / "stdio")
