"""Read a registry file into a validated `Registry` snapshot, or fail with every problem located.

Parsing, form recognition, `${VAR}` expansion and validation are all pure functions of (text, environ);
only `load_registry` touches the file system. Nothing here starts anything.

An entry whose only trouble is a `${VAR}` with no value is left out into `Registry.failed` instead of
failing the whole registry: one missing token must not stop the servers that do not use it. Validation
errors that such a value causes (an empty URL, an empty command) are its consequences, not other problems.
Anything else wrong, anywhere, is a `RegistryError` that lists every problem, unset variables included.
An unset variable's advice is worded for who reads it (`running`: a gateway that reloads its file, where a
variable set now needs a restart), in the error's problems and in `failed` alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mcpfleet.errors import Problem, RegistryError
from mcpfleet.masking import Masker, maskable
from mcpfleet.registry.checks import idle_rules
from mcpfleet.registry.expand import Unset
from mcpfleet.registry.forms import (
    CLIENT_ONLY_KEYS,
    KIND_KEYS,
    Form,
    RawEntry,
    closest,
    implied_transport,
    infer_type,
    read_document,
    suggest_id,
)
from mcpfleet.registry.model import (
    RESERVED_IDS,
    SERVER_ID,
    SERVER_TYPES,
    DockerServer,
    Gateway,
    HttpServer,
    KubernetesServer,
    Registry,
    Server,
)
from mcpfleet.registry.validation import ENTRY_KEYS, Checked, Located, check, spelling

# Keys some clients write that mcpfleet refuses with a reason rather than as unknown.
REFUSED_KEYS = {
    "envFile": "not read: mcpfleet loads no env files (a server started without their variables would fail"
    " later, far from here); copy the variables into 'env', or 'secret_env' for secrets",
}


def load_registry(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, running: bool = False
) -> Registry:
    """The registry at `path`, validated (`RegistryError` lists every problem). `running`: read by a gateway
    that is serving already (a reload), which words the advice for an unset `${VAR}` for it."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError([Problem(source, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError([Problem(source, "", f"cannot read the file: {exc}")]) from None
    return parse_registry(text, source, environ=os.environ if environ is None else environ, running=running)


def _unused_settings(server: Server) -> list[tuple[str, str]]:
    """Settings an entry gives that nothing reads with the rest of it: accepted, with a warning."""
    balancer = server.balancer if isinstance(server, HttpServer | DockerServer | KubernetesServer) else None
    if balancer is not None and balancer.hash_header is not None and balancer.strategy != "consistent_hash":
        return [
            (
                "balancer.hash_header",
                f"ignored: only strategy consistent_hash reads it, and this entry's strategy is {balancer.strategy}",
            )
        ]
    return []


def parse_registry(text: str, source: str, *, environ: Mapping[str, str], running: bool = False) -> Registry:
    document = read_document(_parse(text, source))
    located: list[Located] = list(document.problems)  # every problem, in file order
    blocking = bool(located)
    secrets: set[str] = set()  # what `${VAR}` took from the environment: masked in every message (masking.py)
    warnings = [f"{source}: {path}: {note}" for path, note in document.notes]

    def advice(unset: list[tuple[str, Unset]]) -> list[Located]:
        return [(path, reference.message(running=running)) for path, reference in unset]

    gateway = Gateway()
    # The section idle rules are looked for in: as validated, else as written (warnings show beside errors).
    judged: Any = document.gateway
    if document.gateway is not None:  # `gateway:` with nothing after it: the defaults (section 6.6)
        checked = check(Gateway, document.gateway, "gateway", environ)
        secrets |= checked.secrets
        located += advice(checked.unset) + checked.problems
        blocking = blocking or bool(checked.unset or checked.problems)
        warnings += [f"{source}: {path}: {note}" for path, note in checked.notes]
        if isinstance(checked.value, Gateway):
            gateway = checked.value
            judged = gateway.model_dump()

    servers: dict[str, Server] = {}
    failed: dict[str, str] = {}
    for raw in document.entries:
        outcome = _entry(raw, document.form, environ)
        secrets |= outcome.secrets
        warnings += [f"{source}: {path}: {note}" for path, note in outcome.notes]
        located += advice(outcome.unset) + outcome.problems
        if outcome.problems:
            blocking = True
        elif outcome.unset:
            failed[raw.server_id] = f"{source}: " + "; ".join(f"{p}: {m}" for p, m in advice(outcome.unset))
        elif outcome.server is not None:
            servers[raw.server_id] = outcome.server
            warnings += [f"{source}: {raw.path}.{path}: {note}" for path, note in _unused_settings(outcome.server)]

    ids = [raw.server_id for raw in document.entries if isinstance(raw.server_id, str)]
    for loc, message, _ in idle_rules(judged if isinstance(judged, Mapping) else {}, ids):
        if "${" in message:  # as written, not expanded (the section did not validate): no guess about it
            continue
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        warnings.append(f"{source}: gateway{where}: {message}")
    if gateway.auth.open_door(gateway.host):  # a warning: `serve --host` may name another bind
        warnings.append(
            f"{source}: gateway.host: {gateway.host!r} is not loopback and gateway.auth has no credentials: serve"
            " refuses to start there (exit 2); configure gateway.auth.api_keys or gateway.auth.jwt, or set"
            " gateway.auth.anonymous: true to serve every caller on purpose (docs/security.md)"
        )
    shown = Masker(secrets)
    if blocking:
        raise RegistryError(
            [Problem(source, path, shown(message)) for path, message in located],
            warnings=[shown(warning) for warning in warnings],
        )
    return Registry(
        source=source,
        gateway=gateway,
        servers=servers,
        failed={server_id: shown(message) for server_id, message in failed.items()},
        warnings=tuple(shown(warning) for warning in warnings),
        secrets=frozenset(value for value in secrets if maskable(value)),
    )


