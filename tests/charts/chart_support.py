"""Running helm and kubernetes-validate for the chart tests (no pytest here).

helm is `build/tools/helm` (scripts/fetch-helm.sh, which `make test` runs) or `$HELM`; kubernetes-validate is
the one in the tests' own environment. Both work offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
MCP_SERVER = CHARTS / "mcp-server"
GATEWAY = CHARTS / "mcpfleet"
KUBERNETES_VERSION = "1.37.0"  # the newest schema kubernetes-validate 1.37 carries (offline)


def helm_path() -> Path | None:
    given = os.environ.get("HELM")
    path = Path(given) if given else ROOT / "build" / "tools" / "helm"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with its caches and config under a throwaway home, so nothing reads the user's repositories."""
    path = helm_path()
    assert path is not None
    env = {**os.environ, "HELM_CACHE_HOME": "/nonexistent-cache", "HELM_CONFIG_HOME": "/nonexistent-config"}
    env["HELM_DATA_HOME"] = "/nonexistent-data"
    done = subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}")
    return done


def template(
    chart: Path, *, release: str = "r", namespace: str = "ns", values: Sequence[Path] = (), sets: Sequence[str] = ()
) -> str:
    args: list[str | Path] = ["template", release, chart, "--namespace", namespace]
    for path in values:
        args += ["--values", path]
    for item in sets:
        args += ["--set", item]
    return helm(*args).stdout


def documents(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def validate(rendered: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict over the rendered objects."""
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    tool = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(tool)] if tool.exists() else [shutil.which("kubernetes-validate") or "kubernetes-validate"]
    return subprocess.run(
        [*command, "--strict", "--kubernetes-version", KUBERNETES_VERSION, "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ci_values(chart: Path) -> list[Path]:
    return sorted((chart / "ci").glob("*.yaml"))
