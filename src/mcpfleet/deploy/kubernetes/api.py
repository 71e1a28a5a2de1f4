"""The one connection to the Kubernetes API that the gateway and the CLI use.

**Library: `kubernetes_asyncio`** (Plan Document, section 12.4): the official client generated from the
same OpenAPI spec as `kubernetes`, on asyncio and aiohttp (as the gateway and `aiodocker` are), so a watch
costs no thread; it loads kubeconfig files (contexts, exec and token auth, client certificates) and the
in-cluster service account. Requests go through its `ApiClient` (configuration, authentication, TLS) with
plain JSON bodies, since mcpfleet's objects are dicts built by `manifests.py`.

Every failure becomes a `DeployError` naming what was refused: the verb, the resource and the namespace of
a 403 (the Role to change), a namespace that does not exist, an API server that does not answer
(`ClusterUnavailableError`). Short calls are bounded (`REQUEST_TIMEOUT`); watches by the server-side
`timeoutSeconds` and a read timeout beyond it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio

from mcpfleet.errors import DeployError

log = logging.getLogger("mcpfleet.kubernetes")

REQUEST_TIMEOUT = 30.0  # seconds for one short API call
CONNECT_TIMEOUT = 5.0
WATCH_TIMEOUT = 240  # seconds a watch asks the server to hold it open (then it is opened again)
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True)
class Kind:
    """Where a kind of object lives in the API: `api_version` (`v1`, `apps/v1`) and its plural resource."""

    api_version: str
    resource: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        found = f"{root}/namespaces/{namespace}/{self.resource}"
        if name is not None:
            found += f"/{name}"
        if subresource is not None:
            found += f"/{subresource}"
        return found


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps/v1", "deployments"),
    "Service": Kind("v1", "services"),
    "Secret": Kind("v1", "secrets"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Pod": Kind("v1", "pods"),
    "EndpointSlice": Kind("discovery.k8s.io/v1", "endpointslices"),
}


class ClusterUnavailableError(DeployError):
    """The Kubernetes API does not answer, or no configuration says where it is (exit 3)."""


class ConflictError(DeployError):
    """409: the object changed since it was read (a precondition on `resourceVersion` failed), or exists."""


class GoneError(DeployError):
    """410: a watch's `resourceVersion` is older than the API server keeps; list again."""


