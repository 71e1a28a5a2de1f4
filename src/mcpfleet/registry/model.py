"""The registry's validated, immutable form.

Every entry type is a frozen pydantic model with unknown fields forbidden. The models accept the field
spellings of every registry form the loader recognises (`cmd` for `command`, `url` and Windsurf's
`serverUrl` for `endpoint`, `command` + `args` as the MCP clients write them), so a located error always
names the field the user actually wrote. Checks of one field are field validators, so their errors are
located at that field. Defaults are filled in here, so the normalized form is complete and explicit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SERVER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# Path segments the gateway serves itself: a server cannot take them as its id.
RESERVED_IDS = frozenset({"healthz", "readyz", "servers", "metrics", "admin", ".well-known"})
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 section 5.6.2)

Seconds = Annotated[float, Field(gt=0)]
Argv = tuple[str, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys a file may write besides the fields: other spellings folded by a before-validator, and keys the
    # loader reads itself. Unknown keys get their suggestion from these and the fields.
    other_keys: ClassVar[tuple[str, ...]] = ()


def accepted_keys(model: type[BaseModel]) -> list[str]:
    """Every key a file may write in a mapping of this model (`id` is the entry's key, never a field)."""
    keys = [name for name in model.model_fields if name != "id"]
    for cls in model.__mro__:
        keys += [key for key in vars(cls).get("other_keys", ()) if key not in keys]
    return keys


def model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model of the mapping at `loc` under `model` (`("pool",)` -> Pool, `("endpoints", "0")` -> Endpoint)."""
    current: type[BaseModel] = model
    for part in loc:
        if part.isdigit():
            continue
        field = current.model_fields.get(part)
        found = _model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        current = found
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


class Timeouts(_Model):
    """How long to wait, in seconds. Defaults suit slow tools; `idle_stream` stays above the SDK's 15 s ping.

    connect: TCP connect to an HTTP endpoint. startup: a stdio process spawned until its MCP handshake ends.
    first_byte: a request sent until its response starts. idle_stream: silence tolerated on an open stream.
    shutdown: each wait of the stop sequence (after closing stdin, after SIGTERM). drain: how long sessions
    keep being served where new work no longer goes (a replica that left or is not ready, a process of the
    entry's previous command or env, a server removed from the registry); then they end (404).
    """

    connect: Seconds = 10.0
    startup: Seconds = 30.0
    first_byte: Seconds = 300.0
    idle_stream: Seconds = 300.0
    shutdown: Seconds = 2.0
    drain: Seconds = 600.0


class Balancer(_Model):
    strategy: Literal["round_robin", "least_connections", "p2c", "random", "consistent_hash"] = "round_robin"
    # `consistent_hash`: the request's key is this header's value, or the client's address when the header is
    # absent or not set; the same key goes to the same replica while it serves (rendezvous hashing).
    hash_header: str | None = None

    @field_validator("hash_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not HEADER_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an HTTP header name (a token such as X-Tenant-Id: no spaces or separators)"
            )
        return value

    # `pin`: a 2026-07-28 retry carrying `requestState` goes back to the replica that issued it (the SDK seals
    # the state with a per-process key). `any`: spread it like other requests (replicas share the key).
    request_state: Literal["pin", "any"] = "pin"


class Pool(_Model):
    """stdio process pool. `session`: one process per client session; `shared`: many sessions per process."""

    mode: Literal["session", "shared"] = "session"
    min: Annotated[int, Field(ge=0)] = 0
    max: Annotated[int, Field(ge=1)] = 16
    idle_timeout: Seconds = 300.0
    max_lifetime: Seconds | None = None
    max_sessions_per_process: Annotated[int, Field(ge=1)] | None = None
    # A new session waits this long for its process: a free slot, then its turn to start (a burst of cold
    # starts queues: `max_starting` at once). 30 s fits 64 cold starts of a Python SDK server on 2 cores.
    acquire_timeout: Seconds = 30.0
    # Processes in their start-up at once (spawn until the first message); None: one per CPU (measured best).
    max_starting: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Pool:
        if self.min > self.max:
            raise ValueError(f"pool.min ({self.min}) is greater than pool.max ({self.max})")
        return self


class Health(_Model):
    active: bool = False
    interval: Seconds = 30.0
    timeout: Seconds = 5.0
    failures_to_eject: Annotated[int, Field(ge=1)] = 3
    ejection_backoff: Seconds = 5.0
    max_ejection_backoff: Seconds = 300.0


class Resources(_Model):
    """Per-replica CPU and memory, in Kubernetes quantity syntax (`500m`, `256Mi`)."""

    cpu: str | None = None
    memory: str | None = None

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # `cpu: 2` and `memory: 1048576` as YAML writes them: numbers, taken as the quantity they spell.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not _QUANTITY.match(value):
            examples = "256Mi, 1Gi or 1048576 (bytes)" if info.field_name == "memory" else "500m, 0.5 or 2"
            raise ValueError(f"{value!r} is not a quantity such as {examples}")
        return value


def check_url(url: str) -> str:
    """Accept an absolute http(s) URL with a host; the message names what is wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"malformed URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"malformed URL {url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"malformed URL {url!r}: it has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"malformed URL {url!r}: a query or fragment is not allowed in an endpoint")
    return url


class Endpoint(_Model):
    """One replica of an HTTP server: its base URL and its share of new sessions."""

    url: str
    weight: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _valid_url(self) -> Endpoint:
        check_url(self.url)
        return self


def _merge_command(data: Any) -> Any:
    """Fold the accepted spellings of a command into one argv list under `command`."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "cmd" in data:
        if "command" in data:
            raise ValueError("give either 'cmd' or 'command', not both")
        data["command"] = data.pop("cmd")
    args = data.pop("args", None)
    command = data.get("command")
    if isinstance(command, str):
        command = [command]
    if args is not None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("'args' must be a list of strings")
        if command is None:
            raise ValueError("'args' is given without a 'command'")
        command = [*command, *args] if isinstance(command, list) else command
    if command is not None:
        data["command"] = command
    return data


def _check_argv(argv: Argv | None) -> Argv | None:
    if argv is not None and (not argv or not argv[0].strip()):
        raise ValueError("'command' is empty: give the program to run and its arguments, e.g. [mcp-server-time]")
    return argv


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must start with '/'")
    return path


class _Entry(_Model):
    other_keys: ClassVar[tuple[str, ...]] = ("disabled",)

    id: str
    description: str = ""
    timeouts: Timeouts = Timeouts()
    health: Health = Health()


class _CommandForms(_Model):
    """Entries with a `command`: accept `cmd`, and the clients' `command` + `args`."""

    other_keys: ClassVar[tuple[str, ...]] = ("cmd", "args")

    @model_validator(mode="before")
    @classmethod
    def _command_forms(cls, data: Any) -> Any:
        return _merge_command(data)

    @field_validator("command", check_fields=False)
    @classmethod
    def _argv(cls, argv: Argv | None) -> Argv | None:
        return _check_argv(argv)


class _Spawnable(_CommandForms):
    """Fields of entries the gateway can run as a local stdio child."""

    command: Argv | None = None
    env: Mapping[str, str] = Field(default_factory=dict)
    secret_env: Mapping[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    stateless: bool = False
    pool: Pool = Pool()

    @model_validator(mode="after")
    def _shared_needs_stateless(self) -> _Spawnable:
        if self.pool.mode == "shared" and not self.stateless:
            raise ValueError(
                "pool.mode 'shared' needs 'stateless: true': sessions share a process only when the server keeps"
                " no per-session state"
            )
        return self


class StdioServer(_Spawnable, _Entry):
    type: Literal["stdio"] = "stdio"
    command: Argv

    @property
    def argv(self) -> Argv:
        return self.command


class HttpServer(_Spawnable, _Entry):
    """An MCP server reached over HTTP; with a `command` too, it is spawned over stdio when no endpoint answers."""

    other_keys: ClassVar[tuple[str, ...]] = ("endpoint", "url", "serverUrl")

    type: Literal["http"] = "http"
    endpoints: tuple[Endpoint, ...]
    path: str = "/mcp"
    sse_path: str = "/sse"
    transport: Literal["auto", "streamable-http", "sse"] = "auto"
    headers: Mapping[str, str] = Field(default_factory=dict)
    balancer: Balancer = Balancer()

    @model_validator(mode="before")
    @classmethod
    def _endpoint_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        singles = [key for key in ("endpoint", "url", "serverUrl") if key in data]
        if len(singles) + ("endpoints" in data) > 1:
            written = " and ".join(f"'{key}'" for key in [*singles, "endpoints"] if key in data)
            raise ValueError(f"give one of 'endpoint', 'url' or 'endpoints', not {written}")
        if singles:
            data["endpoints"] = [data.pop(singles[0])]
        endpoints = data.get("endpoints")
        if isinstance(endpoints, list) and not endpoints:
            raise ValueError("'endpoints' is empty: list at least one URL")
        if "path" not in data and isinstance(endpoints, list):
            data.update(_split_paths(endpoints, data.get("transport")))
        return data

    @field_validator("path", "sse_path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _check_path(path)

    def mcp_url(self, endpoint: Endpoint) -> str:
        return endpoint.url.rstrip("/") + self.path

    def sse_url(self, endpoint: Endpoint) -> str:
        return endpoint.url.rstrip("/") + self.sse_path


def _split_paths(endpoints: list[Any], transport: Any) -> dict[str, Any]:
    """An endpoint written as a full MCP URL (`http://h:8080/mcp`) becomes base `http://h:8080` + `path`.

    A path ending in `/sse` names a legacy HTTP+SSE server. Endpoints that disagree on their path must be
    written as base URLs with an explicit `path`.
    """
    urls = [e if isinstance(e, str) else e.get("url") if isinstance(e, dict) else None for e in endpoints]
    if not all(isinstance(u, str) for u in urls):
        return {}
    paths = {urlsplit(u).path.rstrip("/") for u in urls if isinstance(u, str)}
    if paths == {""}:
        return {}
    if len(paths) > 1:
        raise ValueError("the endpoints have different paths: write them as base URLs and set 'path'")
    path = paths.pop()
    bases = [_origin(u) for u in urls if isinstance(u, str)]
    rebuilt = [b if isinstance(e, str) else {**e, "url": b} for b, e in zip(bases, endpoints, strict=True)]
    if path.endswith("/sse") and transport in (None, "sse"):
        return {"endpoints": rebuilt, "sse_path": path, "transport": "sse"}
    return {"endpoints": rebuilt, "path": path}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_CAPABILITY = re.compile(r"(CAP_)?[A-Z][A-Z_]*[A-Z]")
# Docker's own rule for container and network names, and a loose image reference (name[:tag][@digest]).
_DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
# Docker's reference grammar (distribution/reference): [host[:port]/]name[/name...][:tag][@sha256:<64 hex>].
_IMAGE_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?{_IMAGE_PART}(?:/{_IMAGE_PART})*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


class ContainerResources(Resources):
    """Per-replica `cpu` and `memory`, as quantities, meaning the same on both backends (Plan Document,
    section 12.5): Docker makes both hard limits; Kubernetes requests `cpu` (no CPU limit, which would
    throttle) and makes `memory` both the request and the limit."""

    @field_validator("memory")
    @classmethod
    def _bytes(cls, value: str | None) -> str | None:
        if value is not None and value.endswith("m"):
            raise ValueError(
                f"{value!r} is thousandths of a byte: write memory in bytes, k, M, G, Ki, Mi or Gi (256Mi)"
            )
        return value


class DockerResources(ContainerResources):
    """Per-container limits: `cpu` and `memory` as quantities (Docker has no request, so both are hard
    limits), `pids` the most processes and threads the container may have (a fork bomb stops there)."""

    pids: Annotated[int, Field(ge=1)] | None = 256


class Volume(_Model):
    """A mount: a host path (absolute) or a named volume at `target`; read-only unless `read_only: false`.
    The short form `source:target[:rw|:ro]` is accepted."""

    source: str
    target: str
    read_only: bool = True

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        parts = data.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ValueError(f"{data!r} is not a volume: write SOURCE:TARGET, SOURCE:TARGET:ro or SOURCE:TARGET:rw")
        return {"source": parts[0], "target": parts[1], "read_only": len(parts) == 2 or parts[2] == "ro"}

    @field_validator("source")
    @classmethod
    def _source(cls, source: str) -> str:
        if not (source.startswith("/") or _DOCKER_NAME.fullmatch(source)):
            raise ValueError(f"{source!r} is neither an absolute host path nor a volume name")
        return source

    @field_validator("target")
    @classmethod
    def _target(cls, target: str) -> str:
        if not target.startswith("/"):
            raise ValueError(f"{target!r} must be an absolute path in the container")
        return target


class Security(_Model):
    """How a container is confined. Defaults: no new privileges, every capability dropped, the image's
    user; `read_only: true` makes the root filesystem read-only (a tmpfs at /tmp stays writable)."""

    no_new_privileges: bool = True
    cap_add: tuple[str, ...] = ()
    read_only: bool = False
    user: str | None = None

    @field_validator("cap_add")
    @classmethod
    def _capabilities(cls, caps: tuple[str, ...]) -> tuple[str, ...]:
        for cap in caps:
            if not _CAPABILITY.fullmatch(cap):
                raise ValueError(f"{cap!r} is not a capability name such as NET_BIND_SERVICE")
        return tuple(cap.removeprefix("CAP_") for cap in caps)


class _ContainerEntry(_Entry):
    """The fields a server run from an image has on every backend, meaning the same on Docker and Kubernetes
    (Plan Document, section 12.5); `deploy/container.py` turns them into one container spec for both.

    With a `port` it is an HTTP server: `replicas` replicas, balanced by the gateway. Without one it is a
    stdio server. `command` replaces the image's entrypoint and `args` its command, as in Kubernetes.
    `start: on_boot` starts the replicas with the gateway; `on_demand` at the first request. `idle_timeout`:
    seconds without a request after which every replica stops (scale to zero); the next request starts
    them again and waits up to `timeouts.startup`.
    """

    image: str
    command: Argv | None = None
    args: Argv | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    path: str = "/mcp"
    replicas: Annotated[int, Field(ge=0)] = 1
    env: Mapping[str, str] = Field(default_factory=dict)
    secret_env: Mapping[str, str] = Field(default_factory=dict)
    start: Literal["on_boot", "on_demand"] | None = None
    idle_timeout: Seconds | None = None
    pull: Literal["missing", "never"] = "missing"
    security: Security = Security()
    stateless: bool = False
    balancer: Balancer = Balancer()
    pool: Pool = Pool()

    # Fields only an HTTP server (one with a `port`) takes; subclasses add their own.
    http_fields: ClassVar[frozenset[str]] = frozenset({"replicas", "path", "balancer"})

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        if image is not None and not _IMAGE.fullmatch(image):
            raise ValueError(f"{image!r} is not an image reference such as mcpfleet/demo:dev or python:3.11-slim")
        return image

    @field_validator("command", "args", mode="before")
    @classmethod
    def _argv_forms(cls, argv: Any) -> Any:
        return [argv] if isinstance(argv, str) else argv

    @field_validator("command")
    @classmethod
    def _command(cls, argv: Argv | None) -> Argv | None:
        return _check_argv(argv)

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _check_path(path)

    def _check_kind(self, what: str) -> None:
        """Fields of one kind (HTTP replicas, stdio processes) on the other are errors that say which kind
        takes them. `what` names the stdio server's unit (`container`, `process`)."""
        if self.port is not None:
            if self.pool != Pool() or "stateless" in self.model_fields_set:
                raise ValueError(
                    "'pool' and 'stateless' are for stdio servers (no 'port'): HTTP replicas are set by 'replicas'"
                )
            return
        http_only = sorted(self.http_fields & self.model_fields_set)
        if http_only:
            raise ValueError(
                f"{', '.join(repr(f) for f in http_only)} {'is' if len(http_only) == 1 else 'are'} for HTTP replicas"
                f" (entries with a 'port'): a stdio server runs one {what} per session (see 'pool')"
            )
        if self.pool.mode == "shared" and not self.stateless:
            raise ValueError(
                f"pool.mode 'shared' needs 'stateless: true': sessions share a {what} only when the server keeps"
                " no per-session state"
            )

    @property
    def stdio(self) -> bool:
        """A stdio server (no `port`)."""
        return self.port is None

    @property
    def starts_on_boot(self) -> bool:
        return self.start != "on_demand"


class DockerServer(_ContainerEntry):
    """A server run in Docker containers from `image`. With a `port`, `replicas` containers, each
    publishing `port` on 127.0.0.1 (`host_port` fixes it), balanced by the gateway. Without one, one
    container per session (or per shared process, `pool.mode: shared`), attached to its stdin."""

    type: Literal["docker"] = "docker"
    # The port on 127.0.0.1 that `port` is published on; None: one the engine picks (each replica its own).
    host_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    resources: DockerResources = DockerResources()
    volumes: tuple[Volume, ...] = ()
    network: str | None = None

    http_fields: ClassVar[frozenset[str]] = frozenset({"replicas", "path", "balancer", "host_port"})

    @field_validator("network")
    @classmethod
    def _network(cls, network: str | None) -> str | None:
        if network is not None and not _DOCKER_NAME.fullmatch(network):
            raise ValueError(f"{network!r} is not a Docker network name")
        return network

    @model_validator(mode="after")
    def _kind_fields(self) -> DockerServer:
        if self.port is not None:
            if self.network in ("host", "none"):
                raise ValueError(
                    f"network {self.network!r} publishes no port: an HTTP server (one with a 'port') needs a bridge"
                    " network such as the default"
                )
            if self.host_port is not None and self.replicas > 1:
                raise ValueError(
                    f"'host_port' {self.host_port} fits one replica, and 'replicas' is {self.replicas}: leave"
                    " host_port unset so each replica gets a port of its own"
                )
        elif self.start is not None or self.idle_timeout is not None:
            raise ValueError(
                "'start' and 'idle_timeout' are for HTTP replicas (entries with a 'port'): stdio containers start"
                " per session; keep some warm with pool.min and stop spare ones with pool.idle_timeout"
            )
        self._check_kind("container")
        return self


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # an RFC 1123 label (namespaces, service accounts)
_LABEL_VALUE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?")
_NUMERIC_USER = re.compile(r"[0-9]+(:[0-9]+)?")


class KubernetesServer(_ContainerEntry):
    """A server run as pods of a Kubernetes Deployment in `namespace`, behind a headless Service whose
    EndpointSlices the gateway watches (Plan Document, section 12.4). With a `port`, each pod serves MCP
    over HTTP there; without one, `command` is a stdio server that each pod runs behind `mcpfleet adapter`
    (the gateway's stdio pool behind Streamable HTTP on port 8080), so the gateway balances across pods
    either way. `chart` installs a Helm chart instead (`mcpfleet deploy`), whose Service the gateway finds by
    its labels. `discovery`: `endpointslices` (watch; default) or `dns` (the headless Service's A/AAAA
    records every 30 s, for a gateway that may not watch). `namespace` None: the namespace of the
    kubeconfig context, or the gateway's own in a cluster."""

    type: Literal["kubernetes"] = "kubernetes"
    image: str | None = None  # type: ignore[assignment]  # a chart may bring its own
    chart: str | None = None
    chart_version: str | None = None
    values: Mapping[str, Any] = Field(default_factory=dict)
    namespace: str | None = None
    service_account: str | None = None
    resources: ContainerResources = ContainerResources()
    discovery: Literal["endpointslices", "dns"] = "endpointslices"

    # A stdio server's pods are HTTP replicas too (the adapter serves it): every field applies.
    http_fields: ClassVar[frozenset[str]] = frozenset()

    @field_validator("namespace", "service_account")
    @classmethod
    def _name(cls, name: str | None, info: Any) -> str | None:
        if name is not None and (len(name) > 63 or not _K8S_NAME.fullmatch(name)):
            what = "namespace" if info.field_name == "namespace" else "service account"
            raise ValueError(
                f"{name!r} is not a valid Kubernetes {what} name (lowercase letters, digits and '-', at most 63)"
            )
        return name

    @field_validator("security")
    @classmethod
    def _user(cls, security: Security) -> Security:
        if security.user is not None and not _NUMERIC_USER.fullmatch(security.user):
            raise ValueError(
                f"user {security.user!r}: Kubernetes runs pods as a numeric user: write UID or UID:GID (10001)"
            )
        return security

    @model_validator(mode="after")
    def _image_or_chart(self) -> KubernetesServer:
        if not _LABEL_VALUE.fullmatch(self.id):
            raise ValueError(
                f"server id {self.id!r} ends with {self.id[-1]!r}: Kubernetes labels carry it, and a label value"
                " must end with a letter or digit"
            )
        if (self.image is None) == (self.chart is None):
            raise ValueError("a kubernetes server needs exactly one of 'image' or 'chart'")
        if self.chart is None and ("values" in self.model_fields_set or self.chart_version is not None):
            raise ValueError("'values' and 'chart_version' are for 'chart' entries")
        if self.chart is not None and self.port is None:
            raise ValueError("a 'chart' entry needs the 'port' its Service serves MCP on")
        if self.chart is not None:
            pod_fields = {"command", "args", "env", "secret_env", "resources", "security", "pull", "service_account"}
            given = sorted(pod_fields & self.model_fields_set)
            if given:
                raise ValueError(
                    f"{', '.join(repr(f) for f in given)}: a 'chart' entry's pods are the chart's; set them in"
                    " 'values' (replicas, start, idle_timeout and timeouts still apply: the gateway scales it)"
                )
        if self.stdio:
            carried = {"mode", "min", "max"}  # what `mcpfleet adapter` takes (deploy/container.py)
            dropped = sorted(set(self.pool.model_fields_set) - carried)
            if dropped:
                raise ValueError(
                    f"pool.{dropped[0]} is not carried to the pods' `mcpfleet adapter`, which takes pool.mode,"
                    " pool.min and pool.max: leave it out of a kubernetes entry"
                )
        if self.image is not None and self.port is None and self.command is None:
            raise ValueError(
                "a stdio server (no 'port') needs 'command': each pod runs it behind `mcpfleet adapter`, which"
                " must know what to start"
            )
        self._check_kind("process")
        return self


Server = StdioServer | HttpServer | DockerServer | KubernetesServer

SERVER_TYPES: dict[str, type[_Entry]] = {
    "stdio": StdioServer,
    "http": HttpServer,
    "docker": DockerServer,
    "kubernetes": KubernetesServer,
}


class Gateway(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # The largest JSON-RPC message, in bytes, on every route and in both directions: request bodies,
    # WebSocket frames, SSE events, stdio lines, bridged HTTP answers. `max_body_bytes` is its older name.
    max_message_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    session_idle_timeout: Seconds = 1800.0
    # A `: keepalive` comment on relayed event streams after this much silence (the SDK pings every 15 s).
    keepalive_interval: Seconds = 15.0
    # Secrets that seal session ids, newest first (rotation: the first seals, all open). Gateways sharing
    # one serve each other's http sessions. Empty: $MCPFLEET_SESSION_KEYS, else a random key per process.
    session_keys: tuple[str, ...] = ()
    session_max_age: Seconds = 86400.0
    # After SIGTERM, /readyz answers 503 and serving goes on for this long before the gateway stops taking
    # connections, so a load balancer or Kubernetes sees it leave first (the gateway chart sets 5; 0: stop at once).
    shutdown_delay: Annotated[float, Field(ge=0, le=300)] = 0.0
    # `labels`: serve the Kubernetes Services labelled `mcpfleet.io/server: <id>` that no entry lists, from
    # `discovery_namespaces` (default: the kubeconfig context's, or the gateway's own in a cluster). Read at start.
    discovery: Literal["none", "labels"] = "none"
    discovery_namespaces: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_body_bytes" in data:
            if "max_message_bytes" in data:
                raise ValueError("give 'max_message_bytes' only ('max_body_bytes' is its older name)")
            data = {**data, "max_message_bytes": data["max_body_bytes"]}
            del data["max_body_bytes"]
        return data


class Registry(_Model):
    """One immutable snapshot of the registry: where it came from, the gateway settings, the servers by id.

    `failed`: entries left out because a `${VAR}` they use has no value (and nothing else is wrong with
    them), by id, each with its one-line located error. An id is in `servers` or `failed`, never both.
    `warnings`: things accepted but ignored (client-only keys, disabled entries, VS Code `inputs`).
    """

    source: str
    gateway: Gateway = Gateway()
    servers: Mapping[str, Server] = Field(default_factory=dict)
    failed: Mapping[str, str] = Field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def server(self, server_id: str) -> Server:
        from mcpfleet.errors import UnknownServerError

        try:
            return self.servers[server_id]
        except KeyError:
            raise UnknownServerError(server_id, sorted(self.servers)) from None
