"""docs/gateway.md is executed: every `console` block runs against real gateways and must print what it shows.

The page's format (commands, expected output, `...` lines, titled files) is read by `doc_examples`, shared
with the Docker guide's test. Every command must exit 0 (examples that show a failure end with
`; echo "exit $?"`).

Plain `mcpfleet serve` commands are not run by `bash -c`: this test starts them, on free ports, in the order the
page shows them, and compares what each printed at startup with the block. The page's ports are mapped:
8000 is the `--demo` gateway (`$GATEWAY`), 8001 the gateway on `fleet.yaml` (`$FLEET`), whose content is the
page's ```` ```yaml title="fleet.yaml" ```` block, and 8101/8102 the two HTTP replicas of `demo-http`
(`mcpfleet-demo http ... --replica a` and `b`), which are started first, so `demo-http` answers over HTTP.
Actual ports in any output are written back as the page's ports before comparing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from doc_examples import Example, four_digit_port, matches, parse, report, run, tail, trimmed
from mcpfleet.demo import DEMO_REGISTRY

from support import ROOT, demo_argv, running

DOC = ROOT / "docs" / "gateway.md"
BIN = Path(sys.executable).parent
DOC_PORTS = {"gateway": 8000, "fleet": 8001, "replica_a": 8101, "replica_b": 8102}
COMMAND_TIMEOUT = 60
ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


def test_parser_reads_commands_continuations_and_output() -> None:
    page = (
        'Text.\n\n```yaml title="f.yaml"\na: 1\n```\n\n```console\n$ echo one\none\n$ python - <<EOF\n'
        "> print(2)\n> EOF\n2\n```\n\n```sh\n$ not run\n```\n"
        '<!-- doc-test: stop 8000 -->\n\n```yaml title="f.yaml"\na: 2\n```\n\n```console\n$ echo three\n```\n'
    )
    examples, titled = parse(page)
    assert titled == {"f.yaml": "a: 2\n"}
    assert [(e.command, e.expected, e.files, e.steps) for e in examples] == [
        ("echo one", ["one"], {"f.yaml": "a: 1\n"}, []),
        ("python - <<EOF\nprint(2)\nEOF", ["2"], {}, []),
        ("echo three", [], {"f.yaml": "a: 2\n"}, ["stop 8000"]),
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
        return text.replace(str(DEMO_REGISTRY.parent.parent.parent), "...")

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
        """Run one command as a terminal would show it; (what went wrong, output)."""
        return run(example.command, cwd=self.workdir, env=self.env, timeout=COMMAND_TIMEOUT)


@pytest.mark.timeout(300)
def test_every_console_example_in_the_gateway_guide(tmp_path: Path) -> None:
    examples, titled = parse(DOC.read_text(), DOC.name)
    assert examples, f"{DOC} has no ```console blocks: its examples would not be checked"
    assert any(e.serve and "--demo" in e.command for e in examples), "the page must start a --demo gateway"
    assert not [e.steps for e in examples if e.steps], "this test knows no `doc-test:` steps"
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
                failures.append(report(DOC.name, example, actual, problem))
        if failures:  # what the gateways logged, to tell a changed output from a gateway that went away
            logs = "".join(f"--- {log.name}, last lines:\n{tail(log)}\n" for log in fleet.logs)
    slowest = ", ".join(f"line {line}: {seconds:.1f} s" for seconds, line in sorted(timings, reverse=True)[:3])
    assert not failures, (
        f"{len(failures)} of {len(examples)} examples failed (slowest: {slowest})\n\n" + "\n".join(failures) + logs
    )
