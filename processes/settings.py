"""Settings: config/aquamask.yml, overridden by the environment (12-factor).

``AQUAMASK_CONFIG`` names the file to start from (default: the packaged aquamask.yml) and
``AQUAMASK__SECTION__KEY=value`` overrides one key (the value is parsed as YAML, so numbers and
lists work). Secrets belong in the environment, never in the file.
"""
from __future__ import annotations

import copy
import os
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "AQUAMASK__"
DEFAULT_CONFIG = files("aquamask.config") / "aquamask.yml"
# libyaml's parser where PyYAML has it: settings are read at the start of every job
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# settings a job brought with it (a Dask task carries the server's), returned by a plain
# Settings.load() in that job's thread instead of this process's own
PINNED: ContextVar["Settings | None"] = ContextVar("aquamask_settings", default=None)
_LOADED: dict[tuple, "Settings"] = {}


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


@dataclass(frozen=True)
class Settings:
    raw: dict[str, Any]

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

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return (self.raw.get(section) or {}).get(key, default)

    @cached_property
    def home(self) -> Path:
        return Path(self.raw.get("home") or "var").expanduser().resolve()

    def path(self, value: str | os.PathLike) -> Path:
        """A configured path: absolute as given, else relative to ``home``."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.home / p

    @property
    def url(self) -> str:
        return str(self.get("server", "url")).rstrip("/")

    @property
    def data_root(self) -> Path:
        return self.path(self.get("paths", "data_root")).resolve()

    @property
    def results_url(self) -> str | None:
        """``paths.results`` when it is an object store URL (``s3://bucket/prefix``), else None."""
        value = self.get("paths", "results")
        return value if isinstance(value, str) and "://" in value else None

    @property
    def results_dir(self) -> Path:
        """The results folder; with an object store (``results_url``) the local folder where
        jobs stage their files before uploading them (``storage.staging``, under ``home``)."""
        if self.results_url:
            return self.path((self.raw.get("storage") or {}).get("staging") or "staging")
        return self.path(self.get("paths", "results"))

    @property
    def results_store(self):
        """Where results are written and read (``aquamask.processes.results``)."""
        from aquamask.processes.results import results_store

        return results_store(self)

    @property
    def database_url(self) -> str:
        url = str(self.get("jobs", "database"))
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            url = prefix + str(self.path(url[len(prefix):]))
        return url

    @cached_property
    def job_store(self):
        """This configuration's job store (``aquamask.processes.jobstore``), one per process
        (it reconnects after a fork). It never creates a missing SQLite file: the server does
        that when it starts."""
        from aquamask.processes.jobstore import JobStore

        return JobStore(self.database_url, create=False,
                        retry_s=float(self.get("jobs", "store_retry_s") or 120))

    def ensure_dirs(self) -> None:
        for directory in (self.home, self.data_root, self.results_dir):
            directory.mkdir(parents=True, exist_ok=True)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
