"""What a model's fields hold, read from their annotations: the one walker (`_held`) the models' null rule,
the loader's messages and the cross-check walker share. Pure: it reads pydantic classes, never data.

A field holds a group of fields (a model), a list (a tuple annotation, of models or of values), a mapping
of names to values, or a single value; `None` in a union and `Annotated` are looked through.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

LIST_FORMS = "YAML `[a, b]` or `- a` lines"

Held = Literal["model", "list", "mapping"] | None


def _held(annotation: Any) -> tuple[Held, type[BaseModel] | None]:
    """(what the field holds, the model of its groups: the model itself, or a list's items)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _held(kept[0]) if len(kept) == 1 else (None, None)
    if origin is Annotated:
        return _held(get_args(annotation)[0])
    if origin in (tuple, list):
        item = get_args(annotation)[0] if get_args(annotation) else None
        return "list", _held(item)[1] if item is not None else None
    if origin in (Mapping, dict):
        return "mapping", None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return None, None


def shape(annotation: Any) -> type[BaseModel] | Literal["list", "mapping"] | None:
    """What a field holds: a model (a group of fields), a list, a mapping of names to values, or None for a
    single value."""
    held, model = _held(annotation)
    return model if held == "model" else held


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The model of the groups a field holds (`Pool` for `pool`, `AccessRule` for `access`), or None."""
    return _held(annotation)[1]


def nullable(annotation: Any) -> bool:
    """Whether `None` is one of the field's values (`X | None`)."""
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def accepted_keys(model: type[BaseModel]) -> list[str]:
    """Every key a file may write in a mapping of this model (`id` is the entry's key, never a field)."""
    keys = [name for name in model.model_fields if name != "id"]
    for cls in model.__mro__:
        keys += [key for key in vars(cls).get("other_keys", ()) if key not in keys]
    return keys


def field_names(model: type[BaseModel]) -> str:
    """The keys a mapping of `model` takes, required ones first and marked: `issuer (required), jwks_url, ...`."""
    keys = accepted_keys(model)
    required = [key for key in keys if key in model.model_fields and model.model_fields[key].is_required()]
    return ", ".join([*(f"{key} (required)" for key in required), *(key for key in keys if key not in required)])


def empty_message(annotation: Any, what: str = "the key") -> str | None:
    """The error for a null where a group, list or mapping goes (None for a single value)."""
    held, model = _held(annotation)
    if held == "list":
        return f"empty: give a list ({LIST_FORMS}; `[]` for none) or remove {what}"
    if held == "mapping":
        return f"empty: give its NAME: value pairs (`{{}}` for none) or remove {what}"
    if model is not None:
        return f"empty: give its fields ({field_names(model)}) or remove {what}"
    return None


def model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model of the mapping at `loc` under `model` (`("pool",)` -> Pool, `("endpoints", "0")` -> Endpoint)."""
    current: type[BaseModel] = model
    for part in loc:
        if part.isdigit():
            continue
        field = current.model_fields.get(part)
        found = model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        current = found
    return current
