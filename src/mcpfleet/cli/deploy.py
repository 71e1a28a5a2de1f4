"""`mcpfleet deploy`, `scale`, `status`, `logs` and `remove`: a registry's docker entries as containers on the
local Docker engine, through the Docker deployer (`mcpfleet.deploy.docker`), and its kubernetes entries as
Deployments in a cluster (`cli/kubernetes.py`), with no gateway running.

The backend is `--backend`, else the entry's type (`docker` or `kubernetes`), else (`status` and `remove`
of no entry) `kubernetes` when a Kubernetes option (`--namespace`, `--kubeconfig`, `--context`) is given,
else `docker`. An entry of one type deploys to the other with `--backend` (their common fields mean the
same; one that only its own backend has is an error naming it).

Every command works on one project (`--project`, else `$MCPFLEET_PROJECT`, else `mcpfleet`): the label and
name prefix of the containers, networks and volumes it makes, so two projects on one engine never touch each
other's. The engine is the only state: nothing is written beside the registry. `scale N` converges on N
replicas now and records nothing; the next `deploy` goes back to the entry's `replicas`.

`status`, `logs` and `remove` select containers by label, so they also reach the containers of a server that
has left the registry; only when a server id has no container at all does the registry decide between
"nothing to do" (it names the server) and an unknown id (exit 2).

The mutating commands (`deploy`, `scale`, `remove`) take `--dry-run`: the changes are planned from what the
engine has, printed, and nothing is changed. Secret values never appear: create bodies are masked
(`spec.masked`). Long waits show a spinner on stderr (a terminal only), never on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mcpfleet.cli import kubernetes, output
from mcpfleet.cli.app import JsonOpt, ProjectOpt, RegistryOpt, ServerArg, T, _fail, _run, app
from mcpfleet.cli.target import Target, resolve
from mcpfleet.deploy.base import Change, Progress, ReplicaStatus
from mcpfleet.deploy.container import as_backend
from mcpfleet.deploy.docker.spec import docker_entry, project_name
from mcpfleet.errors import McpfleetError, UsageError
from mcpfleet.registry import Registry
from mcpfleet.registry.model import DockerServer, KubernetesServer

if TYPE_CHECKING:
    from mcpfleet.deploy.docker.deployer import DockerDeployer

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be created and removed; change nothing.")]
_LEFT = "Server id; one that has left the registry works too, as long as containers of it exist."
KnownServerArg = Annotated[str, typer.Argument(metavar="SERVER", help=_LEFT)]
OptionalServerArg = Annotated[str | None, typer.Argument(metavar="SERVER", help=_LEFT, show_default=False)]

_DONE = {"create": "created", "remove": "removed"}

BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        metavar="docker|kubernetes",
        help="Where to run it (default: the entry's type; for no entry, kubernetes when a Kubernetes option is given).",
    ),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option("--namespace", metavar="NS", help="Kubernetes namespace (default: the entry's, else the context's)."),
]
KubeconfigOpt = Annotated[
    str | None,
    typer.Option("--kubeconfig", metavar="FILE", help="Kubernetes config (default: $KUBECONFIG, ~/.kube/config)."),
]
ContextOpt = Annotated[str | None, typer.Option("--context", metavar="NAME", help="Kubernetes context to use.")]


class _Scope:
    """What a command works on: the project (validated) and the registry (loaded when first needed, so that
    `remove` and `logs` of a server whose containers exist need no registry at all)."""

    def __init__(self, registry: Path | None, project: str | None) -> None:
        self.project = project_name(project)
        self._registry = registry

    @cached_property
    def registry(self) -> Registry:
        loaded = resolve(self._registry, False, None).registry
        assert loaded is not None
        return loaded

    def docker_entry(self, server_id: str) -> DockerServer:
        """The registry's docker entry `server_id`; UsageError (exit 2) for an entry of another type."""
        return docker_entry(Target(registry=self.registry).server(server_id))

    def entry(self, server_id: str, backend: str | None) -> DockerServer | KubernetesServer:
        """The entry `server_id` as an entry of `backend` (default: its own type). UsageError (exit 2) for an
        entry no backend deploys, an unknown backend, or fields the other backend does not have."""
        found = Target(registry=self.registry).server(server_id)
        if not isinstance(found, DockerServer | KubernetesServer):
            return docker_entry(found)  # the error that says which types are deployed
        if backend not in (None, "docker", "kubernetes"):
            raise UsageError(f"--backend {backend!r}: give docker or kubernetes")
        try:
            return as_backend(found, backend or found.type)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def backend_of(self, server_id: str | None, backend: str | None, kube_options: bool) -> str:
        """The backend of a command that may have no entry (`status`, `logs`, `remove`)."""
        if backend is not None:
            if backend not in ("docker", "kubernetes"):
                raise UsageError(f"--backend {backend!r}: give docker or kubernetes")
            return backend
        if server_id is not None:
            try:
                found = self.registry.servers.get(server_id)
            except UsageError:
                found = None  # no registry file: the options decide
            if isinstance(found, DockerServer | KubernetesServer):
                return found.type
        return "kubernetes" if kube_options else "docker"

    def kubernetes_entry(self, server_id: str | None) -> KubernetesServer | None:
        """The registry's entry `server_id` as a kubernetes entry, when the registry has a deployable one."""
        if server_id is None:
            return None
        try:
            found = self.registry.servers.get(server_id)
        except UsageError:
            return None
        if isinstance(found, DockerServer | KubernetesServer):
            try:
                converted = as_backend(found, "kubernetes")
            except ValueError:
                return None
            assert isinstance(converted, KubernetesServer)
            return converted
        return None

    def check_named(self, server_id: str) -> None:
        """For a server id of which no container exists: fine when the registry names it (there is just
        nothing to do), else UsageError (exit 2): a typo, or the wrong project."""
        if server_id in self.registry.servers or server_id in self.registry.failed:
            return
        known = ", ".join(sorted(self.registry.servers)) or "none"
        raise UsageError(
            f"unknown server {server_id!r}: the registry does not name it (known servers: {known}), and project"
            f" {self.project!r} has no container of it"
        )


