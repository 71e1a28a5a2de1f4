"""A Kubernetes API server for tests: kmock's KubernetesScaffold (HTTP, discovery) plus the object store, verbs,
selectors, watches and fault hooks a deployer needs, served over real HTTP to `kubernetes_asyncio`.

kmock 0.8's own KubernetesEmulator fails half of what a deployer does (see /work/shared/REFERENCE.md), so this
subclass keeps only kmock's HTTP plumbing, request parsing and discovery, and serves every resource URL itself.
kmock's own reactions (its DSL) apply to the other URLs only.

Known differences from a real API server:
- No validation, defaulting or admission: post complete objects. Unknown resources are 404.
- Server-side apply and strategic merge act as a JSON merge (RFC 7386: lists replace, `null` deletes); no field
  ownership, so `force` never matters and apply never conflicts; `fieldManager` is required for apply only.
- Deletion: `propagationPolicy` Orphan strips the ownerReferences at once; Foreground acts like Background; the
  garbage collector is the harness's (kube_cluster.py). Pods are deleted gracefully (deletionTimestamp, then the
  kubelet's final delete with gracePeriodSeconds=0) only while `graceful_pods` is set (the harness sets it).
- Status: `status` is dropped from creates and kept out of PUT/PATCH of the main resource for resources with a
  status subresource; `/status` PUT/PATCH or the Python API (`replace(..., subresource="status")`) write it.
- Watches: history is kept until `compact()` (or `history_limit`); a watch from an older resourceVersion gets an
  ERROR event with a 410 Status, like the real server. One BOOKMARK only, when `timeoutSeconds` ends a watch
  that allows bookmarks. No watch cache lag, no sendInitialEvents. A label change moving an object out of (into)
  a watch's selector is sent as DELETED (ADDED), as the real watch cache does.
- Lists ignore resourceVersion/limit/continue (always the current state, one page).
- pods/log serves what the harness appended (one buffer per pod across restarts; no `previous`, `container`).
- No authentication: `deny()` rules stand in for RBAC; every request is made by `user`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import random
import re
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp.web
import jsonpatch
import kmock
import yaml
from kubernetes_asyncio import client

Obj = dict[str, Any]


class Resource(NamedTuple):
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has a status subresource

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:  # "deployments.apps", "pods"
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = {
    r.plural: r
    for r in [
        Resource("", "v1", "namespaces", "Namespace", namespaced=False, status=True),
        Resource("", "v1", "pods", "Pod", status=True),
        Resource("", "v1", "services", "Service", status=True),
        Resource("", "v1", "secrets", "Secret"),
        Resource("", "v1", "configmaps", "ConfigMap"),
        Resource("", "v1", "serviceaccounts", "ServiceAccount"),
        Resource("", "v1", "events", "Event"),
        Resource("apps", "v1", "deployments", "Deployment", status=True),
        Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
        Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", status=True),
        Resource("coordination.k8s.io", "v1", "leases", "Lease"),
        Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", status=True),
        Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
        Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ]
}


INITIAL_STATUS: dict[str, Obj] = {
    "namespaces": {"phase": "Active"},
    "pods": {"phase": "Pending"},
    "services": {"loadBalancer": {}},
    "poddisruptionbudgets": {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0},
    "horizontalpodautoscalers": {"desiredReplicas": 0},
}


class ApiError(Exception):
    """A failure answered as a v1 Status (the body `kubernetes_asyncio` puts into ApiException.body)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


class ApiCall(NamedTuple):
    """One HTTP request in Kubernetes terms, as RBAC sees it."""

    verb: str  # get list watch create update patch delete deletecollection
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge and apply)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


_TERM = re.compile(r"(?:[^,(]|\([^)]*\))+")


def label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A `labelSelector` string (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) as a predicate on labels."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for raw in _TERM.findall(text or ""):
        term = raw.strip()
        if not term:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: k in labels and labels[k] in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w.-]*)", term):
            key, op, value = m[1], m[2], m[3]
            if op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                tests.append(lambda labels, k=key, v=value: k in labels and labels[k] == v)
        elif m := re.fullmatch(r"!\s*([\w./-]+)", term):
            tests.append(lambda labels, k=m[1]: k not in labels)
        elif re.fullmatch(r"[\w./-]+", term):
            tests.append(lambda labels, k=term: k in labels)
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(test(labels) for test in tests)


