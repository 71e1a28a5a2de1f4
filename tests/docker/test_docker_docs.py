"""docs/docker.md is executed: every `console` block runs, in order, against the real Docker engine and must
print what it shows (the page's format is read by `doc_examples`, shared with the gateway guide's test).

The page uses the default project, `mcpfleet`; this test runs it in a project of its own, of the same width
(so tables keep their layout), set as `$MCPFLEET_PROJECT`, and writes it back as `mcpfleet` in the output.
What differs from run to run is written back as the page shows it, in order of appearance: the n-th port
published on 127.0.0.1 (five digits, picked by the engine) that the output shows is the n-th such port the
page shows, and the same for the 8 hex digits that name a stdio session's container (`...-s-3f2a9c1d`).

A plain `mcpfleet serve --port 8000` is started by this test on a free port (`$GATEWAY`), and what it
printed at startup is compared with the block; `<!-- doc-test: stop 8000 -->` stops it as Ctrl-C would,
and waits until it has exited (its clean-up done). Titled code blocks (```` ```yaml title="mcpfleet.yaml" ````)
are written to the working directory when the page reaches them. Whatever of the project is left when the
test ends (a failed example, a gateway that did not stop) is removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doc_examples import Example, four_digit_port, matches, parse, report, run, tail, trimmed

from support import ROOT, wait_for_port

pytestmark = [pytest.mark.usefixtures("docker_images"), pytest.mark.timeout(240)]

DOC = ROOT / "docs" / "docker.md"
BIN = Path(sys.executable).parent
PAGE_PROJECT = "mcpfleet"
PAGE_GATEWAY_PORT = 8000
COMMAND_TIMEOUT = 90
STOP_TIMEOUT = 60
ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")
PUBLISHED = re.compile(r"127\.0\.0\.1:(\d{5})\b")
SESSION = re.compile(r"-s-([0-9a-f]{8})\b")


def project_name() -> str:
    """A project of this run, as wide as `mcpfleet`: `t<pid>-0`, padded with zeros (the form of
    `docker_project()`, whose numbers start at 1: the leak checks of concurrent test sessions tell it for
    another session's) when the pid has at most 5 digits, else `d` and the last 7 digits of the pid."""
    pid = str(os.getpid())
    if len(pid) <= 5:
        return f"t{pid}-{'0' * (6 - len(pid))}"
    return f"d{pid[-7:]}"


class InOrder:
    """Values that differ per run, written back as the page's: the n-th distinct value met in the actual
    output becomes the n-th distinct value of the page's expected output."""

    def __init__(self, pattern: re.Pattern[str], examples: list[Example]) -> None:
        self.pattern = pattern
        expected = "\n".join(line for example in examples for line in example.expected)
        self.page = list(dict.fromkeys(match.group(1) for match in pattern.finditer(expected)))
        self.seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        if value not in self.seen and len(self.seen) < len(self.page):
            self.seen[value] = self.page[len(self.seen)]
        return self.seen.get(value, value)

    def sub(self, text: str) -> str:
        return self.pattern.sub(lambda m: m.group(0).replace(m.group(1), self(m.group(1))), text)


class Guide:
    """The page's working directory, its environment, the gateways it starts, and the write-back of the
    output to the page's names."""

    def __init__(self, workdir: Path, examples: list[Example]) -> None:
        self.workdir = workdir
        self.project = project_name()
        self.gateway_port = four_digit_port(exclude=set())
        self.ports = InOrder(PUBLISHED, examples)
        self.sessions = InOrder(SESSION, examples)
        self.gateways: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: list[Path] = []
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "200",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
            "MCPFLEET_PROJECT": self.project,
            "GATEWAY": f"http://127.0.0.1:{self.gateway_port}",
        }
        self.env.pop("MCPFLEET_REGISTRY", None)

    def normalize(self, text: str) -> str:
        text = ADDRESS.sub(
            lambda m: f"127.0.0.1:{PAGE_GATEWAY_PORT}" if m.group(1) == str(self.gateway_port) else m.group(0), text
        )
        text = self.sessions.sub(self.ports.sub(text))
        return text.replace(self.project, PAGE_PROJECT)

    def write(self, files: dict[str, str]) -> None:
        for name, content in files.items():
            (self.workdir / name).write_text(content)

    def serve(self, example: Example) -> str:
        """Start the page's `mcpfleet serve ... --port 8000` on a free port; what it printed at startup."""
        argv = shlex.split(example.command)
        where = f"{DOC.name}:{example.line}"
        assert argv[argv.index("--port") + 1] == str(PAGE_GATEWAY_PORT), f"{where}: serve on --port 8000"
        assert PAGE_GATEWAY_PORT not in self.gateways, f"{where}: a gateway runs on 8000 already"
        argv[argv.index("--port") + 1] = str(self.gateway_port)
        printed, log = self.workdir / "serve.out", self.workdir / "serve.log"
        self.logs.append(log)
        shell = ["sh", "-c", f'exec "$@" > {shlex.quote(str(printed))} 2> {shlex.quote(str(log))}', "sh", *argv]
        process = subprocess.Popen(shell, cwd=self.workdir, env=self.env, start_new_session=True)
        self.gateways[PAGE_GATEWAY_PORT] = process
        wait_for_port(self.gateway_port, process, timeout=COMMAND_TIMEOUT)
        return printed.read_text()

    def step(self, example: Example, step: str) -> None:
        """A `doc-test:` comment: `stop 8000` is Ctrl-C in the gateway's terminal."""
        assert step == f"stop {PAGE_GATEWAY_PORT}", f"{DOC.name}:{example.line}: unknown doc-test step {step!r}"
        self.stop(PAGE_GATEWAY_PORT, signal.SIGINT)

    def stop(self, page_port: int, how: signal.Signals) -> None:
        process = self.gateways.pop(page_port)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, how)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            raise AssertionError(f"the gateway did not stop within {STOP_TIMEOUT} s of {how.name}") from None

    def close(self) -> None:
        """Stop the gateways left running, then remove whatever of the project is left."""
        for page_port in list(self.gateways):
            with contextlib.suppress(AssertionError):
                self.stop(page_port, signal.SIGTERM)
        label = f"label=mcpfleet.project={self.project}"
        for kind, listing, removal in (
            ("container", ["ps", "--all", "--quiet"], ["rm", "--force", "--volumes"]),
            ("network", ["network", "ls", "--quiet"], ["network", "rm"]),
            ("volume", ["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
        ):
            found = _docker(*listing, "--filter", label).split()
            if found:
                _docker(*removal, *found)
                print(f"removed {len(found)} {kind}(s) the page left in project {self.project}")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture
def guide(tmp_path: Path) -> Iterator[Guide]:
    examples, _ = parse(DOC.read_text(), DOC.name)
    found = Guide(tmp_path, examples)
    try:
        yield found
    finally:
        found.close()


def test_every_console_example_in_the_docker_guide(guide: Guide) -> None:
    examples, _ = parse(DOC.read_text(), DOC.name)
    assert examples, f"{DOC} has no ```console blocks: its examples would not be checked"
    assert examples[-1].command == "mcpfleet remove --all", "the page's last example must remove everything"
    failures: list[str] = []
    timings: list[tuple[float, int]] = []
    for example in examples:
        started = time.monotonic()
        guide.write(example.files)
        for step in example.steps:
            guide.step(example, step)
        if example.serve:
            problem, output = None, guide.serve(example)
        else:
            problem, output = run(example.command, cwd=guide.workdir, env=guide.env, timeout=COMMAND_TIMEOUT)
        timings.append((time.monotonic() - started, example.line))
        actual = trimmed(guide.normalize(output).splitlines())
        if problem is None and not matches(trimmed(example.expected), actual):
            problem = "output differs"
        if problem is not None:
            failures.append(report(DOC.name, example, actual, problem))
    slowest = ", ".join(f"line {line}: {seconds:.1f} s" for seconds, line in sorted(timings, reverse=True)[:3])
    logs = "".join(f"--- {log.name}, last lines:\n{tail(log)}\n" for log in guide.logs) if failures else ""
    assert not failures, (
        f"{len(failures)} of {len(examples)} examples failed (slowest: {slowest})\n\n" + "\n".join(failures) + logs
    )
    left = _docker("ps", "--all", "--quiet", "--filter", f"label=mcpfleet.project={guide.project}").split()
    assert not left, f"the page's last example left {len(left)} container(s) of its project"
