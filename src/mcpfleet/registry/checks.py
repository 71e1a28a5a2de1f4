"""Checks between fields of the registry: problems no single field shows (an API key name or value used
twice, `anonymous: true` beside credentials, an access rule naming a key that is not there), and warnings
for settings accepted that cannot take effect (a principal no caller can have, a `servers` pattern that
matches no server of the file).

When they run: the loader (validation.py `check`) validates a mapping with `CROSS_CHECKED` in the context,
then runs these on the values as validated (`model_dump()`) when validation passed, or on the data as
written (after `${VAR}` expansion) when it failed, reading values as the models would (`'yes'` is true), so
they come in the same round as the field errors; a finding at or above a field that has its own error is
dropped (its own error says more). A model built in code, without that context, runs them in its
after-validator and raises the first error (`raise_first`).

How findings are located: each `Finding.loc` is below the mapping checked (`("api_keys", 2, "name")`); the
loader prefixes the mapping's own place. Never shows a key's value. This module imports nothing of the
registry's models (model.py imports it), so it reads plain mappings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from pydantic import TypeAdapter, ValidationError, ValidationInfo

# The validation context under which the loader runs the checks itself (located, with the field errors).
CROSS_CHECKED = "mcpfleet.cross_checked"
# The principal of a caller the gateway asked for no credentials (gateway/identity.py: `Identity.principal`).
ANONYMOUS = "anonymous"

_BOOL = TypeAdapter(bool)


class Finding(NamedTuple):
    """A problem between fields: where (below the mapping checked), what, and whether only a warning."""

    loc: tuple[str | int, ...]
    message: str
    warning: bool = False


def cross_checked(info: ValidationInfo) -> bool:
    """Whether the caller runs the checks itself (the loader), so an after-validator need not."""
    return isinstance(info.context, dict) and info.context.get(CROSS_CHECKED) is True


def raise_first(findings: Iterable[Finding]) -> None:
    """For an after-validator: the first problem (not warning) as a ValueError, located in its message."""
    for finding in findings:
        if not finding.warning:
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in finding.loc)
            raise ValueError(f"{where.lstrip('.')}: {finding.message}" if where else finding.message)


def digest(key: str) -> str:
    """An API key's SHA-256 as the registry keeps it (lowercase hex of its UTF-8 bytes)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _items(value: Any) -> list[tuple[int, Mapping[str, Any]]]:
    """The mappings of a list, with their indexes (anything else is skipped: its own error says why)."""
    if not isinstance(value, list | tuple):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, Mapping)]


def _strings(value: Any) -> list[tuple[int, str]]:
    if not isinstance(value, list | tuple):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, str)]


def _true(value: Any) -> bool:
    """Whether the models read `value` as true (`true`, `'yes'`, `"true"`, `1`, an expanded `${A}`)."""
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return False


def auth_findings(auth: Mapping[str, Any]) -> list[Finding]:
    """`gateway.auth`: each api key name and each key used once (the later one is located, the earlier named
    by index, never a key's value); `anonymous: true` only where no credentials are asked."""
    findings = []
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    keys = _items(auth.get("api_keys"))
    for index, key in keys:
        name = key.get("name")
        if isinstance(name, str) and name in names:
            findings.append(
                Finding(
                    ("api_keys", index, "name"),
                    f"api key name {name!r} is used twice (also api_keys[{names[name]}]): names identify keys"
                    " in logs and rules",
                )
            )
        elif isinstance(name, str):
            names[name] = index
        value, sha256 = key.get("key"), key.get("sha256")
        hashed = digest(value) if isinstance(value, str) and value else sha256 if isinstance(sha256, str) else None
        if hashed is not None and hashed in digests:
            first = digests[hashed]
            holder = next((f" ({other.get('name')!r})" for i, other in keys if i == first), "")
            findings.append(
                Finding(
                    ("api_keys", index),
                    f"the same key as api_keys[{first}]{holder}: each holder needs a key of its own",
                )
            )
        elif hashed is not None:
            digests[hashed] = index
    if _true(auth.get("anonymous")) and (keys or isinstance(auth.get("jwt"), Mapping)):
        findings.append(
            Finding(
                ("anonymous",),
                "true serves callers without credentials, and api_keys or jwt asks them for some: keep one or the"
                " other",
            )
        )
    return findings


def access_findings(gateway: Mapping[str, Any]) -> list[Finding]:
    """`gateway.access` against `gateway.auth`: a `key:` principal naming no api key is an error; a principal
    no caller can have with this `auth` (`sub:` or `scope:` without `jwt`, a `group:` no key has without
    `jwt`, `anonymous` where credentials are asked and no route is `open`) is a warning. Nothing is said of
    principals when `auth` or its `api_keys` cannot be read (their own errors say why)."""
    auth = gateway.get("auth") or {}
    if not isinstance(auth, Mapping) or not isinstance(auth.get("api_keys") or (), list | tuple):
        return []
    keys = _items(auth.get("api_keys"))
    names = {key["name"] for _, key in keys if isinstance(key.get("name"), str)}
    groups = {group for _, key in keys for _, group in _strings(key.get("groups"))}
    jwt = isinstance(auth.get("jwt"), Mapping)
    # On the `open` routes (`/`, `/servers`) a caller without credentials is `anonymous`, and the rules
    # filter what it sees (gateway/app.py `_visible`): there the principal matters even when auth is asked.
    opened = bool(_strings(auth.get("open")))
    findings = []
    for index, rule in _items(gateway.get("access")):
        for at, principal in _strings(rule.get("principals")):
            loc = ("access", index, "principals", at)
            kind, _, name = principal.partition(":")
            if kind == "key" and name and name not in names:
                known = ", ".join(sorted(names)) or "none"
                findings.append(Finding(loc, f"{principal!r} names no key in gateway.auth.api_keys (keys: {known})"))
            elif kind in ("sub", "scope") and name and not jwt:
                what = "subjects" if kind == "sub" else "scopes"
                findings.append(
                    Finding(
                        loc,
                        f"{principal!r} can never match: {what} come from JWTs, and gateway.auth.jwt is not set",
                        warning=True,
                    )
                )
            elif kind == "group" and name and not jwt and name not in groups:
                findings.append(
                    Finding(
                        loc,
                        f"{principal!r} can never match: no key in gateway.auth.api_keys has group {name!r},"
                        " and gateway.auth.jwt (whose tokens carry groups) is not set",
                        warning=True,
                    )
                )
            elif principal == ANONYMOUS and (keys or jwt) and not opened:
                findings.append(
                    Finding(
                        loc,
                        f"{ANONYMOUS!r} can never match: gateway.auth asks every caller for credentials"
                        " (api_keys or jwt) and opens no route (auth.open), so no caller is anonymous",
                        warning=True,
                    )
                )
    return findings


def idle_rules(gateway: Mapping[str, Any], ids: Sequence[str]) -> list[Finding]:
    """Warnings for access rules' server patterns that match no id the file names (disabled and failed
    entries count), since servers come and go; none with `discovery: labels`, which serves ids no entry
    names. `gateway`: the validated section (`Gateway.model_dump()`); located below it."""
    if gateway.get("discovery") == "labels":
        return []
    return [
        Finding(
            ("access", index, "servers", at),
            f"{pattern!r} matches no server in this registry: it reaches nothing until a server it matches is added",
            warning=True,
        )
        for index, rule in _items(gateway.get("access"))
        for at, pattern in _strings(rule.get("servers"))
        if pattern != "*" and not any(fnmatchcase(server_id, pattern) for server_id in ids)
    ]
