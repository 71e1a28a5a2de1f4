"""The Kubernetes side of `mcpfleet deploy`, `scale`, `status`, `logs` and `remove` (`cli/deploy.py` picks
the backend: `--backend`, else the entry's type).

Everything goes through `KubernetesDeployer` (the gateway's own code) with the kubeconfig and context given
(`--kubeconfig`, `--context`; else `$KUBECONFIG` or `~/.kube/config`; in a pod, its service account), in
`--namespace` (else the entry's, else the context's). Nothing is created unless asked: `status`, `logs`
and `remove` only read and delete, and no command creates a namespace. `deploy --dry-run` prints the
manifests (secret values masked) without asking the cluster; for a `chart` entry it prints what `helm
template` renders. A `chart` entry is installed and uninstalled with the `helm` binary (`$HELM`, else on
the PATH).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import yaml

from mcpfleet.cli import output
from mcpfleet.cli.app import T, _run
from mcpfleet.deploy.base import Change, ReplicaStatus
from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.errors import DeployError, UsageError
from mcpfleet.registry.model import KubernetesServer

if TYPE_CHECKING:  # the client is imported by the commands that use it
    from mcpfleet.deploy.kubernetes.deployer import KubernetesDeployer


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where the Kubernetes commands work: kubeconfig, context, namespace override, project."""

    project: str
    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        if self.namespace is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", self.namespace):
            raise UsageError(
                f"--namespace {self.namespace!r} is not a Kubernetes namespace name: lowercase letters, digits and"
                " '-', starting and ending with a letter or digit"
            )
        if not self.project[-1:].isalnum():
            raise UsageError(
                f"project {self.project!r} ends with {self.project[-1:]!r}: Kubernetes labels carry it, and a label"
                " value must end with a letter or digit (set by --project or $MCPFLEET_PROJECT)"
            )

    def run(self, work: Callable[[KubernetesDeployer], Awaitable[T]]) -> T:
        """Run `work` with a deployer; errors become one `error:` line and exit 2 or 3."""

        async def go() -> T:
            from mcpfleet.deploy.kubernetes.api import Cluster as Api
            from mcpfleet.deploy.kubernetes.deployer import KubernetesDeployer

            api = Api(kubeconfig=self.kubeconfig, context=self.context)
            try:
                return await work(KubernetesDeployer(api, self.project, namespace=self.namespace))
            finally:
                await api.aclose()

        return _run(go)

    def namespace_of(self, entry: KubernetesServer) -> str:
        """The namespace the gateway and the deployer use for `entry` (the kubeconfig context's when neither
        --namespace nor the entry names one): where helm must install a chart entry."""

        async def find(deployer: KubernetesDeployer) -> str:
            return await deployer.namespace(entry)

        return self.run(find)

    def namespace_offline(self, entry: KubernetesServer) -> str:
        """The namespace for a dry run, which asks no cluster: --namespace, the entry's, else `default`."""
        return self.namespace or entry.namespace or "default"

    def helm(self, *args: str) -> list[str]:
        found = os.environ.get("HELM") or shutil.which("helm")
        if found is None:
            raise UsageError("a chart entry needs the helm binary: put it on the PATH or set $HELM")
        argv = [found, *args]
        if self.kubeconfig is not None:
            argv += ["--kubeconfig", self.kubeconfig]
        if self.context is not None:
            argv += ["--kube-context", self.context]
        return argv


# --- deploy and scale -----------------------------------------------------------------------------------


def deploy(entry: KubernetesServer, replicas: int | None, *, dry_run: bool, where: Cluster, json_: bool) -> None:
    """Apply the entry's objects (or install its chart), scale to `replicas`, wait until the pods are ready."""
    if entry.chart is not None:
        _deploy_chart(entry, replicas, dry_run=dry_run, where=where, json_=json_)
        return
    if dry_run:
        namespace = where.namespace_offline(entry)
        found = manifests.objects(entry, namespace=namespace, project=where.project)
        if replicas is not None:
            next(o for o in found if o["kind"] == "Deployment")["spec"]["replicas"] = replicas
        shown = [_masked(o) for o in found]
        if json_:
            output.print_json({"project": where.project, "server": entry.id, "dry_run": True, "objects": shown})
        else:
            output.plain(yaml.safe_dump_all(shown, sort_keys=False).rstrip())
        return

    async def work(deployer: KubernetesDeployer) -> tuple[list[Change], list[ReplicaStatus]]:
        changes = await deployer.plan(entry, replicas)
        with output.stderr.status(f"deploying {entry.id}") as spinner:
            pods = await deployer.up(entry, replicas, progress=spinner.update)
        return changes, pods

    changes, pods = where.run(work)
    _report(entry.id, changes, pods, where, json_)