class Cluster:
    """A Kubernetes API connection, made on first use from `kubeconfig` and `context` (else `$KUBECONFIG`
    or `~/.kube/config`), or from the pod's service account when running in a cluster with no kubeconfig.
    `namespace` None: the context's namespace, the pod's own in a cluster, else `default`."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.default_namespace = "default"
        self._client: Any = None
        self._connecting = anyio.Lock()

    async def client(self) -> Any:
        """The `ApiClient`, configured on first use (once, whoever asks first). ClusterUnavailableError names
        what is missing."""
        async with self._connecting:
            if self._client is None:
                self._client = await self._connect()
            return self._client

    async def reconnect(self) -> None:
        """Read the configuration again on the next call: credentials expire (exec and OIDC tokens of a
        kubeconfig are not refreshed by the client); the service account's token file is re-read anyway."""
        async with self._connecting:
            client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _connect(self) -> Any:
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        in_cluster = self.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
        path = self.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        if not in_cluster and not _exists(path or "~/.kube/config"):
            raise ClusterUnavailableError(
                f"the kubeconfig {path or '~/.kube/config'} does not exist (CLI: --kubeconfig and --context;"
                " gateway: KUBECONFIG; or run in a cluster)"
            )
        try:
            if in_cluster and not (path and _exists(path)):
                self.default_namespace = _in_cluster(configuration)
            else:
                loader = await config.load_kube_config(
                    config_file=path, context=self.context, client_configuration=configuration, persist_config=False
                )
                context: Any = loader.current_context or {}
                self.default_namespace = (context.get("context") or {}).get("namespace") or "default"
        except (config.ConfigException, OSError, TypeError, ValueError) as exc:
            where = path or "~/.kube/config"
            known = _contexts(path)
            hint = f"; its contexts: {', '.join(known)}" if self.context and known else ""
            raise ClusterUnavailableError(
                f"no Kubernetes configuration could be loaded from {where}: {exc}{hint} (CLI: --kubeconfig and"
                " --context; gateway: KUBECONFIG; or run in a cluster)"
            ) from None
        return client.ApiClient(configuration)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # --- calls -----------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        kind: Kind,
        namespace: str,
        name: str | None = None,
        *,
        subresource: str | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
        within: float = REQUEST_TIMEOUT,
    ) -> Any:
        """One call; its JSON answer (None for a 404 with `missing_ok`). Errors as the module says; a 401
        reads the configuration again and tries once more (an expired token)."""
        verb = _verb(method, name, query)
        for attempt in (1, 2):
            async with self._call(
                method, kind, namespace, name, subresource, query, body, content_type, within
            ) as answer:
                if answer.status == 401 and attempt == 1:
                    await self.reconnect()
                    continue
                if answer.status == 404 and missing_ok:
                    return None
                text = await _read(answer, verb, kind, namespace)
                if answer.status >= 400:
                    raise _refused(answer.status, text, verb, kind, namespace, name, subresource)
                try:
                    return json.loads(text) if text else None
                except ValueError:
                    raise ClusterUnavailableError(
                        f"the Kubernetes API answered {verb} {kind.resource} in {namespace!r} with no JSON"
                    ) from None
        raise AssertionError("unreachable")

    async def request_text(
        self, kind: Kind, namespace: str, name: str, subresource: str, query: Mapping[str, Any]
    ) -> str:
        """A GET whose answer is text (a pod's `log`)."""
        async with self._call("GET", kind, namespace, name, subresource, query, None, "", REQUEST_TIMEOUT) as answer:
            text: str = await answer.text()
            if answer.status >= 400:
                raise _refused(answer.status, text, "get", kind, namespace, name, subresource)
            return text

    async def stream_lines(
        self, kind: Kind, namespace: str, name: str, subresource: str, query: Mapping[str, Any]
    ) -> AsyncIterator[str]:
        """The lines of a GET that streams text (a followed pod `log`) until the server ends it."""
        async with self._call("GET", kind, namespace, name, subresource, query, None, "", 24 * 3600) as answer:
            if answer.status >= 400:
                raise _refused(answer.status, await answer.text(), "get", kind, namespace, name, subresource)
            while line := await answer.content.readline():
                yield line.decode(errors="replace").rstrip("\n")

    async def watch(
        self, kind: Kind, namespace: str, *, query: Mapping[str, Any], hold: int = WATCH_TIMEOUT
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch (`{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}`) until the
        server ends it (`timeoutSeconds`). A 410, in the stream or as the answer, is GoneError."""
        params = {**query, "watch": "true", "timeoutSeconds": str(hold), "allowWatchBookmarks": "true"}
        async with self._call("GET", kind, namespace, None, None, params, None, "", hold + 30) as answer:
            if answer.status >= 400:
                raise _refused(answer.status, await answer.text(), "watch", kind, namespace, None, None)
            while True:
                try:
                    line = await answer.content.readline()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    log.info("a watch of %s in %r was cut (%s): resuming", kind.resource, namespace, exc)
                    return
                if not line:
                    return  # the server ended it (timeoutSeconds, or it restarted): the caller resumes
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("a watch of %s in %r sent a line that is not JSON: resuming", kind.resource, namespace)
                    return
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise _refused(
                        int(status.get("code") or 500), json.dumps(status), "watch", kind, namespace, None, None
                    )
                yield event

    async def follow(
        self, kind: Kind, namespace: str, query: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, dict[str, Any]]]:
        """The objects `query` selects, by name: the whole set after a list, then again after each change a
        watch reports. A watch that ends (`timeoutSeconds`, a cut stream) is opened again from the last
        `resourceVersion` seen; a 410 Gone (that version is too old) lists again. Other failures raise."""
        while True:
            listed = await self.request("GET", kind, namespace, query=query)
            found = {item["metadata"]["name"]: item for item in listed.get("items") or []}
            version = (listed.get("metadata") or {}).get("resourceVersion")
            yield dict(found)
            try:
                while True:
                    async for event in self.watch(kind, namespace, query={**query, "resourceVersion": version}):
                        item = event.get("object") or {}
                        metadata = item.get("metadata") or {}
                        version = metadata.get("resourceVersion") or version
                        if event.get("type") == "DELETED":
                            found.pop(metadata.get("name", ""), None)
                        elif event.get("type") in ("ADDED", "MODIFIED"):
                            found[metadata.get("name", "")] = item
                        else:
                            continue  # BOOKMARK: only the version moves
                        yield dict(found)
            except GoneError:
                log.info("%s in %r: resource version %s is gone; listing again", kind.resource, namespace, version)

    def _call(
        self,
        method: str,
        kind: Kind,
        namespace: str,
        name: str | None,
        subresource: str | None,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float,
    ) -> _Answer:
        return _Answer(self, method, kind.path(namespace, name, subresource), query, body, content_type, timeout)


class _Answer:
    """`async with`: the aiohttp response of one call; transport failures become ClusterUnavailableError."""

    def __init__(
        self,
        cluster: Cluster,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float,
    ) -> None:
        self.cluster, self.method, self.path, self.query = cluster, method, path, query
        self.body, self.content_type, self.timeout = body, content_type, timeout
        self.response: Any = None

    async def __aenter__(self) -> Any:
        client = await self.cluster.client()
        headers = {"Accept": "application/json"}
        if self.content_type:
            headers["Content-Type"] = self.content_type
        try:
            self.response = await client.call_api(
                self.path,
                self.method,
                query_params=list((self.query or {}).items()),
                header_params=headers,
                body=self.body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(
                    total=self.timeout, sock_connect=CONNECT_TIMEOUT, sock_read=self.timeout
                ),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            host = client.configuration.host
            raise ClusterUnavailableError(
                f"the Kubernetes API at {host} does not answer ({type(exc).__name__}: {exc})"
            ) from None
        return self.response

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.release()


async def _read(answer: Any, verb: str, kind: Kind, namespace: str) -> str:
    """An answer's body; a connection that breaks while it is read is ClusterUnavailableError."""
    try:
        text: str = await answer.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ClusterUnavailableError(
            f"the Kubernetes API's answer to {verb} {kind.resource} in {namespace!r} broke off ({exc})"
        ) from None
    return text


def _contexts(path: str | None) -> list[str]:
    """The context names a kubeconfig holds (empty when it cannot be read)."""
    try:
        import yaml

        with open(os.path.expanduser(path or "~/.kube/config")) as file:
            document = yaml.safe_load(file) or {}
        return [str(c.get("name")) for c in document.get("contexts") or [] if isinstance(c, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def _exists(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path))


def _in_cluster(configuration: Any) -> str:
    """Configure from the pod's service account; the pod's namespace."""
    from kubernetes_asyncio import config

    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    with open(IN_CLUSTER_NAMESPACE) as file:
        return file.read().strip() or "default"


def _verb(method: str, name: str | None, query: Mapping[str, Any] | None) -> str:
    if method == "GET":
        return "get" if name else "list"
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _refused(
    status: int,
    text: str,
    verb: str,
    kind: Kind | None,
    namespace: str,
    name: str | None,
    subresource: str | None,
) -> DeployError:
    """The DeployError for an API answer of `status`, naming the verb and resource (the Status message)."""
    try:
        message = json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        message = text.strip()[:300]
    resource = "?" if kind is None else kind.resource + (f"/{subresource}" if subresource else "")
    group = "" if kind is None else kind.group
    target = f"{resource}{'.' + group if group else ''}{' ' + repr(name) if name else ''} in namespace {namespace!r}"
    if status == 403:
        return DeployError(
            f"Kubernetes forbids {verb} on {target}: {message} (grant the verb in the gateway's Role:"
            " charts/mcpfleet, or the RBAC of whoever runs mcpfleet)"
        )
    if status == 401:
        return ClusterUnavailableError(f"the Kubernetes API refused our credentials ({message}): check the kubeconfig")
    if status == 404:
        if "namespaces" in message and "not found" in message:
            return DeployError(
                f"{verb} {target}: namespace {namespace!r} does not exist; mcpfleet never creates namespaces:"
                f" create it (kubectl create namespace {namespace}), or set 'namespace' / --namespace"
            )
        return DeployError(f"{verb} {target}: not found ({message})")
    if status == 409:
        return ConflictError(f"{verb} {target}: conflict ({message})")
    if status == 410:
        return GoneError(f"{verb} {target}: {message or 'resource version too old'}")
    if status >= 500:
        return ClusterUnavailableError(f"the Kubernetes API failed to {verb} {target}: {status} {message}")
    return DeployError(f"Kubernetes refused to {verb} {target}: {status} {message}")
