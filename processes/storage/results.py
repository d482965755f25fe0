"""Where job results live: a folder (``paths.results``, the default) or an object store.

``paths.results`` is a path (relative to ``home``) or an fsspec URL of an object store,
``s3://bucket/prefix`` (also ``gs://``, ``az://``: any store GDAL has a /vsi handler for, with
its fsspec package installed). With a URL, a cluster needs no shared disk for the results:
workers write them, the server reads them.

Both kinds are a ``ResultStore`` (``results_store(settings)``):

* A job writes its files into a local staging folder (``staging(job_id)``: COG writing needs a
  local file), then ``commit``\\ s it: the folder store renames it into place at once (as it
  always has); the object store uploads the data files first and the STAC item (``item.json``)
  last, so its presence means the result is complete, then removes the local copy. A failed
  upload removes what it had uploaded and the local copy, and raises ``ResultStoreError`` (an
  ``OSError``) saying which store and why; other jobs' results are never touched.
* The server reads a result (``info``, ``read_range``, ``iter_bytes``, ``read_bytes``), removes
  one (``remove``, on dismissal), and names its files to GDAL (``gdal_path``: the local path, or
  ``/vsis3/bucket/key``, ``/vsigs/...``, ``/vsiaz/...``) for MapServer's layers and rasterio.

Options for the object store come from ``storage.options`` (passed to fsspec: for s3fs
``endpoint_url``, ``key``, ``secret``, ``token``, ``client_kwargs: {region_name: ...}``, ...)
and are translated to GDAL's configuration options (``gdal_options``: ``AWS_S3_ENDPOINT``,
``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``, ``AWS_ACCESS_KEY_ID``, ...), which the map engine's CGI
gets in its environment and rasterio in ``gdal_env()``; ``storage.gdal`` adds or overrides
options. Without keys in the settings, the standard variables (``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ...) of the environment are used by both.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from aquamask.processes.files import write_atomic

if TYPE_CHECKING:
    from aquamask.processes.settings import Settings

ITEM_FILE = "item.json"  # the STAC item: written last, its presence means complete
# fsspec protocol -> GDAL's virtual file system
VSI_PREFIXES = {"s3": "/vsis3/", "s3a": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/",
                "az": "/vsiaz/", "abfs": "/vsiaz/", "abfss": "/vsiaz/"}
# variables of the server's environment handed to the map engine with an object store: the
# standard credentials and settings of each cloud's SDKs and GDAL's own
PASSED_ENV_PREFIXES = ("AWS_", "GS_", "GOOGLE_", "AZURE_", "CPL_", "GDAL_", "VSI")
HEALTH_TIMEOUT_S = 5.0


class ResultStoreError(OSError):
    """The results store refused or could not be reached; ``str()`` says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_url(value: Any) -> bool:
    return isinstance(value, str) and "://" in value


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid result file name {name!r}")
    return name