def scale(entry: KubernetesServer, replicas: int, *, dry_run: bool, where: Cluster, json_: bool) -> None:
    """Set the Deployment's replicas through its scale subresource and wait for them (none to wait for at 0)."""

    async def work(deployer: KubernetesDeployer) -> tuple[list[Change], list[ReplicaStatus]]:
        found = await deployer.deployment(entry)
        if found is None:
            raise DeployError(f"no Deployment: run `mcpfleet deploy {entry.id}` first", server_id=entry.id)
        current = (found.get("spec") or {}).get("replicas")
        name = found["metadata"]["name"]
        changes = [Change("scale", "Deployment", name, entry.id, f"{current} -> {replicas} replicas")]
        if dry_run:
            return changes, []
        await deployer.scale(entry, replicas)
        with output.stderr.status(f"scaling {entry.id}") as spinner:
            await deployer.wait_ready(entry, replicas, progress=spinner.update)
        return changes, await deployer.status(entry.id, entry)

    changes, pods = where.run(work)
    _report(entry.id, changes, None if dry_run else pods, where, json_, dry_run=dry_run)


def _deploy_chart(entry: KubernetesServer, replicas: int | None, *, dry_run: bool, where: Cluster, json_: bool) -> None:
    assert entry.chart is not None
    release = manifests.object_name(where.project, entry.id)
    namespace = where.namespace_offline(entry) if dry_run else where.namespace_of(entry)
    values = dict(entry.values)
    if replicas is not None:
        values["replicas"] = replicas
    elif entry.idle_timeout is not None and _is_mcp_server_chart(entry.chart):
        values.setdefault("replicas", None)  # a gateway scales it: an upgrade must not take the count back
    if _is_mcp_server_chart(entry.chart):  # the labels the gateway finds the chart's Service by
        values.setdefault("server", entry.id)
        values.setdefault("project", where.project)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        version = ["--version", entry.chart_version] if entry.chart_version else []
        if dry_run:
            argv = where.helm("template", release, entry.chart, "--namespace", namespace, "-f", file.name, *version)
        else:
            timeout = f"{max(60, int(entry.timeouts.startup))}s"
            argv = where.helm(
                "upgrade", "--install", release, entry.chart, "--namespace", namespace, "-f", file.name, *version
            )
            argv += ["--wait", "--timeout", timeout]
        done = _helm_run(argv, entry)
    if done.returncode != 0:
        raise DeployError(f"helm failed ({' '.join(argv[:3])}...): {done.stderr.strip()}", server_id=entry.id)
    if json_:
        output.print_json({"server": entry.id, "release": release, "dry_run": dry_run, "helm": done.stdout})
    else:
        output.plain(done.stdout.rstrip())


def _helm_run(argv: list[str], entry: KubernetesServer) -> subprocess.CompletedProcess[str]:
    """Run helm; a binary that cannot run is one line naming it (exit 2)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise UsageError(f"helm {argv[0]!r} cannot run ({exc.strerror}): put helm on the PATH or set $HELM") from None


def _is_mcp_server_chart(chart: str) -> bool:
    """`chart` is a directory holding mcpfleet's own `charts/mcp-server` (its Chart.yaml names it)."""
    try:
        with open(os.path.join(chart, "Chart.yaml")) as file:
            return bool((yaml.safe_load(file) or {}).get("name") == "mcp-server")
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def _report(
    server_id: str,
    changes: list[Change],
    pods: list[ReplicaStatus] | None,
    where: Cluster,
    json_: bool,
    *,
    dry_run: bool = False,
) -> None:
    if json_:
        found: dict[str, Any] = {"project": where.project, "server": server_id, "dry_run": dry_run}
        found["changes"] = [c.as_json() for c in changes]
        if pods is not None:
            found["replicas"] = [p.as_json() for p in pods]
        output.print_json(found)
        return
    for change in changes:
        verb = {"create": "created", "update": "applied", "scale": "scaled", "remove": "removed"}[change.action]
        output.plain(
            f"{verb if not dry_run else 'would ' + change.action} {change.kind} {change.name} ({change.reason})"
        )
    if pods is not None:
        pod_table(f"Pods of {server_id} (project {where.project})", pods)