def field_selector(text: str | None) -> Callable[[Obj], bool]:
    """A `fieldSelector` (`metadata.name=x,metadata.namespace!=y`, any dotted path) as a predicate on objects."""
    tests: list[Callable[[Obj], bool]] = []
    for raw in (text or "").split(","):
        if not raw.strip():
            continue
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|!=|=)\s*(\S*)\s*", raw)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {raw!r}")

        def value(obj: Obj, path: list[str] = m[1].split(".")) -> str:
            for part in path:
                obj = obj.get(part, {}) if isinstance(obj, dict) else {}
            return "" if obj == {} else str(obj)

        if m[2] == "!=":
            tests.append(lambda obj, f=value, v=m[3]: f(obj) != v)
        else:
            tests.append(lambda obj, f=value, v=m[3]: f(obj) == v)
    return lambda obj: all(test(obj) for test in tests)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector object (`matchLabels`, `matchExpressions`) applied to labels; empty matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class Route(NamedTuple):
    """A resource URL: /api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]] or /apis/GROUP/VERSION/..."""

    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None

    @classmethod
    def parse(cls, path: str) -> Route | None:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2:] not in (["status"], ["finalize"]):
            namespace, rest = rest[1], rest[2:]
        rest += [None, None]  # type: ignore[list-item]
        return cls(group, version, rest[0], namespace, rest[1], "/".join(filter(None, rest[2:])) or None)


class _Stream:
    """An open watch or log-follow stream: events arrive on `queue`; `CUT` ends it."""

    CUT = object()

    def __init__(self, match: Callable[[Obj], bool] | None = None) -> None:
        self.match = match
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def offer(self, kind: str, old: Obj | None, new: Obj) -> None:
        assert self.match is not None
        was, now_ = old is not None and self.match(old), self.match(new)
        if kind == "MODIFIED" and was and not now_:
            kind = "DELETED"  # moved out of the selector, as the real watch cache reports it
        elif kind == "MODIFIED" and now_ and not was:
            kind = "ADDED"
        elif not now_ and not (kind == "DELETED" and was):
            return
        self.queue.put_nowait({"type": kind, "object": new})


