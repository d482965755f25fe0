"""Settings: config/aquamask.yml, overridden by the environment (12-factor), typed per section.

``AQUAMASK_CONFIG`` names the file to start from (default: the packaged aquamask.yml) and
``AQUAMASK__SECTION__KEY=value`` overrides one key (the value is parsed as YAML, so numbers and
lists work). Secrets belong in the environment, never in the file.

Every section of the file is one frozen dataclass below (``settings.jobs.max_running``), checked
when the settings are read: a value of the wrong type or out of range is a ``ConfigError`` naming
its key (``jobs.max_running: ...``), so the server refuses to start rather than fail later. The
packaged YAML holds every default; the classes hold none of its values, only the keys it leaves
out on purpose (secrets given in the environment alone).
"""
from __future__ import annotations

import copy
import os
import socket
from contextvars import ContextVar
from dataclasses import fields
from functools import cached_property, lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from aquamask.processes.errors import ConfigError

ENV_PREFIX = "AQUAMASK__"
DEFAULT_CONFIG = files("aquamask.config") / "aquamask.yml"
# libyaml's parser where PyYAML has it: settings are read at the start of every job
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# settings a job brought with it (a Dask task carries the server's), returned by a plain
# Settings.load() in that job's thread instead of this process's own
PINNED: ContextVar["Settings | None"] = ContextVar("aquamask_settings", default=None)
_LOADED: dict[tuple, "Settings"] = {}

# numbers read from YAML or the environment: ints and floats as YAML wrote them, names as text
_SECTION = ConfigDict(frozen=True, coerce_numbers_to_str=True, extra="ignore")
Count = Annotated[int, Field(ge=1)]
Size = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Seconds = Positive
Duration = Annotated[float, Field(ge=0)]  # 0: none or off
Fraction = Annotated[float, Field(ge=0, le=1)]
Percent = Annotated[float, Field(ge=0, le=100)]


@dataclass(config=_SECTION)
class ServerSettings:
    url: str | None  # None: derived from bind (Settings.url)
    bind: str
    workers: Count
    timeout: Count  # gunicorn's --timeout takes whole seconds
    header_timeout_s: Seconds
    body_timeout_s: Seconds
    max_connections: Count
    health_timeout_s: Seconds


@dataclass(config=_SECTION)
class PathsSettings:
    data_root: str
    results: str  # a folder, or an object store URL (s3://bucket/prefix)


@dataclass(config=_SECTION)
class StorageSettings:
    staging: str
    options: dict[str, Any]
    gdal: dict[str, Any]


@dataclass(config=_SECTION)
class JobsSettings:
    database: str
    max_running: Count
    inline_max_pixels: Size
    scheduler: str | None
    heartbeat_s: Seconds
    stale_after_s: Seconds
    max_runtime_s: Duration
    sweep_s: Duration
    store_retry_s: Duration


@dataclass(config=_SECTION)
class DetectionSettings:
    method: str
    threshold: Fraction | None  # None: the method's own default
    model: str | None  # a model's name or name-version (never a path); None: the default
    weights_dir: str | None  # the operator's own weights, beside the shipped ones
    device: str | None
    fan_out_pixels: Size
    scene_layers_max_pixels: Size  # 0: the input scene is never published beside the mask


@dataclass(config=_SECTION)
class LimitsSettings:
    max_pixels: Count
    max_block_bytes: Count
    max_request_bytes: Count
    href_schemes: list[str]
    max_area_km2: Positive
    max_date_span_days: Positive
    href_hosts: list[str]
    href_private_hosts: list[str]
    max_jobs_per_user: Size


@dataclass(config=_SECTION)
class AuthSettings:
    mode: str
    anonymous: str
    anonymous_role: str
    issuer: str | None
    audience: str | None
    jwks_uri: str | None
    leeway_s: Size
    jwks_refresh_cooldown_s: Duration
    introspection_client_id: str | None
    claims: list[str]
    roles: dict[str, list[str]]
    # from the environment only (AQUAMASK__AUTH__...): never in the file
    introspection_client_secret: str | None = None
    login_url: str | None = None


@dataclass(config=_SECTION)
class ViewerSettings:
    basemap_url: str | None
    basemap_type: str | None
    basemap_layers: str | None
    basemap_attribution: str | None
    login_url: str | None
    process: str
    series_process: str | None
    poll_ms: Count


@dataclass(config=_SECTION)
class SecuritySettings:
    cors_origins: list[str]