def pod_table(title: str, pods: list[ReplicaStatus]) -> None:
    output.table(
        title,
        ["server", "pod", "state", "address", "exit code"],
        [
            [p.server_id, p.name, p.state, p.address or "", "" if p.exit_code is None else str(p.exit_code)]
            for p in pods
        ],
    )


# --- status, logs, remove -------------------------------------------------------------------------------


def status(server_id: str | None, entry: KubernetesServer | None, *, where: Cluster, json_: bool) -> None:
    """The pods of the project (of `server_id`), their state and address, and each server's ready endpoints."""

    async def work(deployer: KubernetesDeployer) -> tuple[str, list[ReplicaStatus]]:
        return await deployer.namespace(entry), await deployer.status(server_id, entry)

    namespace, pods = where.run(work)
    if json_:
        output.print_json({"project": where.project, "namespace": namespace, "replicas": [p.as_json() for p in pods]})
    elif not pods:
        output.plain(
            f"no pods of project {where.project!r} in namespace {namespace!r}"
            + (f" of server {server_id!r}" if server_id else "")
        )
    else:
        pod_table(f"Pods of project {where.project} in namespace {namespace}", pods)


def logs(entry: KubernetesServer, *, tail: int | None, follow: bool, where: Cluster, json_: bool) -> None:
    """Every pod's log lines, each after its pod's name; --follow until Ctrl-C."""

    def show(pod: str, line: str) -> None:
        output.plain(json.dumps({"pod": pod, "line": line}, ensure_ascii=False) if json_ else f"{pod} | {line}")

    async def work(deployer: KubernetesDeployer) -> bool:
        if not await deployer.status(entry.id, entry):
            return False
        await deployer.logs(entry, tail=tail, follow=follow, line=show)
        return True

    if not where.run(work):
        output.plain(f"no pods of server {entry.id!r} in project {where.project!r}", stream=sys.stderr)


def remove(
    server_id: str | None, entry: KubernetesServer | None, *, dry_run: bool, where: Cluster, json_: bool
) -> list[Change]:
    """Delete what mcpfleet made for `server_id` (None: the whole project), by label; a chart entry's
    release is uninstalled with helm first."""
    if entry is not None and entry.chart is not None and not dry_run:
        release = manifests.object_name(where.project, entry.id)
        argv = where.helm("uninstall", release, "--namespace", where.namespace_of(entry), "--ignore-not-found")
        done = _helm_run(argv, entry)
        if done.returncode != 0:
            raise DeployError(f"helm uninstall failed: {done.stderr.strip()}", server_id=entry.id)

    async def work(deployer: KubernetesDeployer) -> list[Change]:
        if dry_run:
            return await deployer.plan_down(server_id, entry)
        return await deployer.down(server_id, entry)

    changes = where.run(work)
    if json_:
        output.print_json({"project": where.project, "dry_run": dry_run, "changes": [c.as_json() for c in changes]})
    elif not changes:
        output.plain(
            f"nothing to remove in project {where.project!r}" + (f" of server {server_id!r}" if server_id else "")
        )
    else:
        for change in changes:
            output.plain(f"{'would remove' if dry_run else 'removed'} {change.kind} {change.name} ({change.reason})")
    return changes


def _masked(body: dict[str, Any]) -> dict[str, Any]:
    if body["kind"] != "Secret":
        return body
    return {**body, "data": dict.fromkeys(body.get("data") or {}, "***")}
