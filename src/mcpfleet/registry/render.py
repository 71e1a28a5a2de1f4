"""The normalized form of a registry, as `registry show` prints it and the golden tests snapshot it.

Secrets are masked here, once, so nothing that prints a registry can forget to: `secret_env` and `headers`
values, `env` values whose name looks like a credential, passwords and query values in URLs, and every
value a `${VAR}` took from the environment, wherever it landed (`Registry.secrets`, masking.py). Entries that failed (an
unset `${VAR}`) follow the servers under `failed`, with their error; the key is there only when some did,
so a registry without failures renders as it always has.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mcpfleet.masking import MASK, Masker, masked, shown_url
from mcpfleet.registry.model import DockerServer, HttpServer, KubernetesServer, Registry, Server, StdioServer

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE|CREDENTIAL|AUTH", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def normalized(registry: Registry, *, mask: bool = True) -> dict[str, Any]:
    gateway = registry.gateway.model_dump(mode="json")
    if mask and gateway["session_keys"]:
        gateway["session_keys"] = [MASK] * len(gateway["session_keys"])
    if mask and gateway["public_url"]:
        gateway["public_url"] = shown_url(gateway["public_url"])
    form: dict[str, Any] = {
        "gateway": gateway,
        "servers": {sid: server_dict(server, mask=mask) for sid, server in registry.servers.items()},
    }
    if registry.failed:
        form["failed"] = dict(registry.failed)  # messages name variables, never their values
    return masked(form, Masker(registry.secrets)) if mask else form


def target(server: Server, masker: Callable[[str], str]) -> str:
    """Where an entry is reached, as listings show it (`mcpfleet servers`): its MCP URLs (`shown_url`), or
    its command, or its image or chart; with `masker` (a `Masker` of `Registry.secrets`, or
    `masking.mask`) applied, so no `${VAR}` value shows."""
    shown = ""
    if isinstance(server, HttpServer):
        shown = ", ".join(
            shown_url(server.mcp_url(e) if server.transport != "sse" else server.sse_url(e)) for e in server.endpoints
        )
        if server.command:
            shown += f" (else stdio: {' '.join(server.command)})"
    elif isinstance(server, StdioServer):
        shown = " ".join(server.command)
    elif isinstance(server, DockerServer | KubernetesServer):
        shown = server.image or getattr(server, "chart", "") or ""
    return masker(shown)


def server_dict(server: Server, *, mask: bool = True) -> dict[str, Any]:
    data = server.model_dump(mode="json", exclude={"id"})
    ordered = {"type": data.pop("type"), **data}
    return mask_secrets(ordered) if mask else ordered


def mask_secrets(entry: dict[str, Any]) -> dict[str, Any]:
    masked = dict(entry)
    for key in ("secret_env", "headers"):
        if masked.get(key):
            masked[key] = dict.fromkeys(masked[key], MASK)
    if masked.get("env"):
        masked["env"] = {k: MASK if is_secret_name(k) else v for k, v in masked["env"].items()}
    if masked.get("endpoints"):
        masked["endpoints"] = [{**e, "url": shown_url(e["url"])} for e in masked["endpoints"]]
    return masked
