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


@dataclass(frozen=True)
class Unset:
    """A reference with no value: `reference` as written (`${TOKEN}`), and whether it is VS Code's
    `${input:ID}` (which no environment can fill) rather than a variable."""

    reference: str
    vs_code_input: bool = False

    def message(self, *, running: bool = False) -> str:
        """What to do, worded for who reads it: `running` for a gateway that reloaded its file (a variable
        set now reaches it only by a restart), else for whoever starts the next process."""
        if self.vs_code_input:
            return (
                f"{self.reference} is a VS Code input, which mcpfleet cannot prompt for"
                " (write ${NAME} instead and set NAME in the environment)"
            )
        advice = SET_IT_AND_RESTART if running else SET_IT
        return f"{self.reference} is not set ({advice}, or write ${self.reference} for a literal)"


_TOKEN = re.compile(
    r"\$\$"
    r"|\$\{(?:(?:env:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?|input:(?P<input>[A-Za-z0-9_.-]+))\}"
    r"|\$\{[^}]*\}?"
)


@dataclass(frozen=True)
class Expansion:
    """The expanded text, the names it used, and what went wrong.

    `unset`: references with no value (expanded to ""). `problems`: malformed references (kept as written).
    `values`: what the environment gave (not defaults written in the file): what displays mask (masking.py).
    """

    text: str
    used: tuple[str, ...]
    unset: tuple[Unset, ...]
    problems: tuple[str, ...]
    values: tuple[str, ...] = ()


def expand(text: str, environ: Mapping[str, str]) -> Expansion:
    used: list[str] = []
    unset: list[Unset] = []
    problems: list[str] = []
    values: list[str] = []

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        if match.group("input") is not None:
            unset.append(Unset(whole, vs_code_input=True))
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
            unset.append(Unset(whole))
            return ""
        values.append(value)
        return value

    return Expansion(_TOKEN.sub(replace, text), tuple(used), tuple(unset), tuple(problems), tuple(values))