@dataclass(config=_SECTION)
class HttpSettings:
    retries: Size
    backoff: Duration
    timeout: Seconds


@dataclass(config=_SECTION)
class CacheSettings:
    dir: str
    max_mb: Positive
    enabled: bool = True  # AQUAMASK__SOURCES__CACHE__ENABLED=false turns the window cache off


@dataclass(config=_SECTION)
class SourcesSettings:
    default: str
    max_cloud_cover: Percent
    max_items: Count
    http: HttpSettings
    cache: CacheSettings
    products: CacheSettings
    # the configured sources by name, each as its kind reads it (``kind`` and its own keys)
    entries: dict[str, dict[str, Any]]

    @property
    def names(self) -> list[str]:
        return list(self.entries)


@dataclass(config=_SECTION)
class PublisherSettings:
    name: str  # the dotted path of the map engine serving layers here (a Publisher class)


@dataclass(config=_SECTION)
class MapServerSettings:
    binary: str | None
    processes: Count
    timeout: Seconds
    workdir: str
    max_image_size: Count
    max_size: Count


@dataclass(config=_SECTION)
class GeoServerSettings:
    url: str | None
    user: str
    password_file: str | None
    workspace: str
    style: str
    store_mode: str
    shared_results_dir: str | None
    public_url: str | None
    connect_timeout_s: Seconds
    timeout_s: Seconds
    retry_delays_s: list[Duration]
    time_series: bool
    workdir: str
    state_dir: str
    password: str | None = None  # from the environment only (AQUAMASK__GEOSERVER__PASSWORD)

    @property
    def configured(self) -> bool:
        return bool(self.url)


@dataclass(config=_SECTION)
class MonitoringSettings:
    scheduler: str
    max_parallel_dates: Count
    max_dates: Count
    max_scenes: Count
    min_valid_fraction: Fraction
    field_tolerance_days: Duration
    max_field_bytes: Count

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if not (value in ("auto", "threads", "synchronous") or "://" in value):
            raise ValueError(f"monitoring.scheduler must be auto, threads, synchronous or a "
                             f"dask.distributed scheduler address (got {value!r})")
        return value


@dataclass(config=_SECTION)
class MetricsSettings:
    enabled: bool
    access: str
    token_file: str | None
    dir: str | None


@dataclass(config=_SECTION)
class LoggingSettings:
    level: str


SECTIONS: dict[str, type] = {
    "server": ServerSettings, "paths": PathsSettings, "storage": StorageSettings,
    "jobs": JobsSettings, "detection": DetectionSettings, "limits": LimitsSettings,
    "auth": AuthSettings, "viewer": ViewerSettings, "security": SecuritySettings,
    "sources": SourcesSettings, "publisher": PublisherSettings,
    "mapserver": MapServerSettings, "geoserver": GeoServerSettings,
    "monitoring": MonitoringSettings, "metrics": MetricsSettings, "logging": LoggingSettings,
}


def _mtime(source) -> float | None:
    try:
        return os.stat(source).st_mtime
    except (OSError, TypeError):
        return None


def _read_yaml(source) -> dict[str, Any]:
    with open(source, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_LOADER) or {}


