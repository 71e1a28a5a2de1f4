"""Balancing new work across a server's replicas: `Balancer` (membership, health, choice) and its strategies."""

from mcpfleet.gateway.balancer.balancer import Balancer
from mcpfleet.gateway.balancer.replica import Replica

__all__ = ["Balancer", "Replica"]