class KubeEmulator(kmock.KubernetesScaffold):
    """The API server. `async with KubeEmulator().running() as kube:` serves it on `kube.url`.

    Python API for harnesses and tests (no request log, no deny rules): create, get, find, list, replace, patch,
    delete, subscribe, append_log/close_log. Fault hooks: deny/allow_all, compact, cut_watches, down/stop/start.
    (`get`, `patch`, `delete` and `url` replace kmock's HTTP-client shortcuts of the same names on purpose.)
    """

    def __init__(self, *, user: str = "system:serviceaccount:default:default", history_limit: int = 100_000) -> None:
        super().__init__()
        self.user = user
        self.history_limit = history_limit
        self.graceful_pods = False
        self.calls: list[ApiCall] = []
        self.failures: list[Exception] = []  # the emulator's own bugs, answered as 500
        self.host, self.port = "127.0.0.1", 0
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = 0
        self._history: list[tuple[int, str, str, Obj | None, Obj]] = []  # (rv, plural, type, old, new)
        self._compacted = 0  # watches from a resourceVersion below this get 410 Gone
        self._watches: dict[_Stream, str | None] = {}  # stream -> plural (None: every resource)
        self._logs: dict[tuple[str, str], bytearray] = {}
        self._logs_ended: set[tuple[str, str]] = set()  # containers not running: a follow ends at once
        self._followers: dict[tuple[str, str], set[_Stream]] = {}
        self._denied: list[tuple[str, str, str, str | None]] = []
        self._runner: aiohttp.web.ServerRunner | None = None
        for res in RESOURCES.values():
            self.resources[f"{res.api_version}/{res.plural}"] = kmock.ResourceInfo(
                kind=res.kind,
                namespaced=res.namespaced,
                verbs=["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                subresources=(["status"] if res.status else []) + (["scale"] if res.plural == "deployments" else []),
            )
        for ns in ("default", "kube-system", "kube-public"):
            self.create("namespaces", {"metadata": {"name": ns}})

    # --- serving ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[KubeEmulator]:
        async with self:
            await self.start()
            try:
                yield self
            finally:
                await self.stop()

    async def start(self) -> None:
        """Listen (again) on the same port: stored objects and history survive a stop/start."""
        self._runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self), shutdown_timeout=2.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and drop every connection: clients see the API as unreachable."""
        self.cut_watches()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @contextlib.asynccontextmanager
    async def down(self) -> AsyncIterator[None]:
        """`async with kube.down():` the API is unreachable inside, back on the same port after."""
        await self.stop()
        try:
            yield
        finally:
            await self.start()

    def configuration(self) -> client.Configuration:
        return client.Configuration(host=self.url)

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(self.configuration())

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                    "users": [{"name": "emulator", "user": {"token": "emulator"}}],
                    "contexts": [
                        {
                            "name": "emulator",
                            "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                        }
                    ],
                    "current-context": "emulator",
                }
            )
        )
        return path

    # --- fault hooks -----------------------------------------------------------------------------------------

    def deny(self, verb: str, group: str, resource: str, namespace: str | None = None) -> None:
        """Answer 403 Forbidden to `verb` on `resource` (may be "deployments/scale") in `namespace` (None: all)."""
        self._denied.append((verb, group, resource, namespace))

    def allow_all(self) -> None:
        self._denied.clear()

    def compact(self) -> None:
        """Forget the event history: watches resuming from any older resourceVersion get 410 Gone."""
        self._history.clear()
        self._compacted = self._rv

    def cut_watches(self) -> None:
        """End every open watch and log-follow stream (the clients see the stream close)."""
        for stream in [*self._watches, *(s for group in self._followers.values() for s in group)]:
            stream.queue.put_nowait(_Stream.CUT)

    @property
    def open_watches(self) -> int:
        return sum(1 for plural in self._watches.values() if plural is not None)

    # --- the Python API (the store; every write emits watch events) ------------------------------------------

    def find(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        obj = self._objects.get((plural, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def get(self, plural: str, namespace: str | None, name: str) -> Obj:
        obj = self.find(plural, namespace, name)
        if obj is None:
            raise self._not_found(plural, name)
        return obj

    def list(
        self, plural: str, namespace: str | None = None, label: str | None = None, field: str | None = None
    ) -> list[Obj]:
        match = self._matcher(plural, namespace, label, field)
        return [copy.deepcopy(obj) for (p, _, _), obj in sorted(self._objects.items()) if p == plural and match(obj)]

    def create(self, plural: str, obj: Obj, namespace: str | None = None) -> Obj:
        res = RESOURCES[plural]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if namespace and meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the request")
        ns = (namespace or meta.get("namespace") or "default") if res.namespaced else ""
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f'{res.kind} "" is invalid: metadata.name: Required value')
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        if (plural, ns, meta["name"]) in self._objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{res.qualified} "{meta["name"]}" already exists',
                self._details(res, meta["name"]),
            )
        if ns:
            namespace_obj = self._objects.get(("namespaces", "", ns))
            if namespace_obj is None or namespace_obj["metadata"].get("deletionTimestamp"):
                raise self._not_found("namespaces", ns)
            meta["namespace"] = ns
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        obj.update(apiVersion=res.api_version, kind=res.kind)
        if res.status:  # what the real server's create strategies start from (non-omitempty Go fields)
            obj["status"] = copy.deepcopy(INITIAL_STATUS.get(plural, {}))
        return self._store(plural, obj, None)

    def replace(self, plural: str, obj: Obj, subresource: str | None = None) -> Obj:
        """PUT: the whole object (subresource "status": only its status), 409 on a stale resourceVersion."""
        meta = obj.get("metadata", {})
        current = self.get(plural, meta.get("namespace"), meta.get("name", ""))
        self._precondition(plural, current, meta.get("resourceVersion"))
        return self._update(plural, current, copy.deepcopy(obj), subresource)

    def patch(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str = "application/merge-patch+json",
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> Obj:
        """PATCH: merge, strategic (as merge), json-patch, or apply (as merge; creates when missing)."""
        apply = content_type.startswith("application/apply-patch")
        if apply and not field_manager:
            raise ApiError(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value: is required for apply patch",
            )
        if apply and isinstance(body, (str, bytes)):
            body = yaml.safe_load(body)
        current = self.find(plural, namespace, name)
        if current is None:
            if not apply or subresource:
                raise self._not_found(plural, name)
            return self.create(plural, merge(body, {"metadata": {"name": name}}), namespace)
        view = self._scale(current) if subresource == "scale" else current
        if content_type.startswith("application/json-patch"):
            try:
                patched = jsonpatch.apply_patch(view, body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", str(exc)) from None
            expected = patched.get("metadata", {}).get("resourceVersion")
        else:
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the patch is not a JSON object")
            patched = merge(view, body)
            expected = (body.get("metadata") or {}).get("resourceVersion")
        self._precondition(plural, current, expected)
        if subresource == "scale":
            return self._scale(self._set_replicas(current, patched))
        return self._update(plural, current, patched, subresource)

    def delete(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        grace_period: int | None = None,
        propagation: str | None = None,
    ) -> Obj:
        current = self.get(plural, namespace, name)
        meta = current["metadata"]
        if propagation == "Orphan":
            for obj in list(self._objects.values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == meta["uid"] for ref in refs):
                    kept = [ref for ref in refs if ref.get("uid") != meta["uid"]]
                    orphan = merge(obj, {"metadata": {"ownerReferences": kept or None}})
                    self._store(self._plural(obj), orphan, obj)
        if plural == "namespaces":
            for key, obj in list(self._objects.items()):
                if key[1] == name:
                    self._remove(key[0], obj)
            return self._remove(plural, current)
        graceful = plural == "pods" and self.graceful_pods and grace_period != 0
        if graceful or meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return current
            meta["deletionTimestamp"] = now()
            if graceful:
                grace = current.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                meta["deletionGracePeriodSeconds"] = grace if grace_period is None else grace_period
            return self._store(plural, current, self._objects[(plural, meta.get("namespace", ""), name)])
        return self._remove(plural, current)

    def subscribe(self) -> _Stream:
        """An in-process watch of every resource: `(await stream.queue.get())` is an event; `unsubscribe` it."""
        stream = _Stream(lambda obj: True)
        self._watches[stream] = None
        return stream

    def unsubscribe(self, stream: _Stream) -> None:
        self._watches.pop(stream, None)

    def append_log(self, namespace: str, pod: str, data: bytes) -> None:
        self._logs.setdefault((namespace, pod), bytearray()).extend(data)
        self._logs_ended.discard((namespace, pod))
        for stream in self._followers.get((namespace, pod), ()):
            stream.queue.put_nowait(data)

    def close_log(self, namespace: str, pod: str) -> None:
        """The container ended: followers see the end of the log."""
        self._logs_ended.add((namespace, pod))
        for stream in self._followers.get((namespace, pod), ()):
            stream.queue.put_nowait(_Stream.CUT)

    # --- store internals -------------------------------------------------------------------------------------

    @staticmethod
    def _plural(obj: Obj) -> str:
        return next(r.plural for r in RESOURCES.values() if r.kind == obj.get("kind"))

    @staticmethod
    def _details(res: Resource, name: str) -> Obj:
        return {"name": name, "group": res.group, "kind": res.plural}

    def _not_found(self, plural: str, name: str) -> ApiError:
        res = RESOURCES[plural]
        return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', self._details(res, name))

    def _precondition(self, plural: str, current: Obj, expected: str | None) -> None:
        if expected and expected != current["metadata"]["resourceVersion"]:
            res, name = RESOURCES[plural], current["metadata"]["name"]
            message = (
                f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            raise ApiError(409, "Conflict", message, self._details(res, name))

    def _matcher(
        self, plural: str, namespace: str | None, label: str | None, field: str | None
    ) -> Callable[[Obj], bool]:
        labels, fields = label_selector(label), field_selector(field)
        return lambda obj: (
            obj.get("kind") == RESOURCES[plural].kind
            and (not namespace or obj["metadata"].get("namespace") == namespace)
            and labels(obj["metadata"].get("labels") or {})
            and fields(obj)
        )

    def _update(self, plural: str, current: Obj, new: Obj, subresource: str | None) -> Obj:
        res = RESOURCES[plural]
        if subresource == "status":
            new = {**current, "status": new.get("status", {})}
        elif res.status:
            new["status"] = current.get("status", {})
        meta = new.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp"):
            if key in current["metadata"]:
                meta[key] = current["metadata"][key]
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        new.update(apiVersion=res.api_version, kind=res.kind)

        def spec(obj: Obj) -> Obj:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

        if new == current:
            return current  # a no-op write keeps the resourceVersion, as on a real server
        if spec(new) != spec(current):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and plural != "pods":
            return self._remove(plural, new)
        return self._store(plural, new, self._objects[(plural, meta.get("namespace", ""), meta["name"])])

    def _store(self, plural: str, obj: Obj, old: Obj | None) -> Obj:
        if plural == "secrets" and "stringData" in obj:  # the API server folds stringData into data
            encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()}
            obj["data"] = {**(obj.get("data") or {}), **encoded}
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        self._emit(plural, "ADDED" if old is None else "MODIFIED", old, obj)
        return copy.deepcopy(obj)

    def _remove(self, plural: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        old = self._objects.pop((plural, meta.get("namespace", ""), meta["name"]))
        gone = copy.deepcopy(old)
        self._rv += 1
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(plural, "DELETED", old, gone)
        if plural == "pods":
            self.close_log(meta["namespace"], meta["name"])
            self._logs.pop((meta["namespace"], meta["name"]), None)
            self._logs_ended.discard((meta["namespace"], meta["name"]))
        return copy.deepcopy(gone)

    def _emit(self, plural: str, kind: str, old: Obj | None, new: Obj) -> None:
        snapshot = copy.deepcopy(new)
        self._history.append((self._rv, plural, kind, old, snapshot))
        if len(self._history) > self.history_limit:
            dropped = self._history[: len(self._history) // 2]
            del self._history[: len(dropped)]
            self._compacted = dropped[-1][0]
        for stream, watched in list(self._watches.items()):
            if watched in (None, plural):
                stream.offer(kind, old, snapshot)

    def _scale(self, deployment: Obj) -> Obj:
        meta = deployment["metadata"]
        selector = deployment.get("spec", {}).get("selector", {}).get("matchLabels", {})
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": deployment.get("spec", {}).get("replicas", 1)},
            "status": {
                "replicas": deployment.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
            },
        }

    def _set_replicas(self, deployment: Obj, scale: Obj) -> Obj:
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        return self._update("deployments", deployment, merge(deployment, {"spec": {"replicas": replicas}}), None)

    # --- HTTP ------------------------------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        route = Route.parse(raw.path)
        if route is None:
            return await super().__call__(raw)  # discovery and kmock's own reactions
        try:
            res = RESOURCES.get(route.plural)
            if res is None or (res.group, res.version) != (route.group, route.version):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return await self._serve(raw, route, res, await raw.read())
        except ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        except Exception as exc:
            self.failures.append(exc)
            failure = ApiError(
                500, "InternalError", f"{type(exc).__name__}: {exc}", {"causes": [{"message": traceback.format_exc()}]}
            )
            return aiohttp.web.json_response(failure.status(), status=500)

    @staticmethod
    def _verb(raw: aiohttp.web.BaseRequest, route: Route) -> str:
        if raw.method == "GET":
            watch = raw.query.get("watch", "").lower() in ("true", "1")
            return "watch" if watch else "get" if route.name else "list"
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        verb = verbs.get(raw.method, raw.method.lower())
        return "deletecollection" if verb == "delete" and not route.name else verb

    def _check_denied(self, call: ApiCall) -> None:
        full = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        for verb, group, resource, namespace in self._denied:
            if (verb, group, resource) == (call.verb, call.group, full) and namespace in (None, call.namespace):
                qualified = f"{call.resource}.{call.group}" if call.group else call.resource
                subject = f'{qualified} "{call.name}"' if call.name else qualified
                scope = f'in the namespace "{call.namespace}"' if call.namespace else "at the cluster scope"
                message = (
                    f'{subject} is forbidden: User "{self.user}" cannot {call.verb} resource "{full}" '
                    f'in API group "{call.group}" {scope}'
                )
                details = {"name": call.name or "", "group": call.group, "kind": call.resource}
                raise ApiError(403, "Forbidden", message, details)

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, route: Route, res: Resource, raw_body: bytes
    ) -> aiohttp.web.StreamResponse:
        verb, ns, name, sub, params = self._verb(raw, route), route.namespace, route.name, route.subresource, raw.query
        call = ApiCall(verb, res.group, res.plural, sub, ns, name)
        self.calls.append(call)
        self._check_denied(call)
        if verb == "watch":
            field = ",".join(filter(None, [params.get("fieldSelector"), name and f"metadata.name={name}"]))
            return await self._watch(raw, route, res, params.get("labelSelector"), field)
        if sub == "log" and verb == "get":
            return await self._log(raw, ns or "", name or "")
        if sub not in (None, "status") and not (sub == "scale" and res.plural == "deployments"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        body: Any = None
        if raw_body:
            try:
                body = yaml.safe_load(raw_body) if "yaml" in raw.content_type else json.loads(raw_body)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"the body is not valid: {exc}") from None
        result: Obj
        code = 200
        if verb == "list":
            items = self.list(res.plural, ns, params.get("labelSelector"), params.get("fieldSelector"))
            result = self._list(res, items)
        elif verb == "get":
            result = self.get(res.plural, ns, name or "")
            result = self._scale(result) if sub == "scale" else result
        elif verb == "create":
            result, code = self.create(res.plural, body or {}, ns), 201
        elif verb == "update" and sub == "scale":
            current = self.get(res.plural, ns, name or "")
            self._precondition(res.plural, current, (body.get("metadata") or {}).get("resourceVersion"))
            result = self._scale(self._set_replicas(current, body))
        elif verb == "update":
            body.setdefault("metadata", {}).setdefault("namespace", ns)
            if body["metadata"].get("name") != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            result = self.replace(res.plural, body, sub)
        elif verb == "patch":
            existed = self.find(res.plural, ns, name or "") is not None
            content_type = raw.content_type or "application/merge-patch+json"
            result = self.patch(res.plural, ns, name or "", body, content_type, sub, params.get("fieldManager"))
            code = 200 if existed else 201
        elif verb == "delete":
            grace = params.get("gracePeriodSeconds", (body or {}).get("gracePeriodSeconds"))
            propagation = params.get("propagationPolicy", (body or {}).get("propagationPolicy"))
            result = self.delete(res.plural, ns, name or "", None if grace is None else int(grace), propagation)
        else:  # deletecollection
            items = self.list(res.plural, ns, params.get("labelSelector"), params.get("fieldSelector"))
            result = self._list(
                res, [self.delete(res.plural, o["metadata"].get("namespace"), o["metadata"]["name"]) for o in items]
            )
        return aiohttp.web.json_response(result, status=code)

    def _list(self, res: Resource, items: Iterable[Obj]) -> Obj:
        return {
            "apiVersion": res.api_version,
            "kind": f"{res.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": list(items),
        }

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, route: Route, res: Resource, label: str | None, field: str
    ) -> aiohttp.web.StreamResponse:
        params = raw.query
        since = params.get("resourceVersion") or "0"
        stream = _Stream(self._matcher(res.plural, route.namespace, label, field))
        # No await from here until the subscription: nothing can happen between the snapshot and the stream.
        if since == "0":
            initial = [{"type": "ADDED", "object": obj} for obj in self.list(res.plural, route.namespace, label, field)]
        elif not since.isdigit() or int(since) < self._compacted:
            gone = ApiError(410, "Expired", f"too old resource version: {since} ({self._rv})").status()
            initial = [{"type": "ERROR", "object": gone}]
        else:
            replay = _Stream(stream.match)
            for rv, plural, kind, old, new in self._history:
                if plural == res.plural and rv > int(since):
                    replay.offer(kind, old, new)
            initial = [replay.queue.get_nowait() for _ in range(replay.queue.qsize())]
        if not (initial and initial[0]["type"] == "ERROR"):
            self._watches[stream] = res.plural
        for event in initial:
            stream.queue.put_nowait(event)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        event = await stream.queue.get()
                        if event is _Stream.CUT:
                            break
                        await response.write(json.dumps(event).encode() + b"\n")
                        if event["type"] == "ERROR":
                            break
            except TimeoutError:
                if params.get("allowWatchBookmarks", "").lower() in ("true", "1"):  # where to resume from
                    mark = {
                        "apiVersion": res.api_version,
                        "kind": res.kind,
                        "metadata": {"resourceVersion": str(self._rv)},
                    }
                    await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._watches.pop(stream, None)
        return response

    async def _log(self, raw: aiohttp.web.BaseRequest, namespace: str, pod: str) -> aiohttp.web.StreamResponse:
        self.get("pods", namespace, pod)
        data = bytes(self._logs.get((namespace, pod), b""))
        if raw.query.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[max(0, len(lines) - int(raw.query["tailLines"])) :])
        if raw.query.get("follow", "").lower() not in ("true", "1"):
            return aiohttp.web.Response(body=data, content_type="text/plain")
        stream = _Stream()
        self._followers.setdefault((namespace, pod), set()).add(stream)
        if (namespace, pod) in self._logs_ended:
            stream.queue.put_nowait(_Stream.CUT)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        try:
            await response.prepare(raw)
            chunk: Any = data
            while chunk is not _Stream.CUT:
                if chunk:
                    await response.write(chunk)
                chunk = await stream.queue.get()
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._followers[(namespace, pod)].discard(stream)
        return response


@contextlib.asynccontextmanager
async def running_kube(**options: Any) -> AsyncIterator[KubeEmulator]:
    """`async with running_kube() as kube:` an emulator serving on `kube.url` until the block ends."""
    async with KubeEmulator(**options).running() as kube:
        yield kube