def _apply_env_overrides(config: dict[str, Any], environ: dict[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None


def _sources_section(raw: dict[str, Any]) -> dict[str, Any]:
    """``sources:`` with its named entries (those with a ``kind``) gathered under ``entries``."""
    known = {f.name for f in fields(SourcesSettings)} - {"entries"}
    section = {k: v for k, v in raw.items() if k in known}
    section["entries"] = {k: v for k, v in raw.items()
                          if k not in known and isinstance(v, dict) and v.get("kind")}
    return section


def _section(name: str, raw: Any) -> Any:
    """The typed section ``name``; a ConfigError naming the first key that is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {raw!r}")
    if name == "sources":
        raw = _sources_section(raw)
    try:
        return TypeAdapter(SECTIONS[name]).validate_python(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in (name, *first["loc"]))
        if first["type"] == "missing":
            raise ConfigError(f"{key}: missing (the packaged aquamask.yml sets it)") from None
        message = first["msg"][0].lower() + first["msg"][1:]
        raise ConfigError(f"{key}: {message}, got {first.get('input')!r}") from None


class Settings:
    """The configuration of one server: ``raw`` as read, and each section typed
    (``settings.jobs``, ``settings.limits``, ...), validated when it is made."""

    server: ServerSettings
    paths: PathsSettings
    storage: StorageSettings
    jobs: JobsSettings
    detection: DetectionSettings
    limits: LimitsSettings
    auth: AuthSettings
    viewer: ViewerSettings
    security: SecuritySettings
    sources: SourcesSettings
    publisher: PublisherSettings
    mapserver: MapServerSettings
    geoserver: GeoServerSettings
    monitoring: MonitoringSettings
    metrics: MetricsSettings
    logging: LoggingSettings

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        for name in SECTIONS:
            setattr(self, name, _section(name, raw.get(name)))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise AttributeError(f"settings are read-only ({name})")
        super().__setattr__(name, value)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None,
             environ: dict[str, str] | None = None) -> "Settings":
        pinned = PINNED.get()
        if pinned is not None and path is None and environ is None:
            return pinned
        environ = dict(os.environ if environ is None else environ)
        source = path or environ.get("AQUAMASK_CONFIG") or DEFAULT_CONFIG
        # read once per process and configuration: every request instantiates processors
        # (the working directory too: a relative home is resolved against it)
        key = (str(source), _mtime(source), _mtime(DEFAULT_CONFIG), os.getcwd(),
               tuple(sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIX))))
        cached = _LOADED.get(key)
        if cached is None:
            if len(_LOADED) >= 32:
                _LOADED.clear()
            cached = _LOADED[key] = cls._read(source, environ)
        return cached

    @classmethod
    def _read(cls, source, environ: dict[str, str]) -> "Settings":
        config = _read_yaml(source)
        # The packaged defaults fill what a user's file leaves out.
        if source != DEFAULT_CONFIG:
            config = _merge(_read_yaml(DEFAULT_CONFIG), config)
        _apply_env_overrides(config, environ)
        return cls(config)

    def portable(self) -> dict[str, Any]:
        """The settings with ``home`` absolute, for a job run by another process or host
        (which must see the same paths: a shared volume)."""
        return dict(self.raw, home=str(self.home))

    @cached_property
    def home(self) -> Path:
        return Path(self.raw.get("home") or "var").expanduser().resolve()

    def path(self, value: str | os.PathLike) -> Path:
        """A configured path: absolute as given, else relative to ``home``."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.home / p

    @property
    def url(self) -> str:
        """The URL clients reach the server at, in every link, Location and OnlineResource:
        ``server.url``, else the one of ``server.bind``; a wildcard host (``0.0.0.0``,
        ``::``: listening everywhere, which no client can reach) stands for this machine's
        name."""
        if self.server.url:
            return reachable_url(self.server.url).rstrip("/")
        return http_url(*split_bind(self.server.bind))

    @property
    def data_root(self) -> Path:
        return self.path(self.paths.data_root).resolve()

    @property
    def results_url(self) -> str | None:
        """``paths.results`` when it is an object store URL (``s3://bucket/prefix``), else None."""
        return self.paths.results if "://" in self.paths.results else None

    @property
    def results_dir(self) -> Path:
        """The results folder; with an object store (``results_url``) the local folder where
        jobs stage their files before uploading them (``storage.staging``, under ``home``)."""
        if self.results_url:
            return self.path(self.storage.staging)
        return self.path(self.paths.results)

    @property
    def database_url(self) -> str:
        url = self.jobs.database
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            url = prefix + str(self.path(url[len(prefix):]))
        return url

    def ensure_dirs(self) -> None:
        for directory in (self.home, self.data_root, self.results_dir):
            directory.mkdir(parents=True, exist_ok=True)


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def split_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host without brackets, port)."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def format_bind(host: str, port: int) -> str:
    """A gunicorn ``--bind`` address: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@lru_cache(maxsize=1)
def machine_name() -> str:
    """This machine's fully qualified name (its host name when the FQDN is only
    ``localhost``): what a wildcard address stands for in links."""
    fqdn = socket.getfqdn()
    if fqdn and fqdn.split(".")[0] != "localhost":
        return fqdn
    return socket.gethostname()


def http_url(host: str, port: int) -> str:
    """The http URL of a listening address, a wildcard host made this machine's name."""
    if host in WILDCARD_HOSTS:
        host = machine_name()
    return f"http://{format_bind(host, port)}"


def reachable_url(url: str) -> str:
    """``url`` with a wildcard host made this machine's name (other URLs unchanged)."""
    parts = urlsplit(url)
    if parts.hostname not in WILDCARD_HOSTS or not parts.netloc:
        return url
    netloc = machine_name() + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
