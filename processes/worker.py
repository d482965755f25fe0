"""The job worker process: forked by the manager (``run_forked``), or by hand as
``python -m aquamask.processes.worker JOB_ID PROCESSOR DB_URL``.

It waits for one of ``jobs.max_running`` slots (file locks, so the bound holds across every
gunicorn worker and is released by the kernel if the process dies), runs the processor, and
writes progress and the outcome to the job store. SIGTERM (dismissal) stops it cleanly.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import IO

from pygeoapi.plugin import load_plugin
from pygeoapi.process.base import ProcessorExecuteError
from pygeoapi.util import JobStatus, get_current_datetime

from aquamask.processes.errors import Cancelled
from aquamask.processes.jobstore import JobStore
from aquamask.processes.settings import Settings

LOGGER = logging.getLogger("aquamask.worker")
RUNNING = (JobStatus.running.value,)


def remove_job_files(results_dir: Path, job_id: str) -> None:
    """A job's product folder and any staging or work folder it left."""
    shutil.rmtree(results_dir / job_id, ignore_errors=True)
    for leftover in results_dir.glob(f".*-{job_id}*"):
        shutil.rmtree(leftover, ignore_errors=True)


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
    (raises Cancelled) once the job is no longer running, i.e. it was dismissed."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.5) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self.last = 0.0

    def __call__(self, percent: float, message: str) -> None:
        now = time.monotonic()
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


def run(job_id: str, processor_path: str, database: str) -> int:
    settings = Settings.load()
    store = JobStore(database)
    record = store.get(job_id)
    if record is None or record["status"] != JobStatus.accepted.value:
        return 0
    signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        def waiting() -> None:
            if (store.get(job_id) or {}).get("status") != JobStatus.accepted.value:
                raise Cancelled()
            store.update(job_id, {"message": "queued: all worker slots are busy",
                                  "updated": get_current_datetime()})

        slot = acquire_slot(settings.home / "slots", int(settings.get("jobs", "max_running")),
                            waiting)
        with slot:
            now = get_current_datetime()
            if not store.update(job_id, {"status": JobStatus.running.value, "started": now,
                                         "updated": now, "progress": 1,
                                         "message": "started"},
                                only_if_status=(JobStatus.accepted.value,)):
                return 0
            processor = load_plugin("process", {"name": processor_path})
            processor.set_job_id(job_id)
            outputs = processor.run(record["inputs"] or {}, job_id,
                                    ProgressReporter(store, job_id))
            now = get_current_datetime()
            store.update(job_id, {"status": JobStatus.successful.value, "outputs": outputs,
                                  "progress": 100, "message": "Job complete", "finished": now,
                                  "updated": now, "mimetype": "application/json",
                                  "location": str(settings.results_dir / job_id)},
                         only_if_status=RUNNING)
            return 0
    except Cancelled:
        LOGGER.info("job %s dismissed; stopping", job_id)
        remove_job_files(settings.results_dir, job_id)
        return 0
    except ProcessorExecuteError as err:  # the request's fault: recorded with its 4xx
        _fail(store, job_id, int(err.http_status_code), err.ogc_exception_code, err.message)
    except Exception as err:  # noqa: BLE001 - recorded on the job, logged with its traceback
        LOGGER.exception("job %s failed", job_id)
        _fail(store, job_id, 500, "NoApplicableCode", f"internal error: {err}")
    remove_job_files(settings.results_dir, job_id)
    return 1


def _fail(store: JobStore, job_id: str, status: int, code: str, message: str) -> None:
    now = get_current_datetime()
    store.update(job_id, {"status": JobStatus.failed.value, "error_status": status,
                          "error_code": code, "message": message, "finished": now,
                          "updated": now}, only_if_status=(JobStatus.accepted.value,) + RUNNING)


def run_forked(job_id: str, processor_path: str, database: str) -> None:
    """Entry point in a process forked by the manager: a session of its own, so that
    dismissal can stop its whole group and a web worker's restart leaves it running."""
    os.setsid()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(run(job_id, processor_path, database))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(run(*sys.argv[1:4]))
