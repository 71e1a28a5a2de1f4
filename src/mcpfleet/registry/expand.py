"""`${VAR}` expansion of registry values from the environment. Pure: the environment is passed in.

Syntax: `${NAME}` is the variable's value (an error when unset), `${NAME:-default}` falls back to the
default when the variable is unset or empty, and `$$` is a literal `$`. A lone `$` not followed by `{`
or `$` stays as it is, so shell-like text in arguments needs no escaping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


@dataclass(frozen=True)
class Expansion:
    """The expanded text, the names it used, and the problems met (unset or malformed references)."""

    text: str
    used: tuple[str, ...]
    problems: tuple[str, ...]


def expand(text: str, environ: Mapping[str, str]) -> Expansion:
    used: list[str] = []
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.append(f"malformed reference {whole!r}: write ${{NAME}} or ${{NAME:-default}}, or $$ for '$'")
            return whole
        used.append(name)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            problems.append(f"environment variable {name} is not set (use ${{{name}:-default}} for a fallback)")
            return ""
        return value

    return Expansion(_TOKEN.sub(replace, text), tuple(used), tuple(problems))
