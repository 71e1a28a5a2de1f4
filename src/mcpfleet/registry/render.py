"""The normalized form of a registry, as `registry show` prints it and the golden tests snapshot it.

Secrets are masked here, once, so nothing that prints a registry can forget to: `secret_env` and `headers`
values, `env` values whose name looks like a credential, and passwords in URLs. Entries that failed (an
unset `${VAR}`) follow the servers under `failed`, with their error; the key is there only when some did,
so a registry without failures renders as it always has.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcpfleet.registry.model import Registry, Server

MASK = "***"
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE|CREDENTIAL|AUTH", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def normalized(registry: Registry, *, mask: bool = True) -> dict[str, Any]:
    gateway = registry.gateway.model_dump(mode="json")
    if mask and gateway["session_keys"]:
        gateway["session_keys"] = [MASK] * len(gateway["session_keys"])
    form: dict[str, Any] = {
        "gateway": gateway,
        "servers": {sid: server_dict(server, mask=mask) for sid, server in registry.servers.items()},
    }
    if registry.failed:
        form["failed"] = dict(registry.failed)  # messages name variables, never their values
    return form


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
        masked["endpoints"] = [{**e, "url": mask_url(e["url"])} for e in masked["endpoints"]]
    return masked


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostport}"))
