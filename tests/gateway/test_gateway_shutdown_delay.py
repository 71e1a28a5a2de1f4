"""`gateway.shutdown_delay`: after SIGTERM, `/readyz` answers 503 while the gateway still serves, then it
stops (Plan Document 9.15; the chart's readiness probe relies on it to leave its Service before the drain)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from support import free_port, wait_for_port


def test_readiness_turns_before_serving_stops(tmp_path: Path) -> None:
    port = free_port()
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"gateway: {{shutdown_delay: 3}}\nservers:\n  time: {{type: stdio, command: [{sys.executable}, -m,"
        " mcpfleet.demo, stdio]}\n"
    )
    argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, timeout=60)
        with httpx2.Client(timeout=10) as http:
            check(http, url, process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    assert process.returncode == 0


def check(http: httpx2.Client, url: str, process: subprocess.Popen[bytes]) -> None:
    assert http.get(f"{url}/readyz").status_code == 200
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    deadline = signalled + 2.5
    answers = []
    while time.monotonic() < deadline:
        answers.append((http.get(f"{url}/readyz").status_code, http.get(f"{url}/healthz").status_code))
        if answers[-1][0] == 503:
            break
        time.sleep(0.05)
    assert answers[-1] == (503, 200), answers  # not ready, yet alive and answering
    assert http.get(f"{url}/servers").status_code == 200
    # Then it stops: the port closes once the delay has passed.
    stopped = False
    for _ in range(200):
        try:
            http.get(f"{url}/healthz")
        except httpx2.TransportError:
            stopped = True
            break
        time.sleep(0.05)
    assert stopped and time.monotonic() - signalled >= 2.5
    process.wait(timeout=30)
