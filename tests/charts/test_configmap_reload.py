"""The gateway reloads a registry mounted from a ConfigMap when the kubelet updates it, without a restart.

A ConfigMap volume is a directory the kubelet writes atomically: the files sit in a timestamped directory
(`..2026_11_30_...`), the symbolic link `..data` points at it, and each key is a link through it
(`registry.yaml -> ..data/registry.yaml`). An update writes a new timestamped directory, points a new link
`..data_tmp` at it, renames that over `..data` (the one atomic step) and removes the old directory: the file
`registry.yaml` itself is never written, and its link never changes. The test does exactly that to a running
`mcpfleet serve` (a process of its own) and shows the new server served, twice in a row.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2

from support import ACCEPT, INIT, free_port, running, wait_for

KEY = "registry.yaml"


class ConfigMapVolume:
    """A directory laid out and updated as the kubelet's atomic writer does (`pkg/volume/util/atomic_writer.go`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = 0
        path.mkdir()

    def write(self, content: str) -> None:
        self.generation += 1
        stamped = f"..2026_11_30_05_00_00.{self.generation:09d}"
        (self.path / stamped).mkdir()
        (self.path / stamped / KEY).write_text(content)
        data = self.path / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamped, self.path / "..data_tmp")
        os.rename(self.path / "..data_tmp", data)  # the atomic swap
        if not (self.path / KEY).is_symlink():
            os.symlink(f"..data/{KEY}", self.path / KEY)
        if old is not None:
            shutil.rmtree(self.path / old)


def _registry(server_id: str, url: str) -> str:
    return f"servers:\n  {server_id}:\n    url: {url}/mcp\n"


def _initialize(gateway: str, server_id: str) -> int:
    with contextlib.suppress(httpx2.HTTPError):
        return httpx2.post(f"{gateway}/{server_id}/mcp", json=INIT, headers=ACCEPT, timeout=10).status_code
    return 0


def test_a_configmap_update_is_served_without_a_restart(tmp_path: Path, demo_http: Callable[[str], str]) -> None:
    first, second = demo_http("first"), demo_http("second")
    volume = ConfigMapVolume(tmp_path / "etc-mcpfleet")
    volume.write(_registry("one", first))
    port = free_port()
    argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(volume.path / KEY), "--port", str(port)]
    with running(argv, port) as gateway:
        assert _initialize(gateway, "one") == 200

        volume.write(_registry("two", second))
        wait_for(lambda: _initialize(gateway, "two") == 200)
        assert _initialize(gateway, "one") == 404  # gone with the old generation

        volume.write(_registry("three", first) + _registry("four", second).removeprefix("servers:\n"))
        wait_for(lambda: _initialize(gateway, "three") == 200 and _initialize(gateway, "four") == 200)
        servers = httpx2.get(f"{gateway}/", timeout=10).json()["servers"]
        assert sorted(server["id"] for server in servers) == ["four", "three"]
        assert sorted(p.name for p in volume.path.iterdir()) == ["..2026_11_30_05_00_00.000000003", "..data", KEY]
