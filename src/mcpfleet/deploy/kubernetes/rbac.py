"""Every Kubernetes API permission mcpfleet uses, in one place: the gateway chart's Role
(`charts/mcpfleet/templates/_helpers.tpl`) is checked against it by a test of the rendered chart, which must
grant exactly these (`tests/charts/test_rbac.py`), and the emulated-cluster tests check that the gateway and
the CLI used nothing else (`tests/kube/`).

Each rule is (API group, resource, verbs), with Kubernetes' verb names; `""` is the core group. All are
namespaced: the gateway gets a Role in each namespace it manages, never a ClusterRole.
"""

from __future__ import annotations

Rule = tuple[str, str, tuple[str, ...]]

# Finding replicas: a server's EndpointSlices (list, then watch from the list's resourceVersion); a `chart`
# entry's Service, found by its `mcpfleet.io/server` label.
DISCOVERY: tuple[Rule, ...] = (
    ("discovery.k8s.io", "endpointslices", ("list", "watch")),
    ("", "services", ("list",)),
)

# Creating, scaling (to zero and back) and deleting the servers it deploys (`deployer: true` in the chart).
# Objects are written by server-side apply (a PATCH); an apply that creates the object also needs `create`
# (the API server checks both), so `create` is granted though no POST is made. Secrets are written and
# deleted by name, never read: `get` or `list` on Secrets would show every Secret's data in the namespace.
DEPLOYER: tuple[Rule, ...] = (
    ("apps", "deployments", ("get", "list", "create", "patch", "delete")),
    ("apps", "deployments/scale", ("update",)),
    ("", "services", ("create", "patch", "delete")),
    ("", "secrets", ("create", "patch", "delete")),
    ("", "configmaps", ("create", "patch", "delete")),
)

# Verbs granted though a run may show no request with them: `create` is checked on an apply that creates.
IMPLIED: tuple[Rule, ...] = (
    ("apps", "deployments", ("create",)),
    ("", "services", ("create",)),
    ("", "secrets", ("create",)),
    ("", "configmaps", ("create",)),
)

# `discovery: labels`: Services labelled for mcpfleet that the registry does not list.
LABELLED_SERVICES: tuple[Rule, ...] = (("", "services", ("list", "watch")),)

# What the CLI adds: `status` and `logs` read pods, `deploy`'s plan reads the Service (not the gateway's).
INSPECT: tuple[Rule, ...] = (("", "pods", ("list",)), ("", "pods/log", ("get",)), ("", "services", ("get",)))

GATEWAY: tuple[Rule, ...] = DISCOVERY + DEPLOYER


def merged(*groups: tuple[Rule, ...]) -> dict[tuple[str, str], set[str]]:
    """The verbs granted per (group, resource) by the union of `groups`."""
    found: dict[tuple[str, str], set[str]] = {}
    for group in groups:
        for api_group, resource, verbs in group:
            found.setdefault((api_group, resource), set()).update(verbs)
    return found
