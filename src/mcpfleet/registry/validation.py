"""Expand and validate one mapping of a registry (an entry, or the gateway section) into located problems.

Problems are (path in the document, message), with the path in the user's spelling (`cmd`, `url`,
`serverUrl` as written). An unknown key, at any level, gets the closest key its own mapping accepts. A
`${VAR}` with no value is kept apart from other problems (`Checked.unset`, each an `Unset` that words its
advice for whoever reads it), and validation errors it
causes (an empty URL, an empty command, a port that is not a number) are dropped: they are its
consequences, and the loader decides what an entry with only unset variables becomes.

Messages are the project's, not pydantic's: errors are translated by type (`_message`), in words a registry's
author uses (a list, a mapping of fields, a whole number), and never name a model class. Checks between
fields (`cross_checks` of each model, checks.py) run in the same round as the field errors, on the values
as validated (as written when validation failed), each located at the field it is about; one at or above
a field with an error of its own is dropped; their warnings go to `Checked.notes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from mcpfleet import masking
from mcpfleet.registry.checks import CROSS_CHECKED, Finding
from mcpfleet.registry.expand import Unset, expand
from mcpfleet.registry.fields import LIST_FORMS, accepted_keys, empty_message, field_names, model_at, shape
from mcpfleet.registry.forms import closest
from mcpfleet.registry.model import SERVER_TYPES, Server

Located = tuple[str, str]  # (path in the document, message)

# Every key some entry type accepts: the suggestions for a key when the entry's type cannot be told.
ENTRY_KEYS = sorted({key for model in SERVER_TYPES.values() for key in accepted_keys(model)})
# The field a spelling fills (`url` fills `endpoints`): a missing field that an unknown key's suggestion
# would fill is not reported a second time.
_FILLS = {"cmd": "command", "args": "command", "endpoint": "endpoints", "url": "endpoints", "serverUrl": "endpoints"}
# Pydantic's error types, by what the user wrote wrong; anything else keeps pydantic's words without its
# "Input should" ("should be greater than 0", "should be 'text' or 'json'").
_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "missing required field",
    "list_type": f"should be a list ({LIST_FORMS})",
    "tuple_type": f"should be a list ({LIST_FORMS})",
    "set_type": f"should be a list ({LIST_FORMS})",
    "dict_type": "should be a mapping of NAME: value pairs",
    "string_type": "should be a string (quote it if YAML reads it as a number, true/false or null)",
    "int_type": "should be a whole number",
    "int_parsing": "should be a whole number",
    "int_from_float": "should be a whole number, without a fraction",
    "float_type": "should be a number",
    "float_parsing": "should be a number",
    "bool_type": "should be true or false",
    "bool_parsing": "should be true or false",
}
_SUBJECT = re.compile(r"^(Input|Value|List|Tuple|Set|String|Dictionary|Data) should ")


@dataclass
class Checked:
    """A validated value (None when invalid), its unset `${VAR}`s, its other problems, and notes.
    `secrets`: the values `${VAR}` took from the environment (what displays of it mask)."""

    value: BaseModel | None = None
    unset: list[tuple[str, Unset]] = field(default_factory=list)
    problems: list[Located] = field(default_factory=list)
    notes: list[Located] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    @property
    def server(self) -> Server | None:
        return self.value if isinstance(self.value, Server) else None


def check(
    model: type[BaseModel], data: Any, prefix: str, environ: Mapping[str, str], renames: Mapping[str, str] | None = None
) -> Checked:
    """Expand and validate one mapping; validation errors that an unset variable explains are dropped."""
    checked = Checked()
    renames = renames or {}
    empty: dict[str, str] = {}
    expanded = _expand_tree(data, prefix, environ, checked, empty)
    unset_paths = [path for path, _ in checked.unset]
    with masking.validating(checked.secrets):  # a message built below masks each value whole (masking.py)
        _validate(checked, model, expanded, prefix, renames, empty, unset_paths)
    return checked


def _validate(
    checked: Checked,
    model: type[BaseModel],
    expanded: Any,
    prefix: str,
    renames: Mapping[str, str],
    empty: Mapping[str, str],
    unset_paths: list[str],
) -> None:
    try:
        checked.value = model.model_validate(expanded, context={CROSS_CHECKED: True})
    except ValidationError as exc:
        for path, message in _validation_problems(exc, prefix, model, renames):
            if path in empty:  # the value is "" because its variable is: say that, not "too short"
                message = f"{empty[path]} is set to an empty value in the environment: give it the value"
            if not _explained_by(path, unset_paths, prefix):
                checked.problems.append((path, message))
    # The values as the models read them ('yes' is true, `${A}` expanded); as written when they did not pass.
    judged = checked.value.model_dump() if checked.value is not None else expanded
    errors = [path for path, _ in checked.problems]
    cross: list[Located] = []
    for loc, message, warning in _cross_checks(model, judged, ()):
        path = _location(prefix, tuple(str(part) for part in loc), renames)
        if warning:
            checked.notes.append((path, message))
        elif not _explained_by(path, unset_paths, prefix) and not _at_or_above(path, errors):
            cross.append((path, message))
    if cross:
        checked.value = None
        checked.problems += cross


def _cross_checks(model: type[BaseModel], data: Any, loc: tuple[str | int, ...]) -> list[Finding]:
    """Every model's `cross_checks` on the mapping it validates, anywhere below `data`, located from the top."""
    if not isinstance(data, Mapping):
        return []
    checks = getattr(model, "cross_checks", None)
    found = (
        [Finding((*loc, *finding.loc), finding.message, finding.warning) for finding in checks(data)] if checks else []
    )
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        held = shape(field.annotation) if field is not None else None
        inner = model_at(model, (key,)) if field is not None else None
        if inner is None:
            continue
        if held == "list" and isinstance(value, list | tuple):
            for index, item in enumerate(value):
                found += _cross_checks(inner, item, (*loc, key, index))
        elif held is inner:
            found += _cross_checks(inner, value, (*loc, key))
    return found


