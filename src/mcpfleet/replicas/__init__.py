"""Where a server's replicas come from: sources that yield its replica set each time it changes.

The gateway balances across whatever a source yields; the registry's `endpoints` are the first source, and
the Docker and Kubernetes backends add theirs. A source adds addresses to a server the registry declares,
never servers.
"""

from mcpfleet.replicas.source import ReplicaAddress, ReplicaSource
from mcpfleet.replicas.static import MemorySource, StaticSource

__all__ = ["MemorySource", "ReplicaAddress", "ReplicaSource", "StaticSource"]
