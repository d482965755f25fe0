"""aquamask's pygeoapi process manager: jobs in SQL, executed by worker processes.

pygeoapi's own managers run a job as a thread inside the web worker: no bound, no progress, no
cancellation, and a killed web worker leaves the job ``accepted`` for ever. Here every execution,
sync or async, is handed to an executor (``aquamask.processes.executors``): a process forked on
this machine, or a task on a Dask cluster. The worker writes progress, heartbeats and the outcome
to the job store and stops on dismissal. A job whose worker died is marked failed with the
reason: at once when its process on this host is gone, else when its heartbeat is older than
``jobs.stale_after_s``. Jobs left active by a stopped server are checked when it starts.
"""
from __future__ import annotations

import logging
import threading
import time
from http import HTTPStatus
from typing import Any, Optional, Tuple

from pygeoapi.process.base import (BaseProcessor, JobNotFoundError, JobResultNotFoundError,
                                   ProcessorExecuteError)
from pygeoapi.process.manager.base import BaseManager
from pygeoapi.util import JobStatus, RequestedResponse, get_current_datetime

from aquamask.processes import worker
from aquamask.processes.errors import TooManyJobs
from aquamask.processes.executors import LocalExecutor, executor_from_settings, worker_alive
from aquamask.processes.identity import current_identity
from aquamask.processes.jobstore import JobStore
from aquamask.processes.settings import Settings
from aquamask.processes.worker import ACTIVE, HOST, remove_job_files

LOGGER = logging.getLogger(__name__)


class JobFailed(ProcessorExecuteError):
    """A synchronous job's failure, re-raised with the status the worker recorded."""

    def __init__(self, record: dict[str, Any]) -> None:
        message = record.get("message") or "the job failed"
        super().__init__(message, user_msg=message)
        self.http_status_code = HTTPStatus(record.get("error_status") or 500)
        self.ogc_exception_code = record.get("error_code") or "NoApplicableCode"


