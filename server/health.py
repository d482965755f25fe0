"""Health: liveness and readiness, for probes that must never wait behind jobs.

* ``GET /health/live``: this web worker answers (its event loop, a thread, the app): 200
  ``{"status": "ok"}`` with no I/O. A liveness probe restarts the server when this fails.
* ``GET /health/ready`` (and ``/health``, its older name): the job store, the map engine and,
  where configured, GeoServer, the Dask cluster and the object store of results; 503
  ``degraded`` when one fails. A readiness probe takes the server out of rotation meanwhile.

The web worker (``http_worker.BufferingWorker``) gives these paths threads of their own, so
requests that hold every request thread (synchronous jobs) never delay them. Each check runs
in a thread of its own and is waited for ``server.health_timeout_s`` at most; a check still
running from an earlier probe (a hung database) is waited on again, never started twice. The
messages say what failed, never SQL, a connection string, a path or a secret: these paths are
open to anyone; the details go to the server's log.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from flask import Blueprint, jsonify

from aquamask.processes.settings import Settings
from aquamask.processes.storage.results import results_store

LOGGER = logging.getLogger(__name__)
LIVE = "/health/live"
READY = ("/health", "/health/ready")
PATHS = frozenset({LIVE, *READY})

Check = Callable[[], str]  # 'ok' or what is wrong; may raise


class Probe:
    """Runs the checks at once, each in a thread, and gives each until a common deadline."""

    def __init__(self, checks: dict[str, Check], timeout_s: float) -> None:
        self.checks = checks
        self.timeout_s = timeout_s
        # one thread per check is enough: a check is never running twice
        self._pool = ThreadPoolExecutor(max(1, len(checks)), thread_name_prefix="health-check")
        self._running: dict[str, Future] = {}
        self._lock = threading.Lock()

    def run(self) -> dict[str, str]:
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            futures = {name: self._start(name, check) for name, check in self.checks.items()}
        return {name: self._outcome(name, future, deadline) for name, future in futures.items()}

    def _start(self, name: str, check: Check) -> Future:
        running = self._running.get(name)
        if running is None or running.done():
            running = self._running[name] = self._pool.submit(check)
        return running

    def _outcome(self, name: str, future: Future, deadline: float) -> str:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            LOGGER.warning("/health: the %s check gave no answer within %g s", name,
                           self.timeout_s)
            return f"error: no answer within {self.timeout_s:g} s"
        except Exception as err:  # noqa: BLE001 - reported, not raised
            LOGGER.warning("/health: the %s check failed: %s", name, err)
            return f"error: {type(err).__name__}"


def job_store_check(manager) -> Check:
    def check() -> str:
        # in words without SQL, paths or addresses: the store says what it can tell
        problem = manager.store.check()
        if problem is None:
            return "ok"
        LOGGER.warning("/health: %s", problem)
        return f"error: {problem.split(' (', 1)[0]}"
    return check


def map_engine_check(settings: Settings) -> Check:
    def check() -> str:
        binary = settings.mapserver.binary or shutil.which("mapserv") \
            or "/usr/lib/cgi-bin/mapserv"
        if os.access(binary, os.X_OK):
            return "ok"
        LOGGER.warning("/health: the map engine %s is missing or not executable", binary)
        return "error: the map engine (mapserv) is missing or not executable"
    return check


def geoserver_check(settings: Settings) -> str:
    """'ok' when GeoServer answers an authenticated GET of its REST about/version within
    ``geoserver.connect_timeout_s`` (to connect, and again to answer), else what went wrong
    (never the password; no URL either)."""
    import requests

    from aquamask.processes.publishing.geoserver import read_password

    timeout = settings.geoserver.connect_timeout_s
    try:
        auth = (settings.geoserver.user, read_password(settings) or "")
        response = requests.get(
            str(settings.geoserver.url).rstrip("/") + "/rest/about/version.json",
            auth=auth, headers={"Accept": "application/json"}, timeout=(timeout, timeout),
            allow_redirects=False)  # a redirect could carry the credentials elsewhere
    except ValueError as err:  # the password file cannot be read
        return f"error: {err}"
    except requests.Timeout:
        return f"error: no answer within {timeout:g} s"
    except requests.RequestException as err:
        return f"error: unreachable ({type(err).__name__})"
    if response.status_code in (401, 403):
        return f"error: HTTP {response.status_code} (check geoserver.user and the password)"
    return "ok" if response.status_code == 200 else f"error: HTTP {response.status_code}"


def dask_check(executor) -> Check:
    def check() -> str:
        result = executor.health()  # names the scheduler's address when it fails
        if result == "ok":
            return result
        LOGGER.warning("/health: the Dask cluster: %s", result)
        return ("error: no workers connected" if result.startswith("no workers")
                else "error: the scheduler did not answer")
    return check


def readiness_checks(settings: Settings, manager) -> dict[str, Check]:
    checks = {"job_store": job_store_check(manager), "map_engine": map_engine_check(settings)}
    if settings.geoserver.configured:
        checks["geoserver"] = lambda: geoserver_check(settings)
    if settings.jobs.scheduler:
        checks["dask"] = dask_check(manager.executor)
    if settings.results_url:  # an object store: a listing of its prefix, bounded in time
        checks["results_store"] = lambda: results_store(settings).check()
    return checks


def health_blueprint(settings: Settings, manager) -> Blueprint:
    probe = Probe(readiness_checks(settings, manager),
                  settings.server.health_timeout_s)
    blueprint = Blueprint("aquamask_health", __name__)

    @blueprint.get(LIVE)
    def live():
        return jsonify({"status": "ok"})

    def ready():
        checks = probe.run()
        healthy = all(v == "ok" for v in checks.values())
        response = jsonify({"status": "ok" if healthy else "degraded", "checks": checks})
        response.status_code = 200 if healthy else 503
        return response

    for path in READY:
        blueprint.add_url_rule(path, "ready" + path.replace("/", "_"), ready, methods=["GET"])
    return blueprint