def _scope(registry: Path | None, project: str | None) -> _Scope:
    """The scope of a command; a project name Docker cannot carry is one `error:` line and exit 2."""
    try:
        return _Scope(registry, project)
    except McpfleetError as exc:
        _fail(exc)


def _in_project(scope: _Scope, work: Callable[[DockerDeployer], Awaitable[T]]) -> T:
    """Run `work` with a deployer on the engine (`$DOCKER_HOST`, else the default socket). Errors become one
    `error:` line and an exit code: 2 for the options or the registry, 3 for the engine."""

    async def run() -> T:
        # The Docker client (aiodocker, aiohttp) is imported only by the commands that use it.
        from mcpfleet.deploy.docker.deployer import DockerDeployer
        from mcpfleet.deploy.docker.engine import Engine

        async with Engine() as engine:
            return await work(DockerDeployer(engine, scope.project))

    return _run(run)


@contextlib.contextmanager
def _progress(first: str) -> Iterator[Progress]:
    """A spinner on stderr, told each step of a long wait. Rich draws it on a terminal only: a pipe or a log
    file gets nothing, and stdout (where `--json` goes) never does."""
    with output.stderr.status(first) as spinner:
        yield lambda step: spinner.update(step)


# --- deploy, scale --------------------------------------------------------------------------------------


@app.command()
def deploy(
    server: ServerArg,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", min=0, metavar="N", help="Replicas to run (default: the entry's `replicas`)."),
    ] = None,
    dry_run: DryRunOpt = False,
    registry: RegistryOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    backend: BackendOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Run a server's replicas (containers, or pods in Kubernetes) and wait until each answers; idempotent.

    Kubernetes: applies the Deployment, headless Service and Secret (server-side apply), or installs a
    `chart` entry with helm, and waits until the pods are ready; --dry-run prints the manifests.

    Creates the missing containers and waits until each answers on its MCP endpoint (timeouts.startup), then
    removes those of an older spec and those beyond N. A replica that does not become ready fails the deploy
    (exit 3, with its last log lines) and replaces nothing. A stdio entry (no `port`) has no standing
    containers: each session starts one of its own, so deploy only makes sure the image is there.
    """
    kube = _Kube(backend, namespace, kubeconfig, context)
    _converge(server, replicas, dry_run=dry_run, registry=registry, project=project, json_=json_, kube=kube)


@app.command()
def scale(
    server: ServerArg,
    replicas: Annotated[int, typer.Argument(min=0, metavar="N", help="Replicas to run; 0 stops every one.")],
    dry_run: DryRunOpt = False,
    registry: RegistryOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    backend: BackendOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Run N replicas of a server now (Kubernetes: through the Deployment's scale subresource). The registry
    is not changed: the next deploy restores its count."""
    kube = _Kube(backend, namespace, kubeconfig, context)
    _converge(
        server, replicas, dry_run=dry_run, registry=registry, project=project, json_=json_, scaling=True, kube=kube
    )


@dataclasses.dataclass(frozen=True)
class _Kube:
    """The Kubernetes options of a command."""

    backend: str | None
    namespace: str | None
    kubeconfig: str | None
    context: str | None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.namespace, self.kubeconfig, self.context))

    def cluster(self, project: str) -> kubernetes.Cluster:
        """The cluster options, checked (UsageError: exit 2)."""
        return kubernetes.Cluster(project, self.namespace, self.kubeconfig, self.context)


