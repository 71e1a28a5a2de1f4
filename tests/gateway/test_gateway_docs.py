"""docs/gateway.md is executed: every `console` block runs against real gateways and must print what it shows.

A `console` block holds commands (`$ ` lines, continued by `> ` lines) each followed by its expected output.
Output is compared line by line, trailing whitespace ignored; a line `...` stands for any number of lines.
Every command must exit 0 (examples that show a failure end with `; echo "exit $?"`).

Plain `mcpfleet serve` commands are not run by `bash -c`: this test starts them, on free ports, in the order the
page shows them, and compares what each printed at startup with the block. The page's ports are mapped:
8000 is the `--demo` gateway (`$GATEWAY`), 8001 the gateway on `fleet.yaml` (`$FLEET`), whose content is the
page's ```` ```yaml title="fleet.yaml" ```` block, and 8101/8102 the two HTTP replicas of `demo-http`
(`mcpfleet-demo http ... --replica a` and `b`), which are started first, so `demo-http` answers over HTTP.
Actual ports in any output are written back as the page's ports before comparing.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mcpfleet.demo import DEMO_REGISTRY

from support import ROOT, demo_argv, running

DOC = ROOT / "docs" / "gateway.md"
BIN = Path(sys.executable).parent
DOC_PORTS = {"gateway": 8000, "fleet": 8001, "replica_a": 8101, "replica_b": 8102}
WILDCARD = "..."
COMMAND_TIMEOUT = 60
FENCE = re.compile(r"^```(\S*)(.*)$")
SERVE = re.compile(r"mcpfleet serve(\s+[\w./=-]+)+")
ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


@dataclass
class Example:
    line: int  # 1-based line of the `$ ` line in the page
    command: str
    expected: list[str] = field(default_factory=list)

    @property
    def serve(self) -> bool:
        """A plain `mcpfleet serve ...` (no shell syntax): a gateway this test starts, not a command it runs."""
        return SERVE.fullmatch(self.command) is not None


def parse(text: str) -> tuple[list[Example], dict[str, str]]:
    """The examples of every `console` block, in order, and the code blocks that carry a `title`."""
    examples: list[Example] = []
    titled: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        info, attributes = fence.group(1), fence.group(2)
        start = index + 1
        index = start
        while index < len(lines) and lines[index] != "```":
            index += 1
        body = lines[start:index]
        index += 1
        if title := re.search(r'title="([^"]+)"', attributes):
            titled[title.group(1)] = "\n".join(body) + "\n"
        if info != "console":
            continue
        current: Example | None = None
        for offset, line in enumerate(body):
            if line.startswith("$ "):
                current = Example(start + offset + 1, line[2:])
                examples.append(current)
            elif current is None:
                raise AssertionError(f"{DOC.name}:{start + offset + 1}: a console block must start with a `$ ` line")
            elif (line.startswith("> ") or line == ">") and not current.expected:
                current.command += "\n" + line[2:]
            else:
                current.expected.append(line)
    return examples, titled


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality where an expected `...` line matches any run of actual lines (none included)."""
    if not expected:
        return not actual
    if expected[0] == WILDCARD:
        return any(matches(expected[1:], actual[skip:]) for skip in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def trimmed(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_parser_reads_commands_continuations_and_output() -> None:
    page = (
        'Text.\n\n```yaml title="f.yaml"\na: 1\n```\n\n```console\n$ echo one\none\n$ python - <<EOF\n'
        "> print(2)\n> EOF\n2\n```\n\n```sh\n$ not run\n```\n"
    )
    examples, titled = parse(page)
    assert titled == {"f.yaml": "a: 1\n"}
    assert [(e.command, e.expected) for e in examples] == [
        ("echo one", ["one"]),
        ("python - <<EOF\nprint(2)\nEOF", ["2"]),
    ]
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "b"], ["a", "b"])
    assert not matches(["a", "...", "d"], ["a", "b"])
    assert not matches(["a"], ["a", "b"])


