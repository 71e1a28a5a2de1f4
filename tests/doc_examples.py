"""What the executed guides share: reading a page's examples, comparing their output, running a command.

A guide's ```` ```console ```` blocks hold commands (`$ ` lines, continued by `> ` lines) each followed by its
expected output. Output is compared line by line, trailing whitespace ignored; a line `...` stands for any
number of lines. Every command must exit 0 (examples that show a failure end with `; echo "exit $?"`).

Besides the examples, a page carries:

- code blocks with a `title` (```` ```yaml title="fleet.yaml" ````): files the examples use. Each example
  lists in `files` those written on the page since the example before it, so a page can show a file, then
  a newer version of it, in the order a reader meets them;
- comments `<!-- doc-test: ... -->`, unseen on the rendered page: instructions to the test that stand for
  what a reader does outside the shell of the examples (such as Ctrl-C in another terminal), listed in the
  `steps` of the example after them.

Used by `tests/gateway/test_gateway_docs.py` (docs/gateway.md) and `tests/docker/test_docker_docs.py`
(docs/docker.md).
"""

from __future__ import annotations

import difflib
import random
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

WILDCARD = "..."
FENCE = re.compile(r"^```(\S*)(.*)$")
SERVE = re.compile(r"mcpfleet serve(\s+[\w./=-]+)+")
STEP = re.compile(r"^<!-- doc-test: (.+?) -->$")


@dataclass
class Example:
    line: int  # 1-based line of the `$ ` line in the page
    command: str
    expected: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # titled blocks since the previous example: name -> text
    steps: list[str] = field(default_factory=list)  # `doc-test:` comments since the previous example

    @property
    def serve(self) -> bool:
        """A plain `mcpfleet serve ...` (no shell syntax): a gateway the test starts, not a command it runs."""
        return SERVE.fullmatch(self.command) is not None


def parse(text: str, page: str = "page") -> tuple[list[Example], dict[str, str]]:
    """The examples of every `console` block, in order, and the code blocks that carry a `title` (the last
    one of each name)."""
    examples: list[Example] = []
    titled: dict[str, str] = {}
    files: dict[str, str] = {}
    steps: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if step := STEP.match(lines[index]):
            steps.append(step.group(1))
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
            titled[title.group(1)] = files[title.group(1)] = "\n".join(body) + "\n"
        if info != "console":
            continue
        current: Example | None = None
        for offset, line in enumerate(body):
            if line.startswith("$ "):
                current = Example(start + offset + 1, line[2:], files=files, steps=steps)
                files, steps = {}, []
                examples.append(current)
            elif current is None:
                raise AssertionError(f"{page}:{start + offset + 1}: a console block must start with a `$ ` line")
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
    """Lines without trailing whitespace (a `\\r` of HTTP headers included), and no blank lines at the end."""
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run(command: str, *, cwd: Path, env: dict[str, str], timeout: float) -> tuple[str | None, str]:
    """Run one command with bash as a terminal would show it (stdout and stderr interleaved); returns what
    went wrong (None when it exited 0) and the output."""
    try:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        return f"still running after {timeout:g} s", output
    return (f"exited {done.returncode}" if done.returncode else None), done.stdout


def report(page: str, example: Example, actual: list[str], why: str) -> str:
    diff = "\n".join(difflib.unified_diff(example.expected, actual, "page", "actual", lineterm=""))
    return f"{page}:{example.line}: {why}\n$ {example.command}\n{diff or '(no diff)'}\n"


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


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"