@dataclasses.dataclass
class _Converged:
    """What deploy and scale did (or, in a dry run, would do)."""

    project: str
    entry: DockerServer
    changes: list[Change]
    replicas: list[ReplicaStatus] | None  # None in a dry run
    image_present: bool = True

    def as_json(self, dry_run: bool) -> dict[str, Any]:
        found: dict[str, Any] = {"project": self.project, "server": self.entry.id, "dry_run": dry_run}
        found["changes"] = [change.as_json() for change in self.changes]
        if self.replicas is None:
            found["image_present"] = self.image_present
        else:
            found["replicas"] = [replica.as_json() for replica in self.replicas]
        return found


def _converge(
    server_id: str,
    replicas: int | None,
    *,
    dry_run: bool,
    registry: Path | None,
    project: str | None,
    json_: bool,
    kube: _Kube,
    scaling: bool = False,
) -> None:
    """deploy and scale: plan; unless `dry_run`, converge and wait; print the changes and the replicas. The
    entry is checked (exit 2) before the engine is asked."""
    scope = _scope(registry, project)
    try:
        found = scope.entry(server_id, kube.backend)
        if isinstance(found, KubernetesServer):
            if scaling:
                assert replicas is not None
                kubernetes.scale(found, replicas, dry_run=dry_run, where=kube.cluster(scope.project), json_=json_)
            else:
                kubernetes.deploy(found, replicas, dry_run=dry_run, where=kube.cluster(scope.project), json_=json_)
            return
        entry = found
        _check_count(entry, replicas, scaling)
    except McpfleetError as exc:
        _fail(exc)

    async def work(deployer: DockerDeployer) -> _Converged:
        changes = await deployer.plan(entry, replicas)
        if dry_run:
            present = await deployer.engine.image_present(entry.image)
            return _Converged(scope.project, entry, changes, None, present)
        with _progress(f"deploying {entry.id}") as tell:
            found = await deployer.up(entry, replicas, progress=tell)
        return _Converged(scope.project, entry, changes, found)

    done = _in_project(scope, work)
    if json_:
        output.print_json(done.as_json(dry_run))
        return
    if done.changes or not entry.stdio:
        _print_changes(done.changes, done=not dry_run)
    if done.replicas is None:
        if not done.image_present:
            then = "the deploy would fail ('pull' is 'never')" if entry.pull == "never" else "the deploy pulls it"
            output.plain(f"note: image {entry.image} is not on the Docker engine: {then}", stream=sys.stderr)
    elif entry.stdio:
        output.plain(
            f"server {entry.id!r} is a stdio server: each session starts a container of its own from"
            f" {entry.image} (on the engine); none stands"
        )
    else:
        _replica_table(f"Replicas of {entry.id} (project {done.project})", done.replicas)


def _check_count(entry: DockerServer, replicas: int | None, scaling: bool) -> None:
    if entry.stdio and (scaling or replicas is not None):
        raise UsageError(
            f"server {entry.id!r} is a stdio docker entry: it has no replicas to scale (each session starts a"
            " container of its own)"
        )
    if entry.host_port is not None and replicas is not None and replicas > 1:
        raise UsageError(
            f"server {entry.id!r} publishes the fixed host_port {entry.host_port}, which fits one replica, not"
            f" {replicas}: leave host_port unset in the registry so that each replica gets a port of its own"
        )


# --- status ---------------------------------------------------------------------------------------------


