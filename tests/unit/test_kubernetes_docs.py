"""docs/kubernetes.md is kept honest with no cluster: every registry snippet loads, every `mcpfleet` command
line parses against the CLI's own definition, the RBAC table is `deploy/kubernetes/rbac.py`, the adapter
command shown is the one the manifests give, and the `deploy --dry-run` example is run and prints what the
page shows (a dry run asks no cluster).

The page's format is read by `doc_examples` (shared with the executed guides): `console` blocks hold `$ `
commands followed by their output, `...` standing for any lines; titled blocks are the files they use.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml

from doc_examples import FENCE, matches, parse, report, run, trimmed
from mcpfleet.cli import app
from mcpfleet.deploy.container import container_spec
from mcpfleet.deploy.kubernetes import rbac
from mcpfleet.registry.loader import parse_registry
from mcpfleet.registry.model import KubernetesServer

from support import ROOT

DOC = ROOT / "docs" / "kubernetes.md"
VALUES_SCHEMA = ROOT / "charts" / "mcpfleet" / "values.schema.json"
BIN = Path(sys.executable).parent
VARIABLE = re.compile(r"\$\{(\w+)\}")
SEPARATORS = {";", "|", "&&", "||", "&"}


def text() -> str:
    return DOC.read_text()


def blocks(info: str) -> list[tuple[int, str]]:
    """(1-based line of the fence, body) of every fenced block whose info string is `info`."""
    found = []
    lines = text().splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None or lines[index] == "```":
            index += 1
            continue
        start = index
        index += 1
        while index < len(lines) and lines[index] != "```":
            index += 1
        if fence.group(1) == info:
            found.append((start + 1, "\n".join(lines[start + 1 : index]) + "\n"))
        index += 1
    return found


def environ_for(body: str) -> dict[str, str]:
    """Every `${VAR}` the snippet uses, set."""
    return {name: f"value-of-{name.lower()}" for name in VARIABLE.findall(body)}


def registry_snippets() -> list[tuple[int, str]]:
    return [(line, body) for line, body in blocks("yaml") if re.search(r"^\s*servers:", body, re.M)]


@pytest.mark.parametrize(("line", "body"), registry_snippets(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_every_registry_snippet_loads(line: int, body: str) -> None:
    data = yaml.safe_load(body)
    if "registry" in data:  # the gateway chart's values: the chart's schema, then the registry inside
        jsonschema.Draft7Validator(json.loads(VALUES_SCHEMA.read_text())).validate(data)
        body = yaml.safe_dump(data["registry"])
    loaded = parse_registry(body, f"{DOC.name}:{line}", environ=environ_for(body))
    assert not loaded.failed, loaded.failed
    assert all(isinstance(s, KubernetesServer) for s in loaded.servers.values())
    assert loaded.servers or loaded.gateway.discovery == "labels"  # servers, or a gateway that discovers them


def test_the_page_has_registry_snippets() -> None:
    assert len(registry_snippets()) >= 3


# --- command lines ----------------------------------------------------------------------------------------


def mcpfleet_argvs(line: str) -> list[list[str]]:
    """The argv (after `mcpfleet`) of each simple command of a shell line that runs mcpfleet; environment
    assignments before the program are skipped, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    found: list[list[str]] = []
    current: list[str] | None = None
    at_start = True
    for token in lexer:
        if token in SEPARATORS:
            current, at_start = None, True
        elif at_start:
            if re.fullmatch(r"\w+=.*", token):
                continue
            at_start = False
            if token == "mcpfleet" or token.endswith("/mcpfleet"):
                current = []
                found.append(current)
        elif current is not None:
            current.append(token)
    return found


def command_lines() -> list[tuple[int, str]]:
    """Every command line of the page's console blocks (`$ ` lines) and shell blocks, with its line."""
    examples, _ = parse(text(), str(DOC))
    found = [(example.line, example.command) for example in examples]
    for start, body in blocks("sh"):
        found += [(start + offset + 1, line) for offset, line in enumerate(body.splitlines())]
    return found


def commands() -> list[tuple[int, list[str]]]:
    return [(line, argv) for line, command in command_lines() for argv in mcpfleet_argvs(command)]


def test_the_page_runs_each_kubernetes_command() -> None:
    used = {argv[0] for _, argv in commands()}
    assert {"deploy", "scale", "status", "logs", "remove", "call"} <= used


@pytest.mark.parametrize(("line", "argv"), commands(), ids=lambda v: str(v) if isinstance(v, int) else " ".join(v))
def test_every_command_line_parses(line: int, argv: list[str]) -> None:
    """The subcommand exists and takes these arguments and options, with values of the right type."""
    root = typer.main.get_command(app)
    context = typer.Context(root, info_name="mcpfleet")
    command = root.get_command(context, argv[0])  # type: ignore[attr-defined]
    assert command is not None, f"{DOC.name}:{line}: no command {argv[0]!r}"
    command.make_context(argv[0], argv[1:], parent=context, resilient_parsing=False)


# --- the dry run ------------------------------------------------------------------------------------------


def dry_run_example() -> Any:
    examples, _ = parse(text(), str(DOC))
    (example,) = [e for e in examples if "deploy" in e.command and "--dry-run" in e.command]
    return example


def test_the_dry_run_prints_what_the_page_shows(tmp_path: Path) -> None:
    """Run with no kubeconfig anywhere: a dry run asks no cluster."""
    example = dry_run_example()
    assert example.files, "the dry run's registry must be a titled block before it"
    for name, body in example.files.items():
        (tmp_path / name).write_text(body)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MCPFLEET_", "KUBE"))}
    env |= environ_for("".join(example.files.values()))
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "HOME": str(tmp_path),
        "KUBECONFIG": str(tmp_path / "none"),
    }
    why, output = run(example.command, cwd=tmp_path, env=env, timeout=60)
    actual = trimmed(output.splitlines())
    assert why is None, report(DOC.name, example, actual, why)
    assert matches(trimmed(example.expected), actual), report(DOC.name, example, actual, "output differs")
    kinds = [line for line in actual if line.startswith("kind: ")]
    assert kinds == [line for line in example.expected if line.startswith("kind: ")]
    assert kinds == ["kind: Secret", "kind: Deployment", "kind: Service"]


# --- what the page states about the code ------------------------------------------------------------------


def test_the_adapter_command_shown_is_the_pods() -> None:
    (body,) = [body for _, body in blocks("yaml") if "mcpfleet, adapter" in body]
    shown = yaml.safe_load(body)["command"]
    (registry,) = [body for _, body in blocks("yaml") if "tool:" in body and "servers:" in body]
    entry = parse_registry(registry, DOC.name, environ=environ_for(registry)).servers["tool"]
    assert isinstance(entry, KubernetesServer)
    assert tuple(shown) == container_spec(entry).entrypoint


def test_the_rbac_table_is_rbac_py() -> None:
    section = text().split("## RBAC", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    shown = set()
    for row in rows:
        group, resource, verbs = (cell.strip().strip("`") for cell in row.strip("|").split("|")[:3])
        shown.add((group.strip('"'), resource, tuple(v.strip() for v in verbs.split(","))))
    rules = rbac.DISCOVERY + rbac.DEPLOYER + rbac.LABELLED_SERVICES + rbac.INSPECT
    assert shown == set(rules)
