"""Prometheus metrics (prometheus_client), summed over every process of one server.

The server is several processes: gunicorn's web workers, and the job workers forked from the
fork server (``processes.executors``). prometheus_client's multiprocess mode lets each of them
write its values into memory-mapped files in one folder (``PROMETHEUS_MULTIPROC_DIR``), and
``GET /metrics`` (any web worker) sums the files of all of them at scrape time:

* ``prepare_multiprocess`` (gunicorn.conf.py, in the master, before the app is preloaded) points
  ``PROMETHEUS_MULTIPROC_DIR`` at a folder on a memory filesystem (``default_multiprocess_dir``),
  or at ``metrics.dir``; every process started from the master inherits it: web workers by
  fork, the fork server and its job workers by environment. ``empty_multiprocess_dir``
  (gunicorn's ``on_starting``, before the first worker forks) removes the files of an earlier
  run, ``mark_process_dead`` (``child_exit``) the live gauges of a web worker that ended,
  ``remove_multiprocess_dir`` (``on_exit``) the default folder.
* Web workers write under their pid. A job worker is a short-lived process: under its pid every
  job would leave files of its own behind and each scrape would read more of them. Instead, at
  its first observation it takes the first free ``job-N`` identity (an exclusive ``flock`` on
  ``job-N.lock``, which the kernel releases when the process ends) and adds to that identity's
  files, which the next job reuses: the folder holds one set of files per web worker and per
  job running at once, whatever the number of jobs.
* Jobs by state are not counted by any process: a collector asks the job store at scrape time
  (``JobStore.count_by_status``), so the numbers hold across processes, hosts and restarts.

Without ``PROMETHEUS_MULTIPROC_DIR`` (the CLI, tests in one process, a Dask worker) the values
stay in the process's memory and ``/metrics`` shows that process's own.

The processing code records through the neutral hook ``aquamask.processes.telemetry``:
``init_app`` registers ``SINK`` there, by its dotted path too, so that the job workers (whose
fork server inherits the environment) record through it as well.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from aquamask.processes import telemetry
from aquamask.processes.pipeline import methods

LOGGER = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
JOB_STATES = ("accepted", "running", "successful", "failed", "dismissed")
ACCESS = ("open", "token", "viewer", "researcher", "manager")
MAX_JOB_IDENTITIES = 1024
SHARED_MEMORY = Path("/dev/shm")

# a synchronous execution may take up to server.timeout (600 s)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# a 64² image takes milliseconds, a full tile about a minute, a monitoring job hours
INFERENCE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

HTTP_LATENCY = Histogram(
    "aquamask_http_request_duration_seconds",
    "Time from the start of a request to its response, by route template and status",
    ["method", "route", "status"], buckets=HTTP_BUCKETS)
HTTP_IN_PROGRESS = Gauge("aquamask_http_requests_in_progress", "Requests being answered",
                         ["method"], multiprocess_mode="livesum")
INFERENCE = Histogram(
    "aquamask_inference_seconds",
    "Wall time of the detection of one scene (reading, prediction and writing overlap)",
    ["method"], buckets=INFERENCE_BUCKETS)
INFERENCE_STAGE = Histogram(
    "aquamask_inference_stage_seconds",
    "Time one detection spent in each stage (read, predict, write; they overlap in time)",
    ["method", "stage"], buckets=INFERENCE_BUCKETS)
INFERENCE_PIXELS = Counter("aquamask_inference_pixels", "Pixels classified", ["method"])
JOB_DURATION = Histogram(
    "aquamask_job_duration_seconds",
    "Time a job's processor ran, whatever its outcome (the wait for a worker slot excluded)",
    ["process", "method"], buckets=JOB_BUCKETS)
JOBS_FINISHED = Counter(
    "aquamask_jobs_finished",
    "Jobs whose processor ended, by outcome (a worker killed outright is not counted here; "
    "aquamask_jobs shows it failed)", ["process", "outcome"])

_lock = threading.Lock()
_job_identity: tuple[int, str] | None = None  # (pid, "job-N") while this process holds it
_identity_handle = None  # the flocked job-N.lock, open for the process's life
_server_process = False  # set by init_app: web workers keep their pid as identity


def _process_identifier() -> str:
    pid = os.getpid()
    if _job_identity is not None and _job_identity[0] == pid:  # not in a child it forked
        return _job_identity[1]
    return str(pid)


def _install_value_class() -> None:
    """Multiprocess values named by ``_process_identifier``; effective for every value made
    afterwards (ours are all labelled, so made at their first use)."""
    if os.environ.get(ENV) and not getattr(values.ValueClass, "_aquamask", False):
        value_class = values.MultiProcessValue(process_identifier=_process_identifier)
        value_class._aquamask = True
        values.ValueClass = value_class


_install_value_class()


def _claim_job_identity() -> None:
    """In a job worker (a process that did not build the app), take a free ``job-N``
    identity before the first value is made."""
    global _job_identity, _identity_handle
    directory = os.environ.get(ENV)
    if _server_process or not directory or (
            _job_identity is not None and _job_identity[0] == os.getpid()):
        return
    with _lock:
        if _job_identity is not None and _job_identity[0] == os.getpid():
            return
        for i in range(MAX_JOB_IDENTITIES):
            try:
                handle = open(Path(directory) / f"job-{i}.lock", "a")
            except OSError:
                return  # the folder is gone: values stay under the pid
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _identity_handle, _job_identity = handle, (os.getpid(), f"job-{i}")
            return


# -- the server's side: the folder, the hooks, /metrics -------------------------------------------
def default_multiprocess_dir(settings) -> Path:
    """A folder on a memory filesystem, one per user and ``home``. The values are files mapped
    into every process's memory, and a process that writes a mapped page which a full disk
    cannot hold is killed by SIGBUS: with the folder under ``home``, a full data disk killed
    every web worker at once (issue #20.5). ``$XDG_RUNTIME_DIR`` (the user's own tmpfs) where
    set, else ``/dev/shm``; ``metrics`` under ``home`` on a system with neither."""
    tag = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / f"aquamask-metrics-{tag}"
    if SHARED_MEMORY.is_dir():
        return SHARED_MEMORY / f"aquamask-metrics-{os.getuid()}-{tag}"
    return settings.path("metrics")


def _make_private_dir(directory: Path) -> None:
    """Create ``directory`` for this user alone, and refuse one that another user made (or
    linked) first: /dev/shm is writable by everyone and the name can be guessed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or info.st_mode & 0o077:
        raise RuntimeError(f"the metrics folder {directory} is not a private folder of this "
                           f"user: remove it, or set metrics.dir")


def prepare_multiprocess(settings) -> Path | None:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at ``metrics.dir``, else at the default folder (one
    the environment already names is kept), and create it; in gunicorn's master, before the
    app is loaded."""
    if not settings.metrics.enabled:
        return None
    configured = os.environ.get(ENV) or settings.metrics.dir
    if configured:
        directory = settings.path(configured)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = default_multiprocess_dir(settings)
        _make_private_dir(directory)
    os.environ[ENV] = str(directory)
    _install_value_class()
    return directory


def empty_multiprocess_dir() -> None:
    """Remove the values of an earlier run (gunicorn's on_starting: before workers fork)."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    for path in Path(directory).iterdir():
        if path.suffix in (".db", ".lock") and path.is_file():
            path.unlink(missing_ok=True)


def remove_multiprocess_dir(settings) -> None:
    """At the server's end (gunicorn's on_exit): the default folder and its files, which a
    memory filesystem would keep until the machine restarts. A configured folder stays."""
    directory = os.environ.get(ENV)
    if not directory or Path(directory) != default_multiprocess_dir(settings):
        return
    empty_multiprocess_dir()
    try:
        Path(directory).rmdir()
    except OSError:  # something else in it: kept
        pass


def mark_process_dead(pid: int) -> None:
    """Drop a finished web worker's live gauges (gunicorn's child_exit)."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)


class JobStates:
    """``aquamask_jobs{state}``: the job store's count of each state, at scrape time, after
    ``sweep()`` (the manager's) has failed the active jobs whose worker is gone: a job is
    otherwise only found dead when someone reads it."""

    def __init__(self, store, sweep: Callable[[], int] | None = None) -> None:
        self.store = store
        self.sweep = sweep

    def describe(self):
        return []  # nothing asked of the store when registered

    def collect(self):
        up = GaugeMetricFamily("aquamask_job_store_up",
                               "1 when the job store answered this scrape, else 0")
        try:
            if self.sweep is not None:
                self.sweep()
            counts = self.store.count_by_status()
        except Exception as err:  # noqa: BLE001 - a scrape reports it, /health explains it
            LOGGER.warning("metrics: the job store did not answer: %s", err)
            up.add_metric([], 0)
            yield up
            return
        jobs = GaugeMetricFamily("aquamask_jobs", "Jobs in the job store, by state",
                                 labels=["state"])
        for state in dict.fromkeys(JOB_STATES + tuple(sorted(counts))):
            jobs.add_metric([state], counts.get(state, 0))
        up.add_metric([], 1)
        yield jobs
        yield up


class _OwnRegistry:
    """This process's default registry, without the multiprocess folder."""

    def collect(self):
        yield from REGISTRY.collect()


def scrape_token(settings) -> str | None:
    """The scraper's static bearer token: ``AQUAMASK__METRICS__TOKEN`` (verbatim) or the first
    line of ``metrics.token_file`` (a Docker or Kubernetes secret)."""
    token = os.environ.get("AQUAMASK__METRICS__TOKEN")
    if token:
        return token.strip()
    path = settings.metrics.token_file
    if path:
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as err:
            raise ValueError(f"metrics.token_file {path}: cannot read a token "
                             f"({type(err).__name__})") from None
    return None


def _route(request) -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"  # never the raw path


def init_app(app, settings, store, auth, sweep: Callable[[], int] | None = None) -> None:
    """Time every request (register before anything that may answer early, such as auth)
    and serve ``GET /metrics`` with the access ``metrics.access`` sets; ``sweep`` runs before
    jobs are counted."""
    global _server_process
    _server_process = True
    if not settings.metrics.enabled:
        return
    from flask import Response, g, request

    telemetry.register(SINK, f"{__name__}:SINK")
    access = settings.metrics.access
    if access not in ACCESS:
        raise ValueError(f"metrics.access must be one of {', '.join(ACCESS)}, not {access!r}")
    token = scrape_token(settings)
    if access == "token" and not token:
        raise ValueError("metrics.access is token but no token is set: "
                         "AQUAMASK__METRICS__TOKEN or metrics.token_file")

    @app.before_request
    def start_timer() -> None:
        method = request.method if request.method in HTTP_METHODS else "other"
        HTTP_IN_PROGRESS.labels(method).inc()
        g.aquamask_metrics = (time.perf_counter(), method)

    @app.after_request
    def observe(response):
        started = g.get("aquamask_metrics")
        if started is not None:
            HTTP_LATENCY.labels(started[1], _route(request), str(response.status_code)) \
                .observe(time.perf_counter() - started[0])
        return response

    @app.teardown_request
    def done(_exc) -> None:
        started = g.pop("aquamask_metrics", None)
        if started is not None:
            HTTP_IN_PROGRESS.labels(started[1]).dec()

    def denied():
        if access == "open":
            return None
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), token.encode()):
                return None
            if access == "token":
                return auth.error(401, "invalid_token", "send the scrape token as "
                                  "'Authorization: Bearer <token>'")
        return auth.authorize(access)

    @app.get("/metrics")
    def metrics():
        refusal = denied()
        if refusal is not None:
            return refusal
        registry = CollectorRegistry()
        if os.environ.get(ENV):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_OwnRegistry())
        registry.register(JobStates(store, sweep))
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = Response(encoder(registry), content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response


# -- the job workers' side --------------------------------------------------------------------
def _method_label(method: Any) -> str:
    return method if method in methods.METHODS else "other"


class PrometheusSink:
    """What ``aquamask.processes.telemetry`` reports, as Prometheus values of this process (a
    job worker's under its ``job-N`` identity)."""

    def detection(self, method: str, seconds: float, stage_seconds: dict[str, float],
                  pixels: int) -> None:
        """One scene detected (``detection.detect``): wall time, time per stage, pixels."""
        _claim_job_identity()
        label = _method_label(method)
        INFERENCE.labels(label).observe(seconds)
        for stage, spent in stage_seconds.items():
            INFERENCE_STAGE.labels(label, stage).observe(spent)
        INFERENCE_PIXELS.labels(label).inc(pixels)

    def job(self, process: str, method: str | None, outcome: str, seconds: float) -> None:
        """A processor's run ended: its duration and its outcome (successful, failed, or
        dismissed when it was stopped)."""
        _claim_job_identity()
        JOB_DURATION.labels(process, _method_label(method)).observe(seconds)
        JOBS_FINISHED.labels(process, outcome).inc()


SINK = PrometheusSink()
