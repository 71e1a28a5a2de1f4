"""What `registry validate` tells a registry's author (issue 12, a new user's trial of the gateway's security
settings): a key with nothing after it is an error, never "off"; messages in the registry's words, never
pydantic's or a class name; checks between fields located at the field and run with the field errors;
access rules that can never match refused or warned about; URL fields checked at load.

Cases are generated from the models where the rule is general (every group, list and mapping field of the
gateway section and of every entry type), so a field added later is covered without a new case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from mcpfleet.errors import RegistryError
from mcpfleet.gateway.identity import ANONYMOUS, Identity
from mcpfleet.gateway.policy.access import Access
from mcpfleet.registry import model as models
from mcpfleet.registry import parse_registry
from mcpfleet.registry.fields import model_in, nullable, shape
from mcpfleet.registry.model import (
    SERVER_TYPES,
    AccessRule,
    ApiKey,
    Auth,
    Endpoint,
    Gateway,
    Registry,
    Volume,
)

KEY_A = "a-long-random-key-0001"
KEY_B = "b-long-random-key-0002"


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml", environ=environ or {})
    return [str(p) for p in caught.value.problems]


def load(text: str) -> Registry:
    return parse_registry(text, "reg.yaml", environ={})


def dump(document: dict[str, Any]) -> str:
    return json.dumps(document)  # JSON is YAML: null stays null, the loader reads it as YAML by content


# --- 1. a key with nothing after it -------------------------------------------------------------------------

# The smallest valid item of each list of groups, so a field inside one can be left empty alone.
ITEMS: dict[type[BaseModel], dict[str, Any]] = {
    AccessRule: {"principals": ["*"]},
    ApiKey: {"name": "k", "key": KEY_A},
    Endpoint: {"url": "http://h"},
    Volume: {"source": "/a", "target": "/b"},
}
ENTRIES: dict[str, dict[str, Any]] = {
    "stdio": {"command": ["x"]},
    "http": {"endpoints": ["http://h"]},
    "docker": {"type": "docker", "image": "i"},
    "kubernetes": {"type": "kubernetes", "image": "i", "port": 8080},
}


def empty_keys(
    model: type[BaseModel], base: dict[str, Any], path: str, refused: bool
) -> Iterator[tuple[dict[str, Any], str]]:
    """(document part, path) for every group, list and mapping field below `model` left empty (null) that
    the rule of section 6.6 refuses (`refused`) or accepts as its default: refused where None is not one of
    the field's values, or the field is in its model's `never_null`."""
    for name, field in model.model_fields.items():
        held = shape(field.annotation)
        if held is None or name == "id":
            continue
        if refused == (name in getattr(model, "never_null", ()) or not nullable(field.annotation)):
            yield {**base, name: None}, f"{path}.{name}"
        inner = model_in(field.annotation)
        if inner is None:
            continue
        if held == "list":
            for part, where in empty_keys(inner, ITEMS[inner], f"{path}.{name}[0]", refused):
                yield {**base, name: [part]}, where
        else:
            for part, where in empty_keys(inner, {}, f"{path}.{name}", refused):
                yield {**base, name: part}, where


def entry_cases(refused: bool) -> list[tuple[str, dict[str, Any], str]]:
    return [
        (kind, part, where)
        for kind in SERVER_TYPES
        for part, where in empty_keys(SERVER_TYPES[kind], ENTRIES[kind], "servers.a", refused)
        if where != "servers.a.type"
    ]


GATEWAY_CASES = list(empty_keys(Gateway, {}, "gateway", refused=True))
ENTRY_CASES = entry_cases(refused=True)
GATEWAY_DEFAULTS = list(empty_keys(Gateway, {}, "gateway", refused=False))
ENTRY_DEFAULTS = entry_cases(refused=False)


def test_the_generated_cases_cover_the_fields_of_the_trial() -> None:
    refused = {where for _, where in GATEWAY_CASES} | {where for _, _, where in ENTRY_CASES}
    defaults = {where for _, where in GATEWAY_DEFAULTS} | {where for _, _, where in ENTRY_DEFAULTS}
    # Null would open access or drop a protection: refused, although None is the default of some.
    for where in ["gateway.auth.jwt", "gateway.auth.api_keys", "gateway.access", "gateway.access[0].tools"]:
        assert where in refused and where not in defaults
    # Null is the field's own default (no limit): accepted as it was before the plain messages.
    for where in ["gateway.limits.rate_per_principal", "gateway.limits.rate_per_server", "servers.a.args"]:
        assert where in defaults and where not in refused
    paths = refused | defaults
    for where in [
        "gateway.auth",
        "gateway.auth.jwt",
        "gateway.auth.api_keys",
        "gateway.auth.api_keys[0].groups",
        "gateway.access[0].tools",
        "gateway.limits.rate_per_principal",
        "gateway.limits.rate_per_server",
        "gateway.logging",
        "gateway.tracing",
        "servers.a.pool",
        "servers.a.env",
        "servers.a.security",
        "servers.a.resources",
    ]:
        assert where in paths


@pytest.mark.parametrize(("part", "where"), GATEWAY_CASES, ids=[where for _, where in GATEWAY_CASES])
def test_an_empty_key_in_the_gateway_section_is_an_error_naming_it(part: dict[str, Any], where: str) -> None:
    found = problems(dump({"servers": {"a": {"command": ["x"]}}, "gateway": part}))
    assert any(p.startswith(f"reg.yaml: {where}: empty: give ") for p in found), found


@pytest.mark.parametrize(
    ("kind", "part", "where"), ENTRY_CASES, ids=[f"{kind}:{where}" for kind, _, where in ENTRY_CASES]
)
def test_an_empty_key_in_an_entry_is_an_error_naming_it(kind: str, part: dict[str, Any], where: str) -> None:
    found = problems(dump({"servers": {"a": part}}))
    assert any(p.startswith(f"reg.yaml: {where}: empty: give ") for p in found), found


@pytest.mark.parametrize(("part", "where"), GATEWAY_DEFAULTS, ids=[where for _, where in GATEWAY_DEFAULTS])
def test_a_null_where_none_is_the_default_in_the_gateway_section_means_it(part: dict[str, Any], where: str) -> None:
    reg = load(dump({"servers": {"a": {"command": ["x"]}}, "gateway": part}))
    assert reg.gateway == Gateway.model_validate(part)  # the same as the model built in code
    assert reg.gateway.model_dump() == Gateway().model_dump() or "access" in where


@pytest.mark.parametrize(
    ("kind", "part", "where"), ENTRY_DEFAULTS, ids=[f"{kind}:{where}" for kind, _, where in ENTRY_DEFAULTS]
)
def test_a_null_where_none_is_the_default_in_an_entry_means_it(kind: str, part: dict[str, Any], where: str) -> None:
    reg = load(dump({"servers": {"a": part}}))
    field = where.removeprefix("servers.a.").split(".")[0].split("[")[0]
    assert getattr(reg.servers["a"], field) == getattr(
        load(dump({"servers": {"a": ENTRIES[kind]}})).servers["a"], field
    )


def test_an_empty_jwt_does_not_serve_without_authentication() -> None:
    # The trial's registry: it loaded as valid, and the gateway then asked nobody for credentials.
    assert problems("servers: {}\ngateway:\n  auth:\n    jwt:\n") == [
        "reg.yaml: gateway.auth.jwt: empty: give its fields (issuer (required), jwks_url, audience, algorithms,"
        " leeway, groups_claim, scopes_claim, jwks_refresh, jwks_min_refresh, required_scopes) or remove the key"
    ]
    # The model refuses it too, for a Gateway made in code.
    with pytest.raises(ValueError, match="empty: give its fields"):
        Gateway.model_validate({"auth": {"jwt": None}})
    # Left out, it is off; written, it is checked.
    assert load("servers: {}\ngateway:\n  auth: {}\n").gateway.auth.jwt is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("servers: {}\ngateway:\n  access:\n", "gateway.access: empty: give a list"),
        ("servers: {}\ngateway:\n  auth:\n    api_keys:\n", "gateway.auth.api_keys: empty: give a list"),
        ("servers: {}\ngateway:\n  access:\n  - principals:\n", "gateway.access[0].principals: empty:"),
        ("servers: {}\ngateway:\n  access:\n  - {principals: ['*'], servers: }\n", "gateway.access[0].servers: empty:"),
        ("servers: {}\ngateway:\n  access:\n  - principals: ['*']\n    tools:\n", "gateway.access[0].tools: empty:"),
        ("servers: {}\ngateway:\n  auth: {api_keys: [null]}\n", "gateway.auth.api_keys[0]: empty: give its fields"),
        ("servers:\n  a: {command: [x], env:}\n", "servers.a.env: empty: give its NAME: value pairs"),
    ],
)
def test_empty_sections_lists_and_items_say_what_to_write(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_null_single_values_keep_their_documented_meaning() -> None:
    # A null single value is a value ("no limit"), not a missing group: these stay accepted.
    reg = load(
        "servers:\n  a: {command: [x], pool: {max_starting: null}}\n"
        "gateway:\n  limits: {sessions_per_principal: null, max_stream_duration: null, rate_per_principal: null,"
        " rate_per_server: {rps: 5, burst: null}}\n"
    )
    assert reg.gateway.limits.sessions_per_principal is None and reg.gateway.limits.max_stream_duration is None
    assert reg.gateway.limits.rate_per_principal is None  # unlimited, as before the plain messages
    assert reg.gateway.limits.rate_per_server is not None and reg.gateway.limits.rate_per_server.capacity == 5
    assert reg.servers["a"].pool.max_starting is None  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["servers: {}\ngateway:\n", "a: {command: [x]}\ngateway:\n"])
def test_a_gateway_key_with_nothing_under_it_is_the_defaults(text: str) -> None:
    assert load(text).gateway == Gateway()


def test_the_clients_env_null_and_args_null_are_none() -> None:
    reg = load('{"mcpServers": {"a": {"command": "x", "args": null, "env": null}}}')
    assert reg.servers["a"].argv == ("x",) and reg.servers["a"].env == {}  # type: ignore[union-attr]


# --- 2. no library jargon -----------------------------------------------------------------------------------

CLASS_NAMES = {
    name for name, value in vars(models).items() if isinstance(value, type) and issubclass(value, BaseModel)
} - {"BaseModel"}
JARGON = re.compile(r"Input should|valid dictionary|instance of|valid tuple|after validation|Value error")


def wrong_values(model: type[BaseModel], base: dict[str, Any], path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """(document part, path) for every field below `model` given a value of the wrong kind."""
    for name, field in model.model_fields.items():
        if name in ("id", "type"):
            continue
        held = shape(field.annotation)
        wrong: Any = {"x": 1} if held is None or held == "list" else [1]
        yield {**base, name: wrong}, f"{path}.{name}"
        inner = model_in(field.annotation)
        if inner is not None and held != "list":
            for part, where in wrong_values(inner, {}, f"{path}.{name}"):
                yield {**base, name: part}, where


WRONG_CASES = [({"servers": {}, "gateway": part}, where) for part, where in wrong_values(Gateway, {}, "gateway")] + [
    ({"servers": {"a": part}}, where)
    for kind in SERVER_TYPES
    for part, where in wrong_values(SERVER_TYPES[kind], ENTRIES[kind], "servers.a")
]


@pytest.mark.parametrize(("document", "where"), WRONG_CASES, ids=[where for _, where in WRONG_CASES])
def test_no_message_speaks_pydantic_or_names_a_class(document: dict[str, Any], where: str) -> None:
    found = problems(dump(document))
    for problem in found:
        assert not JARGON.search(problem), problem
        assert not CLASS_NAMES & set(re.findall(r"\w+", problem)), problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gateway: {allowed_hosts: abc}\n", "gateway.allowed_hosts: should be a list (YAML `[a, b]` or `- a` lines)"),
        (
            "gateway: {auth: [1]}\n",
            "gateway.auth: should be a mapping of fields (api_keys, jwt, anonymous, open, authorization_servers)",
        ),
        (
            "gateway: {auth: {api_keys: [x]}}\n",
            "gateway.auth.api_keys[0]: should be a mapping of fields (name (required), sha256, key, groups)",
        ),
        (
            "gateway: {limits: {rate_per_principal: 5}}\n",
            "gateway.limits.rate_per_principal: should be a mapping of fields (rps (required), burst)",
        ),
        ("gateway: {port: abc}\n", "gateway.port: should be a whole number"),
        ("gateway: {port: 99999}\n", "gateway.port: should be less than or equal to 65535"),
        ("gateway: {logging: {audit: maybe}}\n", "gateway.logging.audit: should be true or false"),
        ("gateway: {logging: {format: xml}}\n", "gateway.logging.format: should be 'text' or 'json'"),
        ("gateway: {tracing: {service_name: 3}}\n", "gateway.tracing.service_name: should be a string (quote it"),
        ("gateway: {tracing: {sample_ratio: lots}}\n", "gateway.tracing.sample_ratio: should be a number"),
        ("servers:\n  a: {endpoints: [5]}\n", "servers.a.endpoints[0]: should be a URL or a mapping of fields (url"),
        ("servers:\n  a: {command: [x], env: [1]}\n", "servers.a.env: should be a mapping of NAME: value pairs"),
    ],
)
def test_type_errors_say_what_to_write(text: str, expected: str) -> None:
    found = problems(text if text.startswith("servers") else "servers: {}\n" + text)
    assert f"reg.yaml: {expected}" in found or any(p.startswith(f"reg.yaml: {expected}") for p in found), found


# --- 3. checks between fields: located, and with the field errors -------------------------------------------


def keys(*pairs: tuple[str, str]) -> str:
    return "[" + ", ".join(f"{{name: {name}, key: {key}}}" for name, key in pairs) + "]"


def test_a_key_name_used_twice_is_located_at_the_second() -> None:
    text = (
        f"servers: {{}}\ngateway:\n  auth: {{api_keys: {keys(('ci', KEY_A), ('ops', KEY_B), ('ci', KEY_B + 'x'))}}}\n"
    )
    assert problems(text) == [
        "reg.yaml: gateway.auth.api_keys[2].name: api key name 'ci' is used twice (also api_keys[0]): names identify"
        " keys in logs and rules"
    ]


def test_two_keys_with_one_value_are_named_and_the_value_never_shown() -> None:
    sha = models.digest(KEY_A)
    text = (
        "servers: {}\ngateway:\n  auth:\n    api_keys:\n"
        f"    - {{name: ci, key: {KEY_A}}}\n    - {{name: ops, key: {KEY_B}}}\n    - {{name: bot, sha256: {sha}}}\n"
    )
    found = problems(text)
    assert found == [
        "reg.yaml: gateway.auth.api_keys[2]: the same key as api_keys[0] ('ci'): each holder needs a key of its own"
    ]
    assert KEY_A not in found[0] and sha not in found[0]


def test_anonymous_with_credentials_is_located_at_anonymous() -> None:
    text = f"servers: {{}}\ngateway:\n  auth: {{anonymous: true, api_keys: {keys(('ci', KEY_A))}}}\n"
    assert problems(text) == [
        "reg.yaml: gateway.auth.anonymous: true serves callers without credentials, and api_keys or jwt asks them"
        " for some: keep one or the other"
    ]


def test_every_bad_principal_and_proxy_is_reported_at_its_index() -> None:
    text = (
        "servers:\n  a: {command: [x]}\ngateway:\n"
        "  access:\n  - {principals: ['*', bad, 'key:', 'key:nobody'], servers: [a]}\n"
        "  trusted_proxies: [127.0.0.1, x, 10.0.0.1/8, '::1']\n"
    )
    assert problems(text) == [
        "reg.yaml: gateway.access[0].principals[1]: 'bad' is not a principal: write key:<name>, sub:<subject>,"
        " group:<name>, scope:<scope>, anonymous or '*'",
        "reg.yaml: gateway.access[0].principals[2]: 'key:' is not a principal: write key:<name>, sub:<subject>,"
        " group:<name>, scope:<scope>, anonymous or '*'",
        "reg.yaml: gateway.trusted_proxies[1]: 'x' is not an IP address or CIDR network (10.0.0.0/8, ::1)",
        "reg.yaml: gateway.trusted_proxies[2]: '10.0.0.1/8' has bits set past its prefix: write 10.0.0.0/8",
        "reg.yaml: gateway.access[0].principals[3]: 'key:nobody' names no key in gateway.auth.api_keys (keys: none)",
    ]


def test_checks_between_fields_come_in_the_same_round_as_field_errors() -> None:
    text = (
        "servers:\n  a: {command: [x]}\ngateway:\n  port: 99999\n"
        f"  auth: {{api_keys: {keys(('ci', KEY_A), ('ci', KEY_B), ('x y', KEY_B + 'z'))}}}\n"
        "  access:\n  - {principals: ['key:ops'], servers: [a]}\n"
    )
    found = problems(text)
    assert "reg.yaml: gateway.port: should be less than or equal to 65535" in found
    assert any(p.startswith("reg.yaml: gateway.auth.api_keys[2].name: 'x y': a key name is") for p in found)
    assert any(p.startswith("reg.yaml: gateway.auth.api_keys[1].name: api key name 'ci' is used twice") for p in found)
    assert any(p.startswith("reg.yaml: gateway.access[0].principals[0]: 'key:ops' names no key") for p in found)
    assert len(found) == 4


def test_an_unset_key_is_not_also_the_same_value_as_another() -> None:
    text = "servers: {}\ngateway:\n  auth: {api_keys: [{name: a, key: '${A}'}, {name: b, key: '${B}'}]}\n"
    assert [p.split(": ")[1] for p in problems(text)] == [
        "gateway.auth.api_keys[0].key",
        "gateway.auth.api_keys[1].key",
    ]


def test_a_model_built_in_code_still_refuses_what_the_loader_locates() -> None:
    with pytest.raises(ValueError, match=r"api_keys\[1\]\.name: api key name 'a' is used twice"):
        Auth(api_keys=(ApiKey(name="a", key=KEY_A), ApiKey(name="a", key=KEY_B)))
    with pytest.raises(ValueError, match=r"access\[0\]\.principals\[0\]: 'key:x' names no key"):
        Gateway(access=(AccessRule(principals=("key:x",)),))


# --- 4. rules that can never match -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ("[]", "gateway.access[0].servers: a rule with no servers matches nothing: list server ids or globs"),
        (
            "['bad id!']",
            "gateway.access[0].servers[0]: 'bad id!' can match no server: ' ' and '!' are in no server id"
            " (lowercase letters, digits, '.', '_' and '-'; globs: '*', '?' and [...])",
        ),
        ("[a, GitHub]", "gateway.access[0].servers[1]: 'GitHub' can match no server: 'G' and 'H' are in no server"),
        ("['-x*']", "gateway.access[0].servers[0]: '-x*' can match no server: an id starts with a letter or digit"),
        ("[metrics]", "gateway.access[0].servers[0]: 'metrics' can match no server: the id is reserved"),
        (f"['{'a' * 64}']", f"gateway.access[0].servers[0]: '{'a' * 64}' can match no server: at most 63"),
    ],
)
def test_server_patterns_no_id_can_match_are_errors(servers: str, expected: str) -> None:
    text = f"servers:\n  a: {{command: [x]}}\ngateway:\n  access:\n  - {{principals: ['*'], servers: {servers}}}\n"
    assert any(p.startswith(f"reg.yaml: {expected}") for p in problems(text)), problems(text)


def test_globs_that_can_match_are_accepted() -> None:
    text = (
        "servers:\n  a1: {command: [x]}\n"
        "gateway:\n  access:\n  - {principals: ['*'], servers: ['a?', 'a[0-9]', '*', 'a*']}\n"
    )
    assert load(text).warnings == ()


def test_a_pattern_naming_no_server_of_the_registry_is_a_warning() -> None:
    text = (
        "servers:\n  a: {command: [x]}\n  spare: {command: [x], disabled: true}\ngateway:\n"
        "  access:\n  - {principals: ['*'], servers: [a, spare, 'git*']}\n"
    )
    reg = load(text)
    assert reg.warnings == (
        "reg.yaml: servers.spare: left out: disabled is true",
        "reg.yaml: gateway.access[0].servers[2]: 'git*' matches no server in this registry: it reaches nothing until"
        " a server it matches is added",
    )
    # Labelled Services bring ids no entry names: no warning then.
    assert load(text.replace("gateway:\n", "gateway:\n  discovery: labels\n")).warnings[1:] == ()


def test_a_pattern_naming_no_server_is_a_warning_beside_errors_too() -> None:
    text = (
        "servers:\n  time: {command: [x]}\ngateway:\n  port: 99999\n"
        "  access:\n  - {principals: ['*'], servers: [tme, '${T}']}\n"
    )
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml", environ={"T": "value"})
    assert [str(problem) for problem in caught.value.problems] == [
        "reg.yaml: gateway.port: should be less than or equal to 65535"
    ]
    # The section did not validate: its patterns as written, a `${VAR}` one left alone (not expanded).
    assert caught.value.warnings == (
        "reg.yaml: gateway.access[0].servers[0]: 'tme' matches no server in this registry: it reaches nothing until"
        " a server it matches is added",
    )


def test_principals_no_caller_can_have_are_warnings_naming_the_setting() -> None:
    text = (
        "servers:\n  a: {command: [x]}\n"
        f"gateway:\n  auth: {{api_keys: [{{name: ci, key: {KEY_A}, groups: [ops]}}]}}\n"
        "  access:\n  - {principals: ['sub:alice', 'scope:read', 'group:ops', 'group:dev', anonymous, 'key:ci']}\n"
    )
    assert load(text).warnings == (
        "reg.yaml: gateway.access[0].principals[0]: 'sub:alice' can never match: subjects come from JWTs, and"
        " gateway.auth.jwt is not set",
        "reg.yaml: gateway.access[0].principals[1]: 'scope:read' can never match: scopes come from JWTs, and"
        " gateway.auth.jwt is not set",
        "reg.yaml: gateway.access[0].principals[3]: 'group:dev' can never match: no key in gateway.auth.api_keys has"
        " group 'dev', and gateway.auth.jwt (whose tokens carry groups) is not set",
        "reg.yaml: gateway.access[0].principals[4]: 'anonymous' can never match: gateway.auth asks every caller for"
        " credentials (api_keys or jwt) and opens no route (auth.open), so no caller is anonymous",
    )
    with_jwt = (
        "servers:\n  a: {command: [x]}\ngateway:\n  auth: {jwt: {issuer: 'https://login.example.com'}}\n"
        "  access:\n  - {principals: ['sub:alice', 'scope:read', 'group:dev']}\n"
    )
    assert load(with_jwt).warnings == ()


def test_anonymous_is_a_principal_and_tools_empty_means_none() -> None:
    reg = load(
        "servers:\n  a: {command: [x]}\ngateway:\n  access:\n  - {principals: [anonymous], servers: [a], tools: []}\n"
    )
    assert reg.warnings == ()
    grant = Access(reg.gateway.access).grant(ANONYMOUS, "a")
    assert grant is not None and not grant.allows("anything")
    assert Access(reg.gateway.access).grant(Identity("ci", kind="key"), "a") is None


# --- 5. URL fields ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        ("tracing: {endpoint: collector:4318}", "gateway.tracing.endpoint: malformed URL 'collector:4318': the scheme"),
        ("tracing: {endpoint: 'http://'}", "gateway.tracing.endpoint: malformed URL 'http://': it has no host"),
        ("tracing: {endpoint: 'http://c:99999'}", "gateway.tracing.endpoint: malformed URL 'http://c:99999': the port"),
        ("auth: {jwt: {issuer: 'https://'}}", "gateway.auth.jwt.issuer: malformed URL 'https://': it has no host"),
        ("auth: {jwt: {issuer: 'https://i', jwks_url: '/keys'}}", "gateway.auth.jwt.jwks_url: malformed URL '/keys'"),
        (
            "auth: {authorization_servers: ['https://as.example.com', 'http://as.example.com']}",
            "gateway.auth.authorization_servers[1]: 'http://as.example.com': an issuer, its key set and an"
            " authorization server are reached over https (http only on loopback)",
        ),
        (
            "public_url: 'https://u:secret@h:99999'",
            "gateway.public_url: malformed URL 'https://u:***@h:99999': the port is not a number from 1 to 65535",
        ),
    ],
)
def test_url_fields_are_checked_at_load(gateway: str, expected: str) -> None:
    found = problems(f"servers: {{}}\ngateway:\n  {gateway}\n")
    assert any(p.startswith(f"reg.yaml: {expected}") for p in found), found
    assert not any("secret" in p for p in found)


def test_a_good_tracing_endpoint_is_kept() -> None:
    reg = load("servers: {}\ngateway:\n  tracing: {enabled: true, endpoint: 'http://otel-collector:4318'}\n")
    assert reg.gateway.tracing.endpoint == "http://otel-collector:4318"


# --- ids YAML reads as something else ----------------------------------------------------------------------


def test_an_id_yaml_reads_as_a_boolean_or_number_is_an_error_not_a_traceback() -> None:
    found = problems("servers:\n  off: {command: [x]}\n  1: {command: [y]}\n  ok: {command: [z]}\n")
    assert found == [
        "reg.yaml: servers.False: server id False is not a string: YAML reads unquoted on, off, yes, no, true, false"
        " and null, and numbers, as such; quote the id (e.g. 'off')",
        "reg.yaml: servers.1: server id 1 is not a string: YAML reads unquoted on, off, yes, no, true, false and"
        " null, and numbers, as such; quote the id (e.g. 'off')",
    ]
