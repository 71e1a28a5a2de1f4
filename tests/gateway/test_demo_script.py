"""The README's demo command: `make demo` runs scripts/demo.sh, which must keep working."""

from __future__ import annotations

import os
import subprocess

from support import ROOT, free_port


def test_demo_script_serves_the_demo_registry_through_the_gateway() -> None:
    env = {
        **os.environ,
        "DEMO_CHECK": "1",
        "DEMO_PORT": str(free_port()),
        "MCPFLEET_DEMO_PORT_A": str(free_port()),
        "MCPFLEET_DEMO_PORT_B": str(free_port()),
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "hello through the gateway" in result.stdout
    assert "counted down from 3" in result.stdout
    assert '"replica": "replica-' in result.stdout  # demo-http answered from an HTTP replica
    assert "/demo-http/mcp" in result.stdout