class ResultStore:
    """The interface; ``LocalResultStore`` and ``FsspecResultStore`` implement it."""

    remote = False
    location: str
    gdal_options: dict[str, str] = {}

    # -- writing (the job) ---------------------------------------------------------------------
    def staging(self, job_id: str) -> Path:
        """A fresh, empty local folder to write ``job_id``'s files into before ``commit``."""
        raise NotImplementedError

    def work_dir(self, job_id: str) -> Path:
        """A new local scratch folder for ``job_id`` (removed by the caller, or ``remove``)."""
        raise NotImplementedError

    def commit(self, job_id: str, staging: Path) -> None:
        """Make the files of ``staging`` the result of ``job_id``; ``staging`` is gone after."""
        raise NotImplementedError

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def put(self, job_id: str, name: str, data: bytes | str) -> None:
        """One more file of a committed result (written whole, never half)."""
        raise NotImplementedError

    def job_ids(self) -> list[str]:
        """The jobs with a complete result here (their STAC item is written last)."""
        raise NotImplementedError

    # -- reading (the server) ------------------------------------------------------------------
    def gdal_path(self, job_id: str, name: str | None = None) -> str:
        """Where GDAL (MapServer, rasterio) reads ``name`` of ``job_id`` (or its folder)."""
        raise NotImplementedError

    def is_file(self, gdal_path: str | os.PathLike) -> bool:
        """Whether a path ``gdal_path`` gave names a stored file."""
        raise NotImplementedError

    def exists(self, job_id: str, name: str) -> bool:
        return self.is_file(self.gdal_path(job_id, name))

    def info(self, job_id: str, name: str) -> dict[str, Any] | None:
        """``size``, ``mtime`` (seconds, or None) and ``etag`` (or None); None when absent."""
        raise NotImplementedError

    def read_range(self, job_id: str, name: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive)."""
        raise NotImplementedError

    def open(self, job_id: str, name: str):
        """A seekable binary file object of ``name`` of ``job_id``."""
        raise NotImplementedError

    def iter_bytes(self, job_id: str, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        raise NotImplementedError

    def read_bytes(self, job_id: str, name: str) -> bytes:
        return b"".join(self.iter_bytes(job_id, name))

    def read_text(self, job_id: str, name: str) -> str:
        return self.read_bytes(job_id, name).decode("utf-8")

    @contextlib.contextmanager
    def local_copy(self, gdal_path: str | os.PathLike, directory: Path | None = None
                   ) -> Iterator[Path]:
        """A local file with the bytes of ``gdal_path`` (the file itself when it is local)."""
        yield Path(gdal_path)

    def gdal_env(self):
        """A ``rasterio.Env`` that reads this store's ``gdal_path``\\ s."""
        import rasterio

        return rasterio.Env()

    def cgi_environment(self) -> dict[str, str]:
        """What the map engine's CGI environment needs to read this store's files."""
        return {}

    # -- housekeeping --------------------------------------------------------------------------
    def remove(self, job_id: str) -> None:
        """``job_id``'s result, and any staging or scratch folder it left."""
        raise NotImplementedError

    def check(self, timeout: float = HEALTH_TIMEOUT_S) -> str:
        """'ok' when the store answers, else what went wrong (for /health)."""
        return "ok"

    def location_of(self, job_id: str) -> str:
        return self.gdal_path(job_id)


