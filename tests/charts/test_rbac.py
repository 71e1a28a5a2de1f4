"""The gateway chart grants exactly what `mcpfleet.deploy.kubernetes.rbac` lists, and nothing more: a Role and
RoleBinding in each managed namespace, never a ClusterRole; no wildcard; Secrets only when it deploys."""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import GATEWAY, documents, template

from mcpfleet.deploy.kubernetes import rbac

pytestmark = pytest.mark.usefixtures("helm_available")


def _granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def _rendered(*sets: str) -> list[dict[str, Any]]:
    return documents(template(GATEWAY, namespace="gw", sets=sets))


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ((), rbac.merged(rbac.GATEWAY)),
        (("deployer=false",), rbac.merged(rbac.DISCOVERY)),
        (("discovery.labels=true",), rbac.merged(rbac.GATEWAY, rbac.LABELLED_SERVICES)),
        (("deployer=false", "discovery.labels=true"), rbac.merged(rbac.DISCOVERY, rbac.LABELLED_SERVICES)),
    ],
    ids=["deployer", "discovery-only", "deployer-labels", "discovery-only-labels"],
)
def test_role_grants_exactly_the_listed_permissions(sets: tuple[str, ...], expected: Any) -> None:
    objects = _rendered(*sets)
    [role] = [obj for obj in objects if obj["kind"] == "Role"]
    granted = _granted(role)
    assert granted == expected
    assert not [obj for obj in objects if obj["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for (group, resource), verbs in granted.items():
        assert "*" not in (group, resource) and "*" not in verbs
    assert (("", "secrets") in granted) == ("deployer=false" not in sets)


def test_a_role_in_each_managed_namespace() -> None:
    objects = _rendered("managedNamespaces={tools,mcp-servers}")
    roles = {obj["metadata"]["namespace"]: obj for obj in objects if obj["kind"] == "Role"}
    bindings = {obj["metadata"]["namespace"]: obj for obj in objects if obj["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"tools", "mcp-servers"}
    [account] = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
    for namespace, binding in bindings.items():
        assert _granted(roles[namespace]) == rbac.merged(rbac.GATEWAY)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "gw"}
        ]


def test_the_release_namespace_by_default() -> None:
    assert [obj["metadata"]["namespace"] for obj in _rendered() if obj["kind"] == "Role"] == ["gw"]


def test_no_rbac_when_not_asked() -> None:
    kinds = {obj["kind"] for obj in _rendered("rbac.create=false")}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
