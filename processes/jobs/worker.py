"""The job worker: forked by the manager (``run_forked``), run as a Dask task
(``dask_worker.run_job``), or by hand as ``python -m aquamask.processes.jobs.worker JOB_ID PROCESSOR
DB_URL``.

On this machine it waits for one of ``jobs.max_running`` slots (file locks, so the bound holds
across every gunicorn worker and is released by the kernel if the process dies). It runs the
processor and writes progress, a heartbeat every ``jobs.heartbeat_s`` (so a worker lost on any
host is noticed) and the outcome to the job store. SIGTERM (dismissal) stops it cleanly.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

from pygeoapi.plugin import load_plugin
from pygeoapi.process.base import ProcessorExecuteError
from pygeoapi.util import JobStatus, get_current_datetime

from aquamask.processes.errors import AquamaskError, Cancelled, Overdue
from aquamask.processes.jobs import callbacks
from aquamask.processes.jobs.documents import execution_of, failure, job_outputs, status_info
from aquamask.processes.procfs import process_start
from aquamask.processes.settings import Settings
from aquamask.processes.storage.disk import explain
from aquamask.processes.storage.jobstore import JobStore
from aquamask.processes.storage.results import ResultStoreError, results_store

if TYPE_CHECKING:
    from aquamask.processes.ogc.base import AquamaskProcessor

LOGGER = logging.getLogger("aquamask.worker")
RUNNING = (JobStatus.running.value,)
ACTIVE = (JobStatus.accepted.value, JobStatus.running.value)
HOST = socket.gethostname()


def remove_job_files(results: "Path | Settings", job_id: str) -> None:
    """A job's result (in the results folder or object store of ``results``, settings or a
    folder) and any staging or work folder it left. An object store that cannot be reached
    is logged: the job's record goes on."""
    from aquamask.processes.storage.results import LocalResultStore

    store = results_store(results) if isinstance(results, Settings) \
        else LocalResultStore(results)
    try:
        store.remove(job_id)
    except OSError:
        LOGGER.exception("job %s: its results could not be removed from %s", job_id,
                         store.location)