class LocalResultStore(ResultStore):
    """A folder (shared by every host that runs jobs and the server): staging folders beside the
    results, renamed into place."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def staging(self, job_id: str) -> Path:
        path = self.root / f".staging-{job_id}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def work_dir(self, job_id: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f".work-{job_id}-", dir=self.root))

    def commit(self, job_id: str, staging: Path) -> None:
        final = self.root / job_id
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)

    def put(self, job_id: str, name: str, data: bytes | str) -> None:
        write_atomic(self.root / job_id / _check_name(name), data)

    def directory(self, job_id: str) -> Path:
        return self.root / job_id

    def job_ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/item.json")
                      if not p.parent.name.startswith("."))

    def gdal_path(self, job_id: str, name: str | None = None) -> str:
        folder = self.root / job_id
        return str(folder / _check_name(name) if name else folder)

    def is_file(self, gdal_path: str | os.PathLike) -> bool:
        return Path(gdal_path).is_file()

    def info(self, job_id: str, name: str) -> dict[str, Any] | None:
        try:
            stat = (self.root / job_id / _check_name(name)).stat()
        except OSError:
            return None
        return {"size": stat.st_size, "mtime": stat.st_mtime, "etag": None}

    def read_range(self, job_id: str, name: str, start: int, end: int) -> bytes:
        with open(self.root / job_id / _check_name(name), "rb") as fh:
            fh.seek(start)
            return fh.read(max(end - start, 0))

    def open(self, job_id: str, name: str):
        return open(self.root / job_id / _check_name(name), "rb")

    def iter_bytes(self, job_id: str, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with open(self.root / job_id / _check_name(name), "rb") as fh:
            while block := fh.read(chunk):
                yield block

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        for leftover in self.root.glob(f".*-{job_id}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _gdal_session(options: dict[str, str]):
    """A rasterio session that sets the store's GDAL options (rasterio refuses AWS_* options
    given to ``rasterio.Env`` directly)."""
    from rasterio.session import Session

    class StoreSession(Session):
        def __init__(self, options: dict[str, str]) -> None:
            self._session = None
            self.credentials = dict(options)

        @classmethod
        def hascreds(cls, config) -> bool:
            return True

        def get_credential_options(self) -> dict[str, str]:
            return dict(self.credentials)

    return StoreSession(options)


def gdal_options_for(protocol: str, options: dict[str, Any],
                     environ: dict[str, str] | None = None) -> dict[str, str]:
    """GDAL's configuration options for reading what fsspec reads with ``options``."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, str] = {}
    client = options.get("client_kwargs") or {}
    if VSI_PREFIXES.get(protocol) == "/vsis3/":
        endpoint = (options.get("endpoint_url") or client.get("endpoint_url")
                    or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"))
        if endpoint:
            parts = urlsplit(str(endpoint) if "://" in str(endpoint) else f"https://{endpoint}")
            out["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
            out["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
            # a custom endpoint (MinIO, Ceph, moto, ...) is addressed by path, not by host name
            out["AWS_VIRTUAL_HOSTING"] = "FALSE"
        for option, gdal in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"),
                             ("token", "AWS_SESSION_TOKEN"), ("profile", "AWS_PROFILE")):
            if options.get(option):
                out[gdal] = str(options[option])
        region = client.get("region_name") or options.get("region_name")
        if region:
            out["AWS_REGION"] = out["AWS_DEFAULT_REGION"] = str(region)
        if options.get("anon"):
            out["AWS_NO_SIGN_REQUEST"] = "YES"
    elif VSI_PREFIXES.get(protocol) == "/vsigs/":
        token = options.get("token")
        if isinstance(token, str) and token not in ("anon", "google_default", "cloud",
                                                    "cache", "browser"):
            out["GOOGLE_APPLICATION_CREDENTIALS"] = token
        if token == "anon":
            out["GS_NO_SIGN_REQUEST"] = "YES"
    elif VSI_PREFIXES.get(protocol) == "/vsiaz/":
        for option, gdal in (("account_name", "AZURE_STORAGE_ACCOUNT"),
                             ("account_key", "AZURE_STORAGE_ACCESS_KEY"),
                             ("sas_token", "AZURE_STORAGE_SAS_TOKEN"),
                             ("connection_string", "AZURE_STORAGE_CONNECTION_STRING")):
            if options.get(option):
                out[gdal] = str(options[option])
        if options.get("anon"):
            out["AZURE_NO_SIGN_REQUEST"] = "YES"
    # a COG has no side-car files: do not list its folder on every open
    out["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
    # a store's passing 429/5xx answers are retried rather than drawn as an error
    out["GDAL_HTTP_MAX_RETRY"] = "3"
    out["GDAL_HTTP_RETRY_DELAY"] = "0.5"
    return out


class FsspecResultStore(ResultStore):
    """An object store through fsspec (``s3://bucket/prefix``): results at
    ``<url>/<job_id>/<name>``, staged under a local folder first."""

    remote = True

    def __init__(self, url: str, staging_root: Path | str, options: dict[str, Any] | None = None,
                 gdal: dict[str, Any] | None = None) -> None:
        from fsspec.core import split_protocol

        protocol, rest = split_protocol(url)
        if protocol not in VSI_PREFIXES:
            raise ValueError(f"paths.results {url!r}: an object store URL must start with one "
                             f"of {', '.join(sorted(f'{p}://' for p in VSI_PREFIXES))} (GDAL "
                             "reads those), or be a local path")
        rest = (rest or "").strip("/")
        if not rest:
            raise ValueError(f"paths.results {url!r} names no bucket")
        self.protocol = protocol
        self.root = rest  # bucket/prefix
        self.url = f"{protocol}://{rest}"
        self.location = self.url
        self.staging_root = Path(staging_root)
        self.options = {str(k): v for k, v in (options or {}).items()}
        for name in ("key", "secret", "token", "endpoint_url", "profile", "account_name",
                     "account_key", "sas_token", "connection_string"):
            # from the environment a value is parsed as YAML: a numeric secret is still text
            if isinstance(self.options.get(name), (int, float)):
                self.options[name] = str(self.options[name])
        if VSI_PREFIXES[protocol] == "/vsis3/":
            # every process sees the others' writes at once
            self.options.setdefault("use_listings_cache", False)
        self.gdal_options = gdal_options_for(protocol, self.options)
        # storage.gdal: GDAL's option names are upper case (the environment's overrides
        # arrive lower-cased), booleans YES/NO
        self.gdal_options.update({str(k).upper(): ("YES" if v else "NO") if isinstance(v, bool)
                                  else str(v) for k, v in (gdal or {}).items() if v is not None})
        self._fs = None
        self._fs_pid = os.getpid()
        self._fs_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<FsspecResultStore {self.url}>"

    @property
    def fs(self):
        """The fsspec filesystem, made in this process (a forked job worker makes its own: an
        async client does not survive a fork)."""
        if self._fs is None or self._fs_pid != os.getpid():
            with self._fs_lock:
                if self._fs is None or self._fs_pid != os.getpid():
                    import fsspec

                    try:
                        self._fs = fsspec.filesystem(self.protocol, **self.options)
                    except ImportError as err:
                        raise ValueError(f"paths.results {self.url}: the fsspec package for "
                                         f"{self.protocol}:// is not installed ({err})") from None
                    self._fs_pid = os.getpid()
        return self._fs

    def _key(self, job_id: str, name: str | None = None) -> str:
        key = f"{self.root}/{job_id}"
        return f"{key}/{_check_name(name)}" if name else key

    # -- writing -------------------------------------------------------------------------------
    def staging(self, job_id: str) -> Path:
        path = self.staging_root / job_id
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def work_dir(self, job_id: str) -> Path:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".work-{job_id}-", dir=self.staging_root))

    @staticmethod
    def upload_order(staging: Path) -> list[Path]:
        """Data files first, STAC items last, the result's own item (at the top) the very last:
        a reader that finds it finds everything it lists."""
        files = [p for p in staging.rglob("*") if p.is_file()]
        return sorted(files, key=lambda p: (p.name == ITEM_FILE,
                                            -len(p.relative_to(staging).parts),
                                            p.relative_to(staging).as_posix()))

    def commit(self, job_id: str, staging: Path) -> None:
        uploaded: list[str] = []
        try:
            for path in self.upload_order(staging):
                key = self._key(job_id, path.relative_to(staging).as_posix())
                self.fs.put_file(str(path), key)
                uploaded.append(key)
        except Exception as err:  # noqa: BLE001 - s3fs raises OSError, botocore its own
            self._remove_keys(uploaded)
            raise ResultStoreError(self._describe(err, "storing the results in")) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def put(self, job_id: str, name: str, data: bytes | str) -> None:
        try:
            self.fs.pipe_file(self._key(job_id, name),
                              data.encode("utf-8") if isinstance(data, str) else data)
        except Exception as err:  # noqa: BLE001
            raise ResultStoreError(self._describe(err, "storing a result file in")) from None

    def job_ids(self) -> list[str]:
        try:
            found = self.fs.glob(f"{self.root}/*/item.json")
        except Exception as err:  # noqa: BLE001
            raise ResultStoreError(self._describe(err, "listing")) from None
        return sorted(path.rstrip("/").split("/")[-2] for path in found)

    def _remove_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            self.fs.rm(keys)
        except Exception:  # noqa: BLE001 - best effort: the job's failure is what is reported
            import logging

            logging.getLogger(__name__).exception("could not remove %d partial object(s) "
                                                  "from %s", len(keys), self.url)

    # -- reading -------------------------------------------------------------------------------
    def gdal_path(self, job_id: str, name: str | None = None) -> str:
        return VSI_PREFIXES[self.protocol] + self._key(job_id, name)

    def _fs_path(self, gdal_path: str | os.PathLike) -> str | None:
        prefix = VSI_PREFIXES[self.protocol] + self.root + "/"
        text = str(gdal_path)
        return text[len(VSI_PREFIXES[self.protocol]):] if text.startswith(prefix) else None

    def is_file(self, gdal_path: str | os.PathLike) -> bool:
        key = self._fs_path(gdal_path)
        if key is None:
            return Path(gdal_path).is_file()
        try:
            return bool(self.fs.isfile(key))
        except Exception:  # noqa: BLE001 - unreachable: treated as absent by the caller
            return False

    def info(self, job_id: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.fs.info(self._key(job_id, name))
        except FileNotFoundError:
            return None
        if found.get("type") != "file":
            return None
        modified = found.get("LastModified") or found.get("mtime") or found.get("updated")
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else None
        etag = found.get("ETag") or found.get("etag")
        return {"size": int(found.get("size") or 0), "mtime": mtime,
                "etag": str(etag).strip('"') if etag else None}

    def read_range(self, job_id: str, name: str, start: int, end: int) -> bytes:
        return self.fs.cat_file(self._key(job_id, name), start=start, end=end)

    def open(self, job_id: str, name: str):
        return self.fs.open(self._key(job_id, name), "rb", block_size=1 << 20)

    def iter_bytes(self, job_id: str, name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.fs.open(self._key(job_id, name), "rb", block_size=chunk) as fh:
            while block := fh.read(chunk):
                yield block

    @contextlib.contextmanager
    def local_copy(self, gdal_path: str | os.PathLike, directory: Path | None = None
                   ) -> Iterator[Path]:
        key = self._fs_path(gdal_path)
        if key is None:
            yield Path(gdal_path)
            return
        directory = directory or self.staging_root
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".copy-", dir=directory) as tmp:
            local = Path(tmp) / Path(key).name
            self.fs.get_file(key, str(local))
            yield local

    def gdal_env(self):
        import rasterio

        return rasterio.Env(session=_gdal_session(self.gdal_options))

    def cgi_environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
        for name in ("HOME",):  # ~/.aws/credentials, ~/.config/gcloud
            if os.environ.get(name):
                env[name] = os.environ[name]
        env.update(self.gdal_options)
        return env

    # -- housekeeping --------------------------------------------------------------------------
    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.staging_root / job_id, ignore_errors=True)
        for leftover in self.staging_root.glob(f".*-{job_id}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            self.fs.rm(self._key(job_id), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as err:  # noqa: BLE001
            raise ResultStoreError(self._describe(err, "removing the results from")) from None

    def check(self, timeout: float = HEALTH_TIMEOUT_S) -> str:
        """A listing of the prefix, given ``timeout`` seconds (never longer: it runs in a
        thread of its own). Never names the URL or a secret: /health is open."""
        outcome: dict[str, str] = {}

        def probe() -> None:
            try:
                self._probe()
                outcome["result"] = "ok"
            except Exception as err:  # noqa: BLE001
                outcome["result"] = f"error: {_kind(err)}"

        thread = threading.Thread(target=probe, name="aquamask-store-check", daemon=True)
        thread.start()
        thread.join(timeout)
        return outcome.get("result") or f"error: no answer within {timeout:g} s"

    def _probe(self) -> None:
        """One cheap request that fails as writing would: S3 lists at most one key under the
        prefix (an empty prefix of an existing bucket is fine); other stores list the prefix,
        or the bucket when the prefix is still empty."""
        bucket, _, prefix = self.root.partition("/")
        if VSI_PREFIXES[self.protocol] == "/vsis3/" and hasattr(self.fs, "call_s3"):
            self.fs.call_s3("list_objects_v2", Bucket=bucket,
                            Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
            return
        try:
            self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            self.fs.ls(bucket, detail=False)

    def _describe(self, err: BaseException, doing: str) -> str:
        return f"{doing} {self.url} failed: {_reason(err)}"

    def location_of(self, job_id: str) -> str:
        return f"{self.url}/{job_id}"


def _kind(err: BaseException) -> str:
    """What kind of failure: access denied, no such bucket, unreachable, or the error's type
    (no URL, no secret: /health says this to anyone)."""
    if isinstance(err, PermissionError):
        return "access denied"
    if isinstance(err, FileNotFoundError):
        return "no such bucket or prefix"
    name = type(err).__name__
    if any(w in name for w in ("Connect", "Endpoint", "Timeout")) \
            or isinstance(err, (ConnectionError, TimeoutError)) \
            or "connect" in str(err).lower():
        return "unreachable"
    return name


def _reason(err: BaseException) -> str:
    """An error of the store in words: its kind, and the store's own message."""
    kind = _kind(err)
    text = str(err).strip()
    return f"{kind} ({text})" if text and text != kind else kind


_STORES: dict[tuple, ResultStore] = {}


def results_store(settings: "Settings") -> ResultStore:
    """The store of ``settings``' ``paths.results`` (one per configuration and process)."""
    import json

    value = settings.paths.results
    storage = settings.storage
    key = (value, str(settings.home),
           json.dumps([storage.staging, storage.options, storage.gdal], sort_keys=True,
                      default=str))
    store = _STORES.get(key)
    if store is None:
        if is_url(value):
            staging = settings.results_dir  # the local staging folder of a URL store
            store = FsspecResultStore(value, staging, storage.options, storage.gdal)
        else:
            store = LocalResultStore(settings.results_dir)
        if len(_STORES) >= 32:
            _STORES.clear()
        _STORES[key] = store
    return store
