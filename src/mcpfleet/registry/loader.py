"""Read a registry file into a validated `Registry` snapshot, or fail with every problem located.

Parsing, form recognition, `${VAR}` expansion and validation are all pure functions of (text, environ);
only `load_registry` touches the file system. Nothing here starts anything.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mcpfleet.errors import Problem, RegistryError
from mcpfleet.registry.expand import expand
from mcpfleet.registry.forms import (
    CLIENT_ONLY_KEYS,
    RawEntry,
    implied_transport,
    infer_type,
    read_document,
    suggest_id,
)
from mcpfleet.registry.model import RESERVED_IDS, SERVER_ID, SERVER_TYPES, Gateway, Registry, Server


def load_registry(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Registry:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError([Problem(source, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError([Problem(source, "", f"cannot read the file: {exc}")]) from None
    return parse_registry(text, source, environ=os.environ if environ is None else environ)


def parse_registry(text: str, source: str, *, environ: Mapping[str, str]) -> Registry:
    problems: list[Problem] = []

    def report(location: str, message: str) -> None:
        problems.append(Problem(source, location, message))

    doc = _parse(text, source)
    document = read_document(doc)
    for location, message in document.problems:
        report(location, message)

    gateway = Gateway()
    if document.gateway is not None:
        raw_gateway = _expand_tree(document.gateway, "gateway", environ, report)
        try:
            gateway = Gateway.model_validate(raw_gateway)
        except ValidationError as exc:
            _report_validation(exc, "gateway", report)

    servers: dict[str, Server] = {}
    warnings: list[str] = []
    for raw in document.entries:
        if not SERVER_ID.fullmatch(raw.server_id):
            hint = suggest_id(raw.server_id)
            report(
                raw.path,
                f"server id {raw.server_id!r} is not URL-safe: use at most 63 lowercase letters, digits,"
                f" '.', '_' and '-', starting with a letter or digit (e.g. {hint!r})",
            )
            continue
        if raw.server_id in RESERVED_IDS:
            report(raw.path, f"server id {raw.server_id!r} is reserved for the gateway's own endpoints")
            continue
        if not isinstance(raw.body, dict):
            report(raw.path, "a server entry must be a mapping of fields")
            continue
        if document.form == "mcpServers":
            raw = _client_file_entry(raw, source, warnings)
        disabled = raw.body.get("disabled", False)
        if not isinstance(disabled, bool):
            report(raw.path + ".disabled", "must be true or false")
            continue
        if disabled:
            continue
        kind, why = infer_type(raw.body)
        if kind is None:
            report(raw.path + (".type" if "type" in raw.body else ""), why or "unknown type")
            continue
        if "id" in raw.body:
            report(raw.path + ".id", "unknown field (the server id is the entry's key)")
            continue
        kept = {k: v for k, v in raw.body.items() if k != "disabled"}
        body = _expand_tree(kept, raw.path, environ, report)
        body["type"] = kind
        transport = implied_transport(raw.body)
        if transport is not None and "transport" not in body:
            body["transport"] = transport
        try:
            servers[raw.server_id] = SERVER_TYPES[kind].model_validate({**body, "id": raw.server_id})  # type: ignore[assignment]
        except ValidationError as exc:
            _report_validation(exc, raw.path, report, SERVER_TYPES[kind], _spelling(raw.body))

    if problems:
        raise RegistryError(problems)
    return Registry(source=source, gateway=gateway, servers=servers, warnings=tuple(warnings))


def _client_file_entry(raw: RawEntry, source: str, warnings: list[str]) -> RawEntry:
    """An `mcpServers` entry without the keys only its client reads; Cline's `transportType` read as `type`."""
    body = dict(raw.body)
    ignored = sorted(CLIENT_ONLY_KEYS & body.keys())
    if ignored:
        warnings.append(f"{source}: {raw.path}: ignored client-only field(s): {', '.join(ignored)}")
    if "transportType" in body:
        declared = body.pop("transportType")
        if "type" in body and body["type"] != declared:
            warnings.append(f"{source}: {raw.path}: 'transportType' ignored: 'type' says {body['type']!r}")
        body.setdefault("type", declared)
    return RawEntry(raw.server_id, raw.path, {k: v for k, v in body.items() if k not in CLIENT_ONLY_KEYS})


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


# --- expansion and validation ----------------------------------------------------------------------------


def _expand_tree(value: Any, path: str, environ: Mapping[str, str], report: Any) -> Any:
    if isinstance(value, str):
        result = expand(value, environ)
        for message in result.problems:
            report(path, message)
        return result.text
    if isinstance(value, dict):
        return {key: _expand_tree(item, f"{path}.{key}", environ, report) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_tree(item, f"{path}[{index}]", environ, report) for index, item in enumerate(value)]
    return value


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "missing required field",
}


def _spelling(body: dict[str, Any]) -> dict[str, str]:
    """How the user spelled the fields the models rename, so errors name the field as written."""
    renames = {}
    if "cmd" in body:
        renames["command"] = "cmd"
    for single in ("endpoint", "url"):
        if single in body:
            renames["endpoints[0]"] = single
    return renames


def _report_validation(
    exc: ValidationError,
    prefix: str,
    report: Any,
    model: type[BaseModel] = Gateway,
    renames: Mapping[str, str] | None = None,
) -> None:
    accepted = [*model.model_fields, "cmd", "args", "endpoint", "url"]
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
        location = ""
        for part in loc:
            location += f"[{part}]" if part.isdigit() else f".{part}"
        location = location.lstrip(".")
        for ours, theirs in (renames or {}).items():
            if location == ours or location.startswith(ours + ".") or location.startswith(ours + "["):
                location = theirs + location[len(ours) :]
        message = _FRIENDLY.get(error["type"], error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and len(loc) == 1:
            close = difflib.get_close_matches(loc[0], accepted, n=1)
            message += f" (did you mean '{close[0]}'?)" if close else ""
        report(f"{prefix}.{location}" if location else prefix, message)
