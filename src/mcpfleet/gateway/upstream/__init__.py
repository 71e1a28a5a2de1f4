"""Upstreams: how the gateway reaches a server. `http` proxies bytes to replicas; `stdio` supervises processes."""
