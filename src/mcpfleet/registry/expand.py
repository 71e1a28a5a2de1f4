"""`${VAR}` expansion of registry values from the environment. Pure: the environment is passed in.

Syntax: `${NAME}` is the variable's value, `${NAME:-default}` falls back to the default when the variable
is unset or empty, and `$$` is a literal `$`. `${env:NAME}` (VS Code, Cursor and Windsurf write it) is
`${NAME}`. A lone `$` not followed by `{` or `$` stays as it is, so shell-like text in arguments needs no
escaping.

Two kinds of trouble are kept apart, because the loader treats them apart: a reference that has no value
(an unset variable without a default, or VS Code's `${input:ID}`, which prompts a person) makes only its
entry unusable; a malformed reference is an error in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SET_IT = "set it in the environment"
# What a running gateway must be told instead: a reload reads the file again, never the process's environment.
SET_IT_AND_RESTART = "set it in the gateway's environment and restart it: a reload reads the file, not new variables"


def at_reload(message: str) -> str:
    """A problem's message as a running gateway's reload should say it (the advice for an unset variable)."""
    return message.replace(SET_IT, SET_IT_AND_RESTART)


_TOKEN = re.compile(
    r"\$\$"
    r"|\$\{(?:(?:env:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?|input:(?P<input>[A-Za-z0-9_.-]+))\}"
    r"|\$\{[^}]*\}?"
)


@dataclass(frozen=True)
class Expansion:
    """The expanded text, the names it used, and what went wrong.

    `unset`: references with no value (expanded to ""). `problems`: malformed references (kept as written).
    """

    text: str
    used: tuple[str, ...]
    unset: tuple[str, ...]
    problems: tuple[str, ...]


def expand(text: str, environ: Mapping[str, str]) -> Expansion:
    used: list[str] = []
    unset: list[str] = []
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        if match.group("input") is not None:
            unset.append(
                f"{whole} is a VS Code input, which mcpfleet cannot prompt for"
                " (write ${NAME} instead and set NAME in the environment)"
            )
            return ""
        name, default = match.group("name"), match.group("default")
        if name is None:
            problems.append(f"malformed reference {whole!r}: write ${{NAME}} or ${{NAME:-default}}, or $$ for '$'")
            return whole
        used.append(name)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            unset.append(f"{whole} is not set ({SET_IT}, or write ${whole} for a literal)")
            return ""
        return value

    return Expansion(_TOKEN.sub(replace, text), tuple(used), tuple(unset), tuple(problems))
