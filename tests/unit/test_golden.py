"""Golden tests: each example registry in examples/ is paired with its normalized form.

Set MCPFLEET_UPDATE_GOLDEN=1 to rewrite the snapshots after an intended change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mcpfleet.registry import load_registry, normalized

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENVIRON = {"GITHUB_TOKEN": "ghp_not_a_real_token", "PATH": "/usr/bin:/bin"}
SOURCES = sorted(
    p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json") and not p.name.endswith(".normalized.json")
)


def test_every_example_has_a_snapshot() -> None:
    assert len(SOURCES) >= 4
    for source in SOURCES:
        assert source.with_suffix(".normalized.json").exists(), f"{source.name} has no .normalized.json snapshot"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_example_normalizes_to_its_snapshot(source: Path) -> None:
    form = normalized(load_registry(source, environ=ENVIRON))
    snapshot = source.with_suffix(".normalized.json")
    if os.environ.get("MCPFLEET_UPDATE_GOLDEN") == "1":
        snapshot.write_text(json.dumps(form, indent=2) + "\n")
    assert form == json.loads(snapshot.read_text())
    assert "ghp_not_a_real_token" not in json.dumps(form), "a secret leaked into the normalized form"
