"""mcpfleet: one gateway, one registry and one CLI for many MCP servers."""

__version__ = "0.1.0"