def _at_or_above(path: str, errors: Sequence[str]) -> bool:
    """Whether a field error is at `path` or below it (two short keys alike: "shorter than 16" says enough)."""
    return any(error == path or error.startswith((path + ".", path + "[")) for error in errors)


def _expand_tree(value: Any, path: str, environ: Mapping[str, str], checked: Checked, empty: dict[str, str]) -> Any:
    """`value` with every `${VAR}` expanded; records in `checked` the unset references, the malformed ones and
    the values taken (`secrets`), and in `empty` the strings that are empty only because their variables are
    (path -> as written)."""
    if isinstance(value, str):
        result = expand(value, environ)
        checked.unset += [(path, reference) for reference in result.unset]
        checked.problems += [(path, message) for message in result.problems]
        checked.secrets.update(result.values)
        if value and not result.text and result.used and not result.unset:
            empty[path] = value
        return result.text
    if isinstance(value, dict):
        return {key: _expand_tree(item, f"{path}.{key}", environ, checked, empty) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_tree(item, f"{path}[{index}]", environ, checked, empty) for index, item in enumerate(value)]
    return value


def _explained_by(path: str, unset_paths: Sequence[str], root: str) -> bool:
    """Whether an error at `path` is a consequence of a value left empty: at it, inside it, or in a mapping
    that holds it (below the entry itself, whose errors are about more than one field)."""
    for unset in unset_paths:
        if path == unset or path.startswith((unset + ".", unset + "[")):
            return True
        if path != root and unset.startswith((path + ".", path + "[")):
            return True
    return False


def spelling(body: dict[str, Any]) -> dict[str, str]:
    """How the user spelled the fields the models rename, so errors name the field as written."""
    renames = {}
    if "cmd" in body:
        renames["command"] = "cmd"
    for single in ("endpoint", "url", "serverUrl"):
        if single in body:
            renames["endpoints[0]"] = single
    return renames


def _validation_problems(
    exc: ValidationError, prefix: str, model: type[BaseModel], renames: Mapping[str, str]
) -> list[Located]:
    """Pydantic's errors located in the user's spelling: unknown keys first, each with the closest accepted
    key of its own mapping, and without a 'missing' error for the field such a suggestion names."""
    unknown: list[Located] = []
    others: list[Located] = []
    suggested: set[tuple[str, ...]] = set()
    errors = [
        (tuple(str(part) for part in error["loc"] if not str(part).startswith("function-")), error)
        for error in exc.errors(include_url=False)
    ]
    for loc, error in errors:
        if error["type"] == "extra_forbidden":
            if len(loc) == 1 and loc[0] in ENTRY_KEYS and model in SERVER_TYPES.values():
                # A field of another entry type (`endpoints` on a stdio entry): say so, not "did you mean" itself.
                types = sorted(kind for kind, other in SERVER_TYPES.items() if loc[0] in accepted_keys(other))
                entry_type = next((kind for kind, other in SERVER_TYPES.items() if other is model), "this")
                unknown.append(
                    (
                        _location(prefix, loc, renames),
                        f"applies only to {_listed(types)} entries, and this entry is {entry_type}",
                    )
                )
                continue
            hint = _suggestion(model, loc)
            if hint is not None:
                suggested.add((*loc[:-1], _FILLS.get(hint, hint) if len(loc) == 1 else hint))
            unknown.append(
                (_location(prefix, loc, renames), "unknown field" + (f" (did you mean '{hint}'?)" if hint else ""))
            )
    for loc, error in errors:
        if error["type"] == "extra_forbidden" or (error["type"] == "missing" and loc in suggested):
            continue
        others.append((_location(prefix, loc, renames), _message(error, model, loc)))
    return unknown + others


def _message(error: ErrorDetails, model: type[BaseModel], loc: tuple[str, ...]) -> str:
    """What is wrong, in the registry's words: a mapping that is null or is not a mapping names the fields
    it takes; a type by what to write; anything else in pydantic's words without its subject."""
    kind = error["type"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        inner = model_at(model, loc)
        if error["input"] is None and inner is not None:
            item = bool(loc) and loc[-1].isdigit()
            return empty_message(inner, "the item" if item else "the key") or ""
        if inner is not None and kind != "dict_type":
            short_form = getattr(inner, "short_form", None)
            other = f"{short_form} or " if short_form else ""
            return f"should be {other}a mapping of fields ({field_names(inner)})"
    message = _FRIENDLY.get(kind, error["msg"])
    return _SUBJECT.sub("should ", message.removeprefix("Value error, ")).replace(" after validation", "")


def _suggestion(model: type[BaseModel], loc: tuple[str, ...]) -> str | None:
    parent = model_at(model, loc[:-1])
    if parent is None:
        return None
    hint = closest(loc[-1], accepted_keys(parent))
    if hint is None and len(loc) == 1 and model in SERVER_TYPES.values():
        hint = closest(loc[-1], ENTRY_KEYS)  # `endpionts` in a stdio entry: the user meant an http entry
    return hint


def _location(prefix: str, loc: tuple[str, ...], renames: Mapping[str, str]) -> str:
    location = ""
    for part in loc:
        location += f"[{part}]" if part.isdigit() else f".{part}"
    location = location.lstrip(".")
    for ours, theirs in renames.items():
        if location == ours or location.startswith((ours + ".", ours + "[")):
            location = theirs + location[len(ours) :]
    return f"{prefix}.{location}" if location else prefix


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
