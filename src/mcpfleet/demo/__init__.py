"""The demo MCP server and the built-in demo registry (`registry.yaml` beside this file)."""

from pathlib import Path

DEMO_REGISTRY = Path(__file__).with_name("registry.yaml")