class Fleet:
    """The processes the page talks about, on free ports, and the mapping of their ports to the page's."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, titled: dict[str, str]) -> None:
        self.stack = stack
        self.workdir = workdir
        self.titled = titled
        self.ports: dict[str, int] = {}
        for name in DOC_PORTS:
            self.ports[name] = four_digit_port(exclude=set(self.ports.values()))
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "200",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
            "MCPFLEET_DEMO_PORT_A": str(self.ports["replica_a"]),
            "MCPFLEET_DEMO_PORT_B": str(self.ports["replica_b"]),
            "GATEWAY": f"http://127.0.0.1:{self.ports['gateway']}",
            "FLEET": f"http://127.0.0.1:{self.ports['fleet']}",
        }
        self.env.pop("MCPFLEET_REGISTRY", None)
        self.logs: list[Path] = []
        for name, replica in (("replica_a", "a"), ("replica_b", "b")):
            stack.enter_context(running(demo_argv(self.ports[name], replica), self.ports[name]))

    def normalize(self, text: str) -> str:
        """Actual ports back to the page's ports (all at once); the demo registry's install location to `...`."""
        page_port = {str(port): str(DOC_PORTS[name]) for name, port in self.ports.items()}
        text = ADDRESS.sub(lambda m: "127.0.0.1:" + page_port.get(m.group(1), m.group(1)), text)
        return text.replace(str(DEMO_REGISTRY.parent.parent.parent), WILDCARD)

    def serve(self, example: Example) -> str:
        """Start the page's `mcpfleet serve` command on a free port; returns what it printed at startup."""
        argv = shlex.split(example.command)
        assert "--port" in argv, f"{DOC.name}:{example.line}: give --port in `mcpfleet serve` examples"
        doc_port = int(argv[argv.index("--port") + 1])
        names = {port: name for name, port in DOC_PORTS.items()}
        assert doc_port in (DOC_PORTS["gateway"], DOC_PORTS["fleet"]), f"{DOC.name}:{example.line}: port 8000 or 8001"
        port = self.ports[names[doc_port]]
        argv[argv.index("--port") + 1] = str(port)
        if "--registry" in argv:
            name = argv[argv.index("--registry") + 1]
            assert name in self.titled, f'{DOC.name}:{example.line}: no ```yaml title="{name}"``` block on the page'
            (self.workdir / name).write_text(self.titled[name])
        printed, log = self.workdir / f"serve-{port}.out", self.workdir / f"serve-{port}.log"
        self.logs.append(log)
        shell = ["sh", "-c", f'exec "$@" > {shlex.quote(str(printed))} 2> {shlex.quote(str(log))}', "sh", *argv]
        self.stack.enter_context(running(shell, port, env=self.env, cwd=self.workdir))
        return printed.read_text()

    def run(self, example: Example) -> tuple[str | None, str]:
        """Run one command as a terminal would show it (stdout and stderr interleaved); (what went wrong, output)."""
        try:
            done = subprocess.run(
                ["bash", "-c", example.command],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
            return f"still running after {COMMAND_TIMEOUT} s", output
        return (f"exited {done.returncode}" if done.returncode else None), done.stdout


def four_digit_port(exclude: set[int]) -> int:
    """A free port below 10000, so that a URL keeps its length when its port is written back as the page's
    (tables are sized to their widest cell)."""
    for _ in range(200):
        port = random.randrange(2000, 10000)
        if port in exclude:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 2000 and 9999")


def report(example: Example, actual: list[str], why: str) -> str:
    diff = "\n".join(difflib.unified_diff(example.expected, actual, "page", "actual", lineterm=""))
    return f"{DOC.name}:{example.line}: {why}\n$ {example.command}\n{diff or '(no diff)'}\n"


@pytest.mark.timeout(300)
def test_every_console_example_in_the_gateway_guide(tmp_path: Path) -> None:
    examples, titled = parse(DOC.read_text())
    assert examples, f"{DOC} has no ```console blocks: its examples would not be checked"
    assert any(e.serve and "--demo" in e.command for e in examples), "the page must start a --demo gateway"
    failures: list[str] = []
    timings: list[tuple[float, int]] = []
    logs = ""
    with contextlib.ExitStack() as stack:
        fleet = Fleet(stack, tmp_path, titled)
        for example in examples:
            started = time.monotonic()
            if example.serve:
                problem, output = None, fleet.serve(example)
            else:
                problem, output = fleet.run(example)
            timings.append((time.monotonic() - started, example.line))
            actual = trimmed(fleet.normalize(output).splitlines())
            if problem is None and not matches(trimmed(example.expected), actual):
                problem = "output differs"
            if problem is not None:
                failures.append(report(example, actual, problem))
        if failures:  # what the gateways logged, to tell a changed output from a gateway that went away
            logs = "".join(f"--- {log.name}, last lines:\n{_tail(log)}\n" for log in fleet.logs)
    slowest = ", ".join(f"line {line}: {seconds:.1f} s" for seconds, line in sorted(timings, reverse=True)[:3])
    assert not failures, (
        f"{len(failures)} of {len(examples)} examples failed (slowest: {slowest})\n\n" + "\n".join(failures) + logs
    )


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"
