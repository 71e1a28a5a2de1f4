"""The values of `charts/mcp-server` for a `kubernetes` registry entry: with them the chart renders the same
Secret, Deployment and headless Service as `manifests.objects(entry)` (`tests/charts/test_equivalence.py`
compares them object by object; only Helm's own labels and the chart's checksum annotation differ). Pure:
nothing here talks to a cluster or runs helm.

The values carry `secret_env` in clear, as a values file would: give them to helm in a file only you can read,
or keep the secrets in a Secret of your own and name it in `existingSecret`.
"""

from __future__ import annotations

from typing import Any

from mcpfleet.deploy.container import container_spec
from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.registry.model import KubernetesServer


def chart_values(entry: KubernetesServer, *, project: str) -> dict[str, Any]:
    """The chart values that make `charts/mcp-server` render `manifests.objects(entry, project=project)` in
    the release's namespace. The readiness probe is left to the chart, which picks it as `manifests.readiness`
    does (`/readyz` behind `mcpfleet adapter`, else a TCP check of the port). ValueError for a `chart` entry."""
    spec = container_spec(entry)
    assert spec.port is not None  # a Kubernetes stdio entry is served by the adapter on its port
    repository, tag, digest = split_image(spec.image)
    user, _, group = (spec.security.user or "").partition(":")
    return {
        "server": entry.id,
        "project": project,
        "fullnameOverride": manifests.object_name(project, entry.id),
        "image": {
            "repository": repository,
            "tag": tag,
            "digest": digest,
            "pullPolicy": "Never" if spec.pull == "never" else "IfNotPresent",
        },
        "command": list(spec.entrypoint or ()),
        "args": list(spec.args or ()),
        "port": spec.port,
        "replicas": entry.replicas,
        "env": dict(spec.env),
        "secretEnv": dict(spec.secret_env),
        "resources": manifests.resources(spec),
        "securityContext": {
            "runAsUser": int(user) if user else None,
            "runAsGroup": int(group) if group else None,
            "readOnlyRootFilesystem": spec.security.read_only,
            "allowPrivilegeEscalation": not spec.security.no_new_privileges,
            "capabilities": {"add": list(spec.security.cap_add)},
        },
        "serviceAccount": {"create": False, "name": entry.service_account or ""},
        "preStopSleepSeconds": manifests.PRE_STOP_SECONDS,
        "terminationGracePeriodSeconds": manifests.termination_grace(entry),
        "progressDeadlineSeconds": manifests.progress_deadline(entry),
    }


def split_image(image: str) -> tuple[str, str, str]:
    """`host:5000/name:tag@sha256:...` as (repository, tag, digest); a part that is absent is ''. The tag is
    what follows the last ':' after the last '/', so a registry's port is never taken for one."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest
    return rest, "", digest