class AquamaskManager(BaseManager):
    def __init__(self, manager_def: dict) -> None:
        super().__init__(manager_def)
        self.is_async = True
        self.supports_subscribing = False
        self.settings = Settings.load()
        self.settings.ensure_dirs()
        self.database = manager_def.get("connection") or self.settings.database_url
        self.store = JobStore(self.database)
        self.executor = executor_from_settings(self.settings, self.store)
        self.inline_max_pixels = int(self.settings.get("jobs", "inline_max_pixels") or 0)
        self._validated = threading.local()  # what validate() found, for the same request
        self.stale_after_s = float(self.settings.get("jobs", "stale_after_s") or 60)
        self.sweep()

    def sweep(self) -> int:
        """Check every active job (at start: a job of a server that was stopped is not left
        ``running`` for ever); the number found dead."""
        dead = 0
        for record in self.store.active():
            dead += self._checked(record)["status"] not in ACTIVE
        if dead:
            LOGGER.warning("%d job(s) found without a live worker were marked failed", dead)
        return dead

    # -- execution ------------------------------------------------------------------------
    def execute_process(self, process_id: str, data_dict: dict, execution_mode=None,
                        requested_outputs: Optional[dict] = None, subscriber=None,
                        requested_response=RequestedResponse.raw.value):
        # Validate before a job exists: bad input is a 4xx with nothing stored.
        processor = self.get_processor(process_id)
        validate = getattr(processor, "validate", None)
        self._validated.pixels = validate(data_dict) if validate is not None else None
        identity = current_identity.get()
        limit = int(self.settings.get("limits", "max_jobs_per_user") or 0)
        if identity is not None and limit:
            running = len(self.store.active(owner=identity.subject))
            if running >= limit:
                raise TooManyJobs(f"you have {running} jobs queued or running; the limit is "
                                  f"{limit}: wait for one to finish or dismiss one")
        return super().execute_process(process_id, data_dict, execution_mode,
                                       requested_outputs, subscriber, requested_response)

    def _spawn(self, p: BaseProcessor, job_id: str, data_dict: dict):
        process_id = p.metadata["id"]
        dotted = self.processes[process_id]["processor"]["name"]
        self.store.update(job_id, {"inputs": data_dict, "host": HOST, "heartbeat": time.time(),
                                   "message": "queued: waiting for a worker"})
        return self.executor.submit(job_id, dotted, self.database)

    def _execute_handler_async(self, p, job_id, data_dict, requested_outputs=None,
                               subscriber=None, requested_response=None):
        self._spawn(p, job_id, data_dict)
        return "application/json", None, JobStatus.accepted

    def _inline(self) -> bool:
        """Whether a synchronous job is small enough to run in this web worker's thread: no
        fork, the processor and model already warm (the request waits either way)."""
        pixels = getattr(self._validated, "pixels", None)
        return isinstance(self.executor, LocalExecutor) and pixels is not None \
            and pixels <= self.inline_max_pixels

    def _execute_handler_sync(self, p, job_id, data_dict, requested_outputs=None,
                              subscriber=None, requested_response=None):
        if self._inline():
            # the record this thread just added: neither read back first nor after success
            added = getattr(self._validated, "added", None)
            record = dict(added) if added and added.get("identifier") == job_id else None
            worker.run_job(self.store, self.settings, job_id, lambda: p, runner="inline",
                           inputs=data_dict, record=record)
            if record is not None and record["status"] == JobStatus.successful.value:
                return "application/json", record["outputs"], JobStatus.successful
        else:
            self._spawn(p, job_id, data_dict)()
        record = self.get_job(job_id)
        if record["status"] == JobStatus.successful.value:
            return "application/json", record["outputs"], JobStatus.successful
        raise JobFailed(record)

    # -- job records ----------------------------------------------------------------------
    def _death(self, record: dict[str, Any]) -> str | None:
        """Why an active job's worker is known to be gone, or None while it may be alive."""
        if record["status"] not in ACTIVE:
            return None
        if record.get("host") == HOST and record.get("pid") \
                and not worker_alive(record["pid"], record.get("pid_start")):
            return (f"the worker process (pid {record['pid']}) ended without finishing the "
                    "job; it was killed or crashed")
        beat = record.get("heartbeat")
        if beat is not None and record["status"] == JobStatus.running.value \
                and time.time() - beat > self.stale_after_s:
            return (f"the worker on {record.get('host')} sent no heartbeat for "
                    f"{time.time() - beat:.0f} s (limit {self.stale_after_s:.0f} s); it was "
                    "killed, crashed or lost its connection")
        return None

    def _checked(self, record: dict[str, Any]) -> dict[str, Any]:
        """Mark a job failed when its worker is gone without finishing it."""
        reason = self._death(record)
        if reason is not None:
            now = get_current_datetime()
            changes = {"status": JobStatus.failed.value, "finished": now, "updated": now,
                       "error_status": 500, "error_code": "NoApplicableCode", "message": reason}
            if self.store.update(record["identifier"], changes, only_if_status=ACTIVE):
                LOGGER.warning("job %s: %s", record["identifier"], reason)
                remove_job_files(self.settings, record["identifier"])
            record = self.store.get(record["identifier"]) or record
        return record

    def get_jobs(self, status: JobStatus = None, limit: Optional[int] = None,
                 offset: Optional[int] = None) -> dict:
        identity = current_identity.get()
        owner = None if identity is None or identity.sees_all_jobs else identity.subject
        records, total = self.store.list(limit, offset,
                                         status.value if status is not None else None, owner)
        return {"jobs": [self._checked(r) for r in records], "numberMatched": total}

    def add_job(self, job_metadata: dict) -> str:
        # pygeoapi starts jobs at 5 %; ours count from 0 so progress only ever goes up
        job_metadata = dict(job_metadata, progress=0)
        identity = current_identity.get()
        if identity is not None:
            job_metadata["owner"] = identity.subject
        self._validated.added = job_metadata  # an inline job starts from it
        return self.store.add(job_metadata)

    def update_job(self, job_id: str, update_dict: dict) -> bool:
        return self.store.update(job_id, update_dict)

    def get_job(self, job_id: str) -> dict:
        """The job, if it exists and the caller may see it: someone else's job is 'not found'
        rather than 'forbidden', so job ids cannot be probed."""
        record = self.store.get(job_id)
        identity = current_identity.get()
        if record is None or (identity is not None and not identity.sees_all_jobs
                              and record.get("owner") != identity.subject):
            raise JobNotFoundError()
        return self._checked(record)

    def get_job_result(self, job_id: str) -> Tuple[str, Any]:
        record = self.get_job(job_id)
        if record["status"] != JobStatus.successful.value:
            return (None,)
        if record.get("outputs") is None:
            raise JobResultNotFoundError()
        return "application/json", record["outputs"]

    def delete_job(self, job_id: str) -> bool:
        """Dismiss: stop the worker if it runs, unpublish the layer, remove files and record."""
        record = self.get_job(job_id)
        if record["status"] in ACTIVE:
            self.store.update(job_id, {"status": JobStatus.dismissed.value,
                                       "message": "dismissed", "updated": get_current_datetime()},
                              only_if_status=ACTIVE)
            if record.get("runner") != "inline":  # that one stops at its next progress
                self.executor.stop(record)
        try:
            from aquamask.processes import publishing
            publishing.unpublish(job_id, self.settings)
        except Exception:  # a layer that cannot be removed must not keep the files alive
            LOGGER.exception("job %s: unpublishing failed", job_id)
        remove_job_files(self.settings, job_id)
        return self.store.delete(job_id)

    def __repr__(self) -> str:
        return f"<AquamaskManager> {self.database}"