# --- one entry --------------------------------------------------------------------------------------------


def _entry(raw: RawEntry, form: Form, environ: Mapping[str, str]) -> Checked:
    if not isinstance(raw.server_id, str):
        return Checked(
            problems=[
                (
                    raw.path,
                    f"server id {raw.server_id!r} is not a string: YAML reads unquoted on, off, yes, no, true,"
                    " false and null, and numbers, as such; quote the id (e.g. 'off')",
                )
            ]
        )
    if not SERVER_ID.fullmatch(raw.server_id):
        hint = suggest_id(raw.server_id)
        return Checked(
            problems=[
                (
                    raw.path,
                    f"server id {raw.server_id!r} is not URL-safe: use at most 63 lowercase letters, digits,"
                    f" '.', '_' and '-', starting with a letter or digit (e.g. {hint!r})",
                )
            ]
        )
    if raw.server_id in RESERVED_IDS:
        return Checked(
            problems=[(raw.path, f"server id {raw.server_id!r} is reserved for the gateway's own endpoints")]
        )
    if not isinstance(raw.body, dict):
        return Checked(problems=[(raw.path, "a server entry must be a mapping of fields")])
    disabled = raw.body.get("disabled", False)
    if not isinstance(disabled, bool):
        return Checked(problems=[(raw.path + ".disabled", "must be true or false")])
    if disabled:
        return Checked(notes=[(raw.path, "left out: disabled is true")])

    outcome = Checked()
    body = {key: value for key, value in raw.body.items() if key != "disabled"}
    type_key = "type"
    if form == "mcpServers":
        body, type_key = _client_file_entry(raw.path, body, outcome.notes)
    if "id" in body:
        outcome.problems.append((raw.path + ".id", "unknown field (the server id is the entry's key)"))
        return outcome
    for key in [key for key in body if key in REFUSED_KEYS]:
        outcome.problems.append((f"{raw.path}.{key}", REFUSED_KEYS[key]))
        del body[key]

    kind, why = infer_type(body)
    if kind is None:
        # The type cannot be told; a misspelt key is the likely cause, so it is reported first.
        fixes: set[str] = set()
        for key in [key for key in body if key != "type" and key not in ENTRY_KEYS]:
            close = closest(key, ENTRY_KEYS)
            fixes.add(close or "")
            outcome.problems.append(
                (f"{raw.path}.{key}", "unknown field" + (f" (did you mean '{close}'?)" if close else ""))
            )
        if "type" in body or not KIND_KEYS & fixes:
            outcome.problems.append((f"{raw.path}.{type_key}" if "type" in body else raw.path, why or "unknown type"))
        return outcome

    transport = implied_transport(body)
    if transport is not None and "transport" not in body:
        body["transport"] = transport
    body["type"] = kind
    checked = check(SERVER_TYPES[kind], {**body, "id": raw.server_id}, raw.path, environ, spelling(body))
    checked.notes[:0] = outcome.notes
    checked.problems[:0] = outcome.problems
    return checked


def _client_file_entry(path: str, body: dict[str, Any], notes: list[Located]) -> tuple[dict[str, Any], str]:
    """An `mcpServers` entry without the keys only its client reads; Cline's `transportType` read as `type`.

    Returns the body and the key the type was written under (for error locations).
    """
    ignored = sorted(CLIENT_ONLY_KEYS & body.keys())
    if ignored:
        notes.append((path, f"ignored client-only field(s): {', '.join(ignored)}"))
    # `env: null` and `args: null`, as clients' files write them: none (section 6.6).
    body = {k: v for k, v in body.items() if k not in CLIENT_ONLY_KEYS and not (k in ("env", "args") and v is None)}
    if "transportType" not in body:
        return body, "type"
    declared = body.pop("transportType")
    if "type" in body:
        if body["type"] != declared:
            notes.append((path, f"'transportType' ignored: 'type' says {body['type']!r}"))
        return body, "type"
    body["type"] = declared
    return body, "transportType"


# --- parsing ---------------------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    pass


def _parse(text: str, source: str) -> Any:
    as_json = source.endswith(".json") or (not source.endswith((".yaml", ".yml")) and text.lstrip()[:1] == "{")
    try:
        return _parse_json(text) if as_json else _parse_yaml(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(
            [Problem(source, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}")]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise RegistryError([Problem(source, where, f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise RegistryError([Problem(source, "", f"invalid YAML: {exc}")]) from None
    except _DuplicateKeyError as exc:
        raise RegistryError([Problem(source, "", str(exc))]) from None


def _parse_json(text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise _DuplicateKeyError(f"duplicate key {key!r}: each server id (and field) may appear once")
            result[key] = value
        return result

    return json.loads(text, object_pairs_hook=no_duplicates)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise _DuplicateKeyError(f"line {line}: duplicate key {key!r}: each server id (and field) may appear once")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: builds plain data only