def acquire_slot(directory: Path, slots: int, waiting) -> IO:
    """Hold one of ``slots`` exclusive file locks; calls ``waiting()`` between tries."""
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(slots):
            handle = open(directory / f"slot-{i}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                handle.close()
        waiting()
        time.sleep(0.2)


class ProgressReporter:
    """Writes progress to the job row, at most every ``interval`` seconds; stops the work
    once the job is no longer running, i.e. it was dismissed (Cancelled), or once it is past
    its ``deadline`` (Overdue: ``time.monotonic()``, the job's runtime limit)."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.5,
                 deadline: float | None = None, overdue: str = "") -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self.deadline, self.overdue = deadline, overdue
        self.last = time.monotonic()  # the claim just wrote "started"

    def __call__(self, percent: float, message: str) -> None:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise Overdue(self.overdue)
        if now - self.last < self.interval and percent < 100:
            return
        self.last = now
        written = self.store.update(self.job_id, {
            "progress": round(min(max(percent, 0.0), 99.0), 1), "message": message,
            "updated": get_current_datetime()}, only_if_status=RUNNING)
        if not written:
            raise Cancelled()


def _raise_cancelled(signum, frame):
    raise Cancelled()


class Watchdog:
    """Stops a forked job at its runtime limit even while it sits in one long call (a read,
    a prediction) that reports no progress: SIGTERM to itself, which the job takes as
    Overdue rather than a dismissal."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire) if seconds > 0 else None

    def _fire(self) -> None:
        self.fired = True
        os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> "Watchdog":
        if self.timer is not None:
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()


class Heartbeat:
    """Writes the time into the job row every ``interval`` seconds while the job is active,
    from a daemon thread: a job whose heartbeat stops is failed by the manager."""

    def __init__(self, store: JobStore, job_id: str, interval: float) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"aquamask-heartbeat-{job_id}",
                                       daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if not self.store.update(self.job_id, {"heartbeat": time.time()},
                                         only_if_status=ACTIVE):
                    return
            except Exception:  # noqa: BLE001 - a store hiccup must not end the job
                LOGGER.exception("job %s: heartbeat not written", self.job_id)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()  # the first beat is written with the job's claim
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()


def run(job_id: str, processor_path: str, database: str, *, use_slots: bool = True,
        runner: str = "fork") -> int:
    """Run an ``accepted`` job to its end; 0 unless it failed. Without ``use_slots`` the
    caller bounds concurrency (a Dask worker's threads)."""
    settings = Settings.load()
    store = JobStore(database, create=False, retry_s=settings.jobs.store_retry_s)
    return run_job(store, settings, job_id,
                   lambda: load_plugin("process", {"name": processor_path}),
                   use_slots=use_slots, runner=runner)


def run_job(store: JobStore, settings: Settings, job_id: str,
            make_processor: Callable[[], "AquamaskProcessor"], *, use_slots: bool = True,
            runner: str = "fork", inputs: dict | None = None,
            record: dict | None = None, deadline: float | None = None,
            overdue: str = "") -> int:
    """``run`` with the store, settings and processor given: a small synchronous job runs
    so in the web worker's own thread (``runner`` inline, its ``inputs`` given rather than
    stored first, its ``record`` as just added rather than read back: each round trip to the
    store counts at that size). A given ``record`` is updated in place with the outcome when
    the job succeeds (``status``, ``outputs``). ``deadline`` (``time.monotonic()``): when the
    job must stop, and ``overdue`` why, if before ``jobs.max_runtime_s`` from its start."""
    record = record if record is not None else store.get(job_id)
    if record is None or record["status"] != JobStatus.accepted.value:
        return 0
    extra = {}
    if inputs is not None:
        record["inputs"] = extra["inputs"] = inputs
    heartbeat = Heartbeat(store, job_id, settings.jobs.heartbeat_s)
    limit = settings.jobs.max_runtime_s
    # a forked job is stopped at its limit even inside a long call; others at their next
    # progress report (a thread cannot be interrupted)
    watchdog = Watchdog(limit + 5 if limit and runner == "fork" else 0)
    runtime_exceeded = (f"the job ran longer than the limit of {limit:.0f} s "
                        "(jobs.max_runtime_s) and was stopped")
    try:
        def waiting() -> None:
            if (store.get(job_id) or {}).get("status") != JobStatus.accepted.value:
                raise Cancelled()
            store.update(job_id, {"message": "queued: all worker slots are busy",
                                  "updated": get_current_datetime()})

        with heartbeat:
            slot = acquire_slot(settings.home / "slots", settings.jobs.max_running,
                                waiting) if use_slots else None
            if limit and time.monotonic() + limit < (deadline or math.inf):
                deadline, overdue = time.monotonic() + limit, runtime_exceeded
            try:
                with watchdog:
                    return _execute(store, settings, job_id, make_processor, record, runner,
                                    extra, ProgressReporter(store, job_id, deadline=deadline,
                                                            overdue=overdue))
            finally:
                if slot is not None:
                    slot.close()
    except (Cancelled, Overdue) as stop:
        if isinstance(stop, Overdue) or watchdog.fired:
            message = str(stop) if isinstance(stop, Overdue) else runtime_exceeded
            _fail(store, settings, record, 504 if message != runtime_exceeded else 500,
                  "NoApplicableCode", message)
            LOGGER.warning("job %s stopped at its time limit", job_id)
            remove_job_files(settings, job_id)
            return 1
        LOGGER.info("job %s dismissed; stopping", job_id)
        remove_job_files(settings, job_id)
        return 0
    except (AquamaskError, ProcessorExecuteError) as err:  # the request's: recorded, its 4xx
        _fail(store, settings, record, int(err.http_status_code), err.ogc_exception_code,
              err.message)
    except OSError as err:  # disk full, permission denied, ...: the server's side
        LOGGER.exception("job %s failed", job_id)
        _fail(store, settings, record, 500, "NoApplicableCode",
              _storage_message(err, settings))
    except Exception as err:  # noqa: BLE001 - recorded on the job, logged with its traceback
        LOGGER.exception("job %s failed", job_id)
        _fail(store, settings, record, 500, "NoApplicableCode", f"internal error: {err}")
    remove_job_files(settings, job_id)
    return 1


def _execute(store: JobStore, settings: Settings, job_id: str,
             make_processor: Callable[[], "AquamaskProcessor"], record: dict, runner: str,
             extra: dict, progress: "ProgressReporter") -> int:
    now = get_current_datetime()
    # this process's identity, so that its death is seen (Dask: the worker's process)
    claim = {"status": JobStatus.running.value, "started": now, "updated": now, "progress": 1,
             "message": "started", "host": HOST, "pid": os.getpid(),
             "pid_start": process_start("self"), "runner": runner, "submitted": True,
             "heartbeat": time.time(), **extra}
    if not store.update(job_id, claim, only_if_status=(JobStatus.accepted.value,)):
        return 0
    running = dict(record, **claim)
    notify(settings, running, "inProgressUri", lambda: status_info(running, settings.url))
    processor = make_processor()
    processor.set_job_id(job_id)
    progress.last = time.monotonic()
    outputs = processor.run(record["inputs"] or {}, job_id, progress)
    now = get_current_datetime()
    finished = {"status": JobStatus.successful.value, "outputs": outputs, "progress": 100,
                "message": "Job complete", "finished": now, "updated": now,
                "mimetype": "application/json",
                "location": results_store(settings).location_of(job_id)}
    if store.update(job_id, finished, only_if_status=RUNNING):
        record.update(finished)  # not when dismissed meanwhile
        notify(settings, record, "successUri",
               lambda: job_outputs(record, settings).document(execution_of(record)))
    return 0


def _storage_message(err: OSError, settings: Settings) -> str:
    """A failed write (disk full, read-only, permission denied) explained to the user."""
    if isinstance(err, ResultStoreError):  # the object store of paths.results refused
        return (f"the server could not write the results: {err}; nothing of this job was "
                "kept. Tell the server's operator (results store: "
                f"{results_store(settings).location})")
    reason = explain(err, settings.results_dir).strerror or str(err)
    folder = "staging folder" if settings.results_url else "results folder"
    return (f"the server could not write the results: {reason}; nothing of this job was "
            f"kept. Tell the server's operator ({folder}: {settings.results_dir})")


def _fail(store: JobStore, settings: Settings, record: dict, status: int, code: str,
          message: str) -> None:
    now = get_current_datetime()
    changes = {"status": JobStatus.failed.value, "error_status": status, "error_code": code,
               "message": message, "finished": now, "updated": now}
    if store.update(record["identifier"], changes,
                    only_if_status=(JobStatus.accepted.value,) + RUNNING):
        notify_failed(settings, dict(record, **changes))


def notify(settings: Settings, record: dict, callback: str,
           document: Callable[[], dict]) -> None:
    """Send the job's ``callback`` (a key of its subscriber), if its client gave one, the
    ``document``; in the background, never failing the job."""
    url = execution_of(record).subscriber.get(callback)
    if not url:
        return
    try:
        body = document()
    except Exception:  # noqa: BLE001 - e.g. an output too large by value: not the job's fault
        LOGGER.exception("job %s: the %s document could not be made", record["identifier"],
                         callback)
        return
    callbacks.send(settings, url, body)


def notify_failed(settings: Settings, record: dict) -> None:
    """The failed job's ``failedUri``, with its exception."""
    notify(settings, record, "failedUri", lambda: failure(record))


def run_forked(job_id: str, processor_path: str, database: str) -> None:
    """Entry point in a process forked by the manager: a session of its own, so that
    dismissal can stop its whole group and a web worker's restart leaves it running."""
    os.setsid()
    signal.signal(signal.SIGTERM, _raise_cancelled)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    code = run(job_id, processor_path, database)
    callbacks.drain()  # the job's callbacks go out before its process ends
    sys.exit(code)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _raise_cancelled)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(run(*sys.argv[1:4]))
