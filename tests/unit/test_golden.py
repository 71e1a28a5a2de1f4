"""Golden tests: each example registry in examples/ is paired with its normalized form.

Set MCPFLEET_UPDATE_GOLDEN=1 to rewrite the snapshots after an intended change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcpfleet.registry import normalized, parse_registry

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENVIRON = {"GITHUB_TOKEN": "ghp_not_a_real_token", "PATH": "/usr/bin:/bin"}
SOURCES = sorted(
    p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json") and not p.name.endswith(".normalized.json")
)
# One example per client whose file mcpfleet reads as it is (docs/registry.md, "Client files").
CLIENT_FILES = ("claude_desktop", "claude_code", "cursor", "vscode", "windsurf", "cline")


def test_every_example_has_a_snapshot() -> None:
    assert len(SOURCES) >= 4
    for source in SOURCES:
        assert source.with_suffix(".normalized.json").exists(), f"{source.name} has no .normalized.json snapshot"


def test_every_client_file_layout_has_an_example() -> None:
    assert {f"{client}.json" for client in CLIENT_FILES} <= {source.name for source in SOURCES}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_example_normalizes_to_its_snapshot(source: Path) -> None:
    # Named as from the repository root: failed entries' messages name the file, and must not name this machine.
    registry = parse_registry(source.read_text(encoding="utf-8"), f"examples/{source.name}", environ=ENVIRON)
    form = normalized(registry)
    snapshot = source.with_suffix(".normalized.json")
    if os.environ.get("MCPFLEET_UPDATE_GOLDEN") == "1":
        snapshot.write_text(json.dumps(form, indent=2) + "\n")
    assert form == json.loads(snapshot.read_text())
    assert "ghp_not_a_real_token" not in json.dumps(form), "a secret leaked into the normalized form"