@app.command()
def status(
    server: OptionalServerArg = None,
    registry: RegistryOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    backend: BackendOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """List the project's containers (SERVER's only, when given): state, address, whether each runs the
    entry's present spec (read from the registry; "unknown" without one), exit code. Kubernetes: the pods,
    their state and address; nothing is created (not even a namespace)."""
    kube = _Kube(backend, namespace, kubeconfig, context)
    scope = _scope(registry, project)
    try:
        if scope.backend_of(server, kube.backend, kube.given) == "kubernetes":
            entry = scope.kubernetes_entry(server)
            kubernetes.status(server, entry, where=kube.cluster(scope.project), json_=json_)
            return
    except McpfleetError as exc:
        _fail(exc)

    async def work(deployer: DockerDeployer) -> list[ReplicaStatus]:
        found = await deployer.status(server)
        try:
            known = scope.registry
        except UsageError:  # no registry file: the containers are listed, whether they are current is unknown
            return [dataclasses.replace(r, current=None) for r in found]
        if not found and server is not None:
            scope.check_named(server)
        marked: list[ReplicaStatus] = []
        for server_id in dict.fromkeys(replica.server_id for replica in found):
            entry = known.servers.get(server_id)
            if isinstance(entry, DockerServer):
                marked += await deployer.status(server_id, digest=await deployer.digest(entry))
            else:  # it left the registry (or is no docker entry now): nothing of it runs a present spec
                marked += [dataclasses.replace(r, current=False) for r in found if r.server_id == server_id]
        return marked

    found = _in_project(scope, work)
    name = scope.project
    if json_:
        output.print_json({"project": name, "replicas": [replica.as_json() for replica in found]})
    elif not found:
        output.plain(f"no containers in project {name!r}" + (f" of server {server!r}" if server else ""))
    else:
        _replica_table(f"Containers of project {name}", found)


def _replica_table(title: str, replicas: list[ReplicaStatus]) -> None:
    output.table(
        title,
        ["server", "replica", "state", "address", "current spec", "exit code"],
        [
            [
                replica.server_id,
                replica.name,
                replica.state if replica.role == "replica" else f"{replica.state} ({replica.role})",
                replica.address or "",
                "unknown" if replica.current is None else "yes" if replica.current else "no",
                "" if replica.exit_code is None else str(replica.exit_code),
            ]
            for replica in replicas
        ],
    )


# --- logs -----------------------------------------------------------------------------------------------


@app.command()
def logs(
    server: KnownServerArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until every container stops, or Ctrl-C.")
    ] = False,
    tail: Annotated[
        int, typer.Option("--tail", "-n", min=0, metavar="N", help="Lines to show from the end of each container.")
    ] = 50,
    registry: RegistryOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    backend: BackendOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Print what a server's containers (or pods) wrote (stdout and stderr), each line after its name.

    With --json, one JSON object per line: {"container": NAME, "line": TEXT} ({"pod": ...} for Kubernetes).
    Ctrl-C ends --follow (exit 0).
    """
    kube = _Kube(backend, namespace, kubeconfig, context)
    scope = _scope(registry, project)
    try:
        if scope.backend_of(server, kube.backend, kube.given) == "kubernetes":
            entry = scope.kubernetes_entry(server)
            if entry is None:
                scope.check_named(server)  # an id the registry does not name: exit 2 (unless pods show it)
                entry = KubernetesServer(id=server, image="unknown", port=8080)
            with contextlib.suppress(KeyboardInterrupt):
                kubernetes.logs(entry, tail=tail, follow=follow, where=kube.cluster(scope.project), json_=json_)
            return
    except McpfleetError as exc:
        _fail(exc)

    async def work(deployer: DockerDeployer) -> None:
        if not await deployer.status(server):
            scope.check_named(server)
            output.plain(f"no containers of server {server!r} in project {scope.project!r}", stream=sys.stderr)
            return
        async for name, line in deployer.logs(server, tail=tail, follow=follow):
            shown = json.dumps({"container": name, "line": line}, ensure_ascii=False) if json_ else f"{name} | {line}"
            output.plain(shown)

    with contextlib.suppress(KeyboardInterrupt):
        _in_project(scope, work)


# --- remove ---------------------------------------------------------------------------------------------


@app.command()
def remove(
    server: OptionalServerArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove everything of the project, of every server.")] = False,
    dry_run: DryRunOpt = False,
    registry: RegistryOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    backend: BackendOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Remove what mcpfleet made for SERVER (or, with --all, for every server of the project): containers, and
    the networks and volumes it created; in Kubernetes its Deployment, Service and Secret (a chart entry's
    release is uninstalled). Selected by label: nothing else is touched. Give SERVER or --all."""
    if (server is None) != all_:
        _fail(UsageError("give either SERVER or --all"))
    kube = _Kube(backend, namespace, kubeconfig, context)
    scope = _scope(registry, project)
    try:
        if scope.backend_of(server, kube.backend, kube.given) == "kubernetes":
            entry = scope.kubernetes_entry(server)
            kubernetes.remove(server, entry, dry_run=dry_run, where=kube.cluster(scope.project), json_=json_)
            return
    except McpfleetError as exc:
        _fail(exc)

    async def work(deployer: DockerDeployer) -> list[Change]:
        changes = await deployer.plan_down(server)
        if not changes and server is not None:
            scope.check_named(server)
        if dry_run or not changes:
            return changes
        with _progress(f"removing {len(changes)} object{'s' if len(changes) != 1 else ''}"):
            return await deployer.down(server)

    changes = _in_project(scope, work)
    name = scope.project
    if json_:
        output.print_json({"project": name, "dry_run": dry_run, "changes": [change.as_json() for change in changes]})
    elif not changes:
        output.plain(f"nothing to remove in project {name!r}" + (f" of server {server!r}" if server else ""))
    else:
        _print_changes(changes, done=not dry_run)


def _print_changes(changes: list[Change], *, done: bool) -> None:
    """One line per change, `created container p-web-2 (replica 2 of 3)` or `would create ...`."""
    if not changes:
        output.plain("nothing to change")
    for change in changes:
        verb = _DONE[change.action] if done else f"would {change.action}"
        output.plain(f"{verb} {change.kind} {change.name} ({change.reason})")
