"""Run the official MCP conformance suite (`@modelcontextprotocol/conformance`, server mode) against a URL.

    python tests/conformance/run.py URL [--out DIR] [--scenario NAME]

prints `conformance: N passed, M failed` (scenarios) and the failing scenario/check names; the exit code is 0
only if every scenario passed. From Python, `run_suite(url)` returns a `Result` parsed from the suite's
per-check JSON (`-o DIR`). It runs the suite with the Node 22 installed under tests/node, whatever the cwd.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
NODE = NODE_MODULES / ".bin" / "node"
PACKAGE = NODE_MODULES / "@modelcontextprotocol" / "conformance"

# The suite names each result directory `server-<scenario>-<ISO timestamp with dashes>`.
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
_RUNNING = re.compile(r"^=== Running scenario: (?P<scenario>\S+) ===$", re.MULTILINE)
_SINGLE = re.compile(r"^Running client scenario '(?P<scenario>[^']+)'", re.MULTILINE)


@dataclass(frozen=True)
class Check:
    id: str
    name: str
    status: str
    """SUCCESS, FAILURE, WARNING, INFO or SKIPPED, as the suite reports it."""
    message: str = ""


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    checks: tuple[Check, ...]
    error: str = ""
    """Why the scenario has no checks, if it wrote none."""

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and self.failed_checks == 0

    def _count(self, status: str) -> int:
        return sum(check.status == status for check in self.checks)

    @property
    def passed_checks(self) -> int:
        return self._count("SUCCESS")

    @property
    def failed_checks(self) -> int:
        return self._count("FAILURE")

    @property
    def warnings(self) -> int:
        return self._count("WARNING")


@dataclass(frozen=True)
class Result:
    url: str
    scenarios: tuple[ScenarioResult, ...]
    exit_code: int
    """The suite's own exit code (1 on any failed check)."""
    seconds: float
    output: str
    """What the suite printed (stdout and stderr)."""

    @property
    def passed(self) -> list[ScenarioResult]:
        return [scenario for scenario in self.scenarios if scenario.passed]

    @property
    def failed(self) -> list[ScenarioResult]:
        return [scenario for scenario in self.scenarios if not scenario.passed]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and bool(self.scenarios) and not self.failed

    @property
    def passed_checks(self) -> int:
        return sum(scenario.passed_checks for scenario in self.scenarios)

    @property
    def failed_checks(self) -> int:
        return sum(scenario.failed_checks for scenario in self.scenarios)

    @property
    def warnings(self) -> int:
        return sum(scenario.warnings for scenario in self.scenarios)

    def summary(self) -> str:
        """The one-line summary, then one line per failing scenario/check and per warning."""
        lines = [
            f"conformance: {len(self.passed)} passed, {len(self.failed)} failed "
            f"({self.passed_checks} checks passed, {self.failed_checks} failed, {self.warnings} warnings; "
            f"suite exit code {self.exit_code}; {self.seconds:.1f} s; {self.url})"
        ]
        for scenario in self.scenarios:
            if scenario.error:
                lines.append(f"  FAILED {scenario.name}: {scenario.error}")
            for check in scenario.checks:
                if check.status in ("FAILURE", "WARNING"):
                    label = "FAILED" if check.status == "FAILURE" else "warning"
                    detail = f": {check.message}" if check.message else ""
                    lines.append(f"  {label} {scenario.name} / {check.id}{detail}")
        if not self.scenarios:
            lines.append("  the suite ran no scenario; its output:\n" + self.output)
        return "\n".join(lines)


def conformance_cli() -> Path:
    """The suite's CLI script, from its package.json `bin`."""
    package_json = PACKAGE / "package.json"
    if not package_json.exists() or not NODE.exists():
        raise FileNotFoundError(f"{PACKAGE} or {NODE} is missing: run `npm ci --prefix tests/node` (make test does)")
    bin_field: str | dict[str, str] = json.loads(package_json.read_text())["bin"]
    script = bin_field if isinstance(bin_field, str) else bin_field["conformance"]
    return PACKAGE / script


def _parse_checks(path: Path) -> tuple[Check, ...]:
    raw: list[dict[str, Any]] = json.loads(path.read_text())
    return tuple(
        Check(
            id=str(item.get("id", "")),
            name=str(item.get("name", "")),
            status=str(item.get("status", "")),
            message=str(item.get("errorMessage") or ""),
        )
        for item in raw
    )


def _collect(out_dir: Path, before: set[str], output: str) -> tuple[ScenarioResult, ...]:
    """One result per scenario the suite ran (in its order), from the result directories this run wrote."""
    found: dict[str, ScenarioResult] = {}
    for directory in sorted(out_dir.iterdir()):
        match = _RESULT_DIR.match(directory.name)
        if directory.name in before or not directory.is_dir() or match is None:
            continue
        name = match["scenario"]
        checks_file = directory / "checks.json"
        if checks_file.exists():
            found[name] = ScenarioResult(name, _parse_checks(checks_file))
        else:
            found[name] = ScenarioResult(name, (), error=f"no checks.json in {directory}")
    ran = _RUNNING.findall(output) or _SINGLE.findall(output)
    missing = "the suite wrote no result for this scenario"
    ordered = [found.pop(name) if name in found else ScenarioResult(name, (), error=missing) for name in ran]
    return (*ordered, *found.values())


def run_suite(
    url: str,
    out_dir: Path | None = None,
    *,
    scenario: str | None = None,
    suite: str = "active",
    timeout: float = 900,
) -> Result:
    """Run the suite (or one scenario) against `url`; per-check JSON goes to `out_dir` (a temp dir if None)."""
    with tempfile.TemporaryDirectory(prefix="conformance-") as scratch:
        results = Path(out_dir) if out_dir is not None else Path(scratch)
        results.mkdir(parents=True, exist_ok=True)
        before = {entry.name for entry in results.iterdir()}
        argv = [str(NODE), str(conformance_cli()), "server", "--url", url, "-o", str(results)]
        argv += ["--scenario", scenario] if scenario else ["--suite", suite]
        started = time.monotonic()
        completed = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
        seconds = time.monotonic() - started
        output = completed.stdout + completed.stderr
        return Result(url, _collect(results, before, output), completed.returncode, seconds, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the official MCP conformance suite against a server URL.")
    parser.add_argument("url", help="the server's Streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp")
    parser.add_argument("--out", type=Path, default=None, help="keep the per-check JSON in this directory")
    parser.add_argument("--scenario", default=None, help="run only this scenario")
    parser.add_argument("--suite", default="active", help="active (default), all or pending")
    parser.add_argument("--verbose", action="store_true", help="also print the suite's own output")
    args = parser.parse_args(argv)
    result = run_suite(args.url, args.out, scenario=args.scenario, suite=args.suite)
    if args.verbose:
        print(result.output)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
